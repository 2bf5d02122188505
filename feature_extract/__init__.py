"""PyTorch room: timm DINOv3 backbone, preprocessing, batched extraction into the HDF5 cache."""
