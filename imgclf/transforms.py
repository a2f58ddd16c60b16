"""Image preprocessing, defined once for decode, train, evaluate and predict (as torchvision's presets).

Every image takes the same path into a model: `load_resized` (file -> uint8 tensor at the model's
resolution, on the CPU), then `ModelInput` (uint8 batch -> normalised float batch, on the device).
Training adds `BatchRandomAffine` between the two halves, on the device, with its own random
parameters per image. The decode stage stores `load_resized`'s output, so that the images a model
was trained on and the images it later classifies are prepared by the same code.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from imgclf.config import AugmentConfig
from imgclf.data import BACKGROUND, load_image

# torchvision's classification weights are all trained with ImageNet statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_resized(path: str | os.PathLike, image_size: int) -> torch.Tensor:
    """Decode an image file to a uint8 RGB tensor of 3 x image_size x image_size."""
    # JPEG can decode at 1/2, 1/4 or 1/8 scale inside the decoder (DCT scaling): a 1024x768 photo
    # wanted at 64 px decodes as 128x96, about twice as fast, and the resize below then starts
    # from a smaller image. The draft never goes below the requested size.
    image = load_image(path, draft_size=image_size)
    return resize_uint8(v2.functional.pil_to_tensor(image), image_size)


def resize_uint8(image: torch.Tensor, image_size: int) -> torch.Tensor:
    """Antialiased resize of a uint8 C x H x W tensor to a square (several times faster than Pillow's)."""
    return v2.functional.resize(image, [image_size, image_size], antialias=True)


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last (NHWC) on CUDA, where cuDNN's tensor-core kernels want it; contiguous elsewhere.

    On this project's 2-core CPU, NHWC was measured at -3% (32 px) to +7% (64 px) for resnet18: not worth it.
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
        images = images.to(self.device, non_blocking=True).float()
        images = (images - self.mean) / self.std
        return images.contiguous(memory_format=self.memory_format)

    def fill(self) -> torch.Tensor:
        """The background colour in normalised units, 1 x 3 x 1 x 1: what augmentation pads with."""
        background = torch.tensor(BACKGROUND, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        return (background - self.mean) / self.std


class BatchRandomAffine:
    """Random rotation, translation, zoom and horizontal flip, drawn separately for every image of a batch.

    The same ranges as torchvision's RandomAffine and RandomHorizontalFlip, applied to a whole batch
    on its device with one affine_grid/grid_sample call: per-image v2 transforms cost about 0.2 ms
    each on the CPU, which is more than the model step of a small image.
    """

    def __init__(self, augment: AugmentConfig, fill: torch.Tensor, generator: torch.Generator):
        self.augment = augment
        self.fill = fill
        self.generator = generator  # a CPU generator: the same draws on every device

    @property
    def active(self) -> bool:
        """False when every augmentation is switched off (then the batch passes unchanged)."""
        a = self.augment
        return bool(a.rotation or a.translate or a.scale or a.hflip)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Augment a float N x C x S x S batch; uncovered pixels get the background colour."""
        if not self.active:
            return images
        n = images.shape[0]
        a = self.augment

        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(n, generator=self.generator, dtype=torch.float64)

        angle = uniform(-a.rotation, a.rotation) * (math.pi / 180)
        scale = uniform(1 - a.scale, 1 + a.scale)
        # Translation as a fraction of the side; affine_grid's coordinates span 2 units per side.
        shift_x, shift_y = uniform(-a.translate, a.translate) * 2, uniform(-a.translate, a.translate) * 2
        flip = torch.where(torch.rand(n, generator=self.generator) < 0.5, -1.0, 1.0).double() \
            if a.hflip else torch.ones(n, dtype=torch.float64)
        # theta maps output coordinates to input ones: the inverse of flip, then rotate+zoom, then shift.
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([
            torch.stack([flip * cos, flip * sin, -flip * (cos * shift_x + sin * shift_y)], 1),
            torch.stack([-sin, cos, sin * shift_x - cos * shift_y], 1),
        ], 1).float().to(images.device)  # float64 math on the CPU; MPS has no float64
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        # grid_sample pads with zeros; shifting by the fill colour first makes it pad with that colour.
        out = F.grid_sample(images - self.fill, grid.to(images.dtype), mode="bilinear",
                            padding_mode="zeros", align_corners=False)
        return (out + self.fill).contiguous(memory_format=torch.channels_last
                                            if images.is_contiguous(memory_format=torch.channels_last)
                                            else torch.contiguous_format)

