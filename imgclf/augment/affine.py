"""Random rotation, shift, zoom and horizontal flip for a whole batch on its device, drawn per image."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from imgclf.augment.config import AugmentConfig
from imgclf.augment.device import memory_format_of, to_device


class BatchRandomAffine:
    """Random rotation, translation, zoom and horizontal flip, drawn separately for every image of a batch.

    The same ranges as torchvision's RandomAffine and RandomHorizontalFlip, applied to a whole batch
    on its device with one affine_grid/grid_sample call: per-image v2 transforms cost more than the
    model step of a small image on a CPU (docs/benchmarks.md).
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
        ], 1).float()  # float64 math on the CPU (the same draws on every device); MPS has no float64
        theta = to_device(theta, images.device)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        # grid_sample pads with zeros; shifting by the fill colour first makes it pad with that colour.
        out = F.grid_sample(images - self.fill, grid.to(images.dtype), mode="bilinear",
                            padding_mode="zeros", align_corners=False)
        return (out + self.fill).contiguous(memory_format=memory_format_of(images))
