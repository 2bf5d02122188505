"""A stand-in of the StreetVision miner's base class, for examples/streetvision_detector.py.

The real ``base_miner.detectors.FeatureDetector`` imports bittensor, so the tests build a
``base_miner`` package in a temporary folder that keeps the parts the detector relies on,
as read in ``natixnetwork/streetvision-subnet``: ``registry.DETECTOR_REGISTRY`` with
``register_module(module_name=...)`` and ``[]`` lookup; ``FeatureDetector.__init__(model_name,
config_name=None, device='cpu')``, which turns ``device`` into a ``torch.device``, loads the
YAML ``config_name`` (a path, or a name under ``detectors/configs/``) into attributes and calls
``load_model()``; the miner's ``DETECTOR_REGISTRY[name](config_name=..., device=...)`` and
``detector(Image.open(io.BytesIO(b64decode(...))))``.
"""

import shutil
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

REGISTRY = """
class Registry:
    def __init__(self):
        self.data = {}

    def register_module(self, module_name=None):
        def deco(cls):
            self.data[module_name or cls.__name__] = cls
            return cls
        return deco

    def __contains__(self, name):
        return name in self.data

    def __getitem__(self, name):
        return self.data[name]


DETECTOR_REGISTRY = Registry()
"""

FEATURE_DETECTOR = """
from abc import ABC, abstractmethod
from pathlib import Path

import torch
import yaml


class FeatureDetector(ABC):
    def __init__(self, model_name, config_name=None, device="cpu"):
        self.model_name = model_name
        self.device = torch.device(
            device if device == "cuda" and torch.cuda.is_available() else "cpu"
        )
        if config_name:
            self.set_class_attrs(config_name)
        self.load_model()

    @abstractmethod
    def load_model(self):
        pass

    @abstractmethod
    def __call__(self, image):
        pass

    def set_class_attrs(self, detector_config):
        path = Path(detector_config)
        if not path.exists():
            path = Path(__file__).resolve().parent / ("configs/" + detector_config)
        for key, value in yaml.safe_load(path.read_text()).items():
            setattr(self, key, value)
"""


def install(tmp_path: Path) -> Path:
    """A stand-in miner checkout in ``tmp_path`` with the example installed as docs/serving.md
    says; returns its ``base_miner`` folder (put ``tmp_path`` on sys.path to import it)."""
    pkg = tmp_path / "base_miner"
    (pkg / "detectors" / "configs").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "registry.py").write_text(REGISTRY)
    (pkg / "detectors" / "feature_detector.py").write_text(textwrap.dedent(FEATURE_DETECTOR))
    shutil.copy(ROOT / "examples/streetvision_detector.py", pkg / "detectors/stage1_detector.py")
    (pkg / "detectors" / "__init__.py").write_text(
        "from .feature_detector import FeatureDetector\n"
        "from .stage1_detector import Stage1Detector\n"
    )
    return pkg


def forget() -> None:
    """Drop the stand-in's modules (the next test gets a fresh registry)."""
    for name in [m for m in sys.modules if m == "base_miner" or m.startswith("base_miner.")]:
        del sys.modules[name]
