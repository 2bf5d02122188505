"""A stage-1 bundle as a StreetVision (subnet 72) miner detector.

Drop-in for ``natixnetwork/streetvision-subnet``: copy this file to
``base_miner/detectors/stage1_detector.py``, add ``from .stage1_detector import Stage1Detector``
to ``base_miner/detectors/__init__.py`` (importing the module is what registers it), put
``examples/stage1.yaml`` in ``base_miner/detectors/configs/`` with your bundle's path, install
stage1 into the miner's environment, and start the miner with::

    --neuron.image_detector STAGE1 --neuron.image_detector_config stage1.yaml \
    --neuron.image_detector_device cuda

The miner builds ``DETECTOR_REGISTRY["STAGE1"](config_name=..., device=...)``; the base class
``FeatureDetector`` reads the YAML into attributes (``bundle``, ``backbone_weights``,
``compile``) and calls ``load_model``; the axon handler then sets ``synapse.prediction =
detector(image)`` for each challenge image. The answer is stage 1's validator-scale float:
> 0.5 exactly when the bundle's decision says roadwork (docs/serving.md). See docs/serving.md.
"""

from __future__ import annotations

import os

from base_miner.detectors import FeatureDetector
from base_miner.registry import DETECTOR_REGISTRY
from PIL import Image


@DETECTOR_REGISTRY.register_module(module_name="STAGE1")
class Stage1Detector(FeatureDetector):
    """P(roadwork) on the validators' 0.5 scale from an exported stage-1 bundle.

    YAML attributes: ``bundle`` (folder from ``stage1 export``; the ``STAGE1_BUNDLE`` environment
    variable is the fallback), optional ``backbone_weights`` (for a bundle exported without
    ``--include-backbone``) and ``compile`` (``torch.compile`` the backbone; worth it on GPU).
    """

    def __init__(
        self, model_name: str = "STAGE1", config_name: str = "stage1.yaml", device: str = "cpu"
    ):
        super().__init__(model_name, config_name, device)

    def load_model(self) -> None:
        from stage1 import Stage1Model

        bundle = getattr(self, "bundle", None) or os.environ.get("STAGE1_BUNDLE")
        if not bundle:
            raise ValueError("Stage1Detector needs `bundle: PATH` in its YAML or STAGE1_BUNDLE")
        self.model = Stage1Model.from_bundle(
            bundle,
            device=str(self.device),
            backbone_weights=getattr(self, "backbone_weights", None),
            compile=bool(getattr(self, "compile", False)),
        )

    def __call__(self, image: Image.Image) -> float:
        return float(self.model(image))
