"""Serving: export a run as a bundle, load it in PyTorch, answer for new images.

- ``stage1.serve.bundle``: the bundle format and its integrity checks (no framework).
- ``stage1.serve.export``: ``export_bundle`` (the training side; reads the family's, the
  calibration's and the policy's descriptions of themselves as data).
- ``stage1.serve.model``: ``Stage1Model`` (PyTorch only, never JAX).
- ``stage1.serve.ops``: the torch interpreter of the bundle's head graph, calibration program
  and exit rule; ``stage1.serve.validator_scale``: the 0.5-boundary answer.
- ``stage1.serve.predict``: ``stage1 predict`` over files, folders and manifests.

Names are resolved lazily so that ``import stage1.serve`` loads neither torch nor JAX.
"""

from __future__ import annotations

__all__ = ["BundleError", "Stage1Model", "export_bundle", "predict_files"]

_WHERE = {
    "BundleError": "stage1.serve.bundle",
    "Stage1Model": "stage1.serve.model",
    "export_bundle": "stage1.serve.export",
    "predict_files": "stage1.serve.predict",
}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'stage1.serve' has no attribute {name!r}")
