"""PyTorch room: timm DINOv3 backbone, preprocessing, batched extraction into the HDF5 cache."""

from feature_extract.backbone import BackboneError, RandomInitWarning, build_backbone, sha256_file
from feature_extract.extract import VARIANTS, ExtractReport, embed, extract, pick_device
from feature_extract.preprocess import (
    CorruptImageError,
    decode,
    load_tensor,
    normalize,
    to_tensor,
    to_uint8,
)

__all__ = [
    "VARIANTS",
    "BackboneError",
    "CorruptImageError",
    "ExtractReport",
    "RandomInitWarning",
    "build_backbone",
    "decode",
    "embed",
    "extract",
    "load_tensor",
    "normalize",
    "pick_device",
    "sha256_file",
    "to_tensor",
    "to_uint8",
]
