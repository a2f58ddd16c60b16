"""The torch half of preprocessing, shared by train, evaluate and predict: uint8 batch -> normalised model input.

The first half, file -> uint8 3 x S x S pixels, is `images.load_resized` (no torch). Training wraps
`ModelInput` in `augment.input.TrainInput`, which augments each batch on the device, with its own
random parameters per image. The mean and std come with the model's weights (model.Preprocessing).
"""

from __future__ import annotations

from typing import Sequence

import torch

from imgclf.images import BACKGROUND

# ImageNet's statistics: torchvision's weights all use them, and so does training from scratch.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last (NHWC) on CUDA, where cuDNN's tensor-core kernels want it; contiguous elsewhere.

    On a CPU, NHWC gained little or lost for resnet18 (docs/benchmarks.md).
    """
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


class ModelInput:
    """uint8 N x 3 x H x W batch -> normalised float batch on `device` (channels_last on CUDA)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device):
        self.device = device
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255
        self.memory_format = memory_format(device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Move and normalise one batch; uint8 crosses the bus, a quarter of float32's bytes."""
        return self.normalise(self.pixels(images))

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """The uint8 batch as float pixel values 0..255 on the device (what pixel-level augmentation takes)."""
        return images.to(self.device, non_blocking=True).float()

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """Float pixel values -> the model's normalised input."""
        return ((pixels - self.mean) / self.std).contiguous(memory_format=self.memory_format)

    def fill(self) -> torch.Tensor:
        """The background colour in normalised units, 1 x 3 x 1 x 1: what augmentation pads with."""
        background = torch.tensor(BACKGROUND, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        return (background - self.mean) / self.std
