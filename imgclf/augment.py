"""Training augmentation on the device, drawn per image for a whole batch: TrainInput composes the recipe's parts.

Random resized crop (crop.py), an augmentation policy (policy.py) on pixel values, then normalisation,
random rotation / shift / zoom / flip (BatchRandomAffine, here), and random erasing (erasing.py), as
torchvision's reference orders them. MixUp/CutMix (mixing.py) need the targets: the epoch loop applies them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from imgclf.config import param
from imgclf.crop import BatchRandomResizedCrop
from imgclf.erasing import BatchRandomErasing
from imgclf.images import BACKGROUND
from imgclf.policy import BatchAugmentPolicy
from imgclf.transforms import ModelInput


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation switches (validation and test never see them)."""

    hflip: bool = param("random horizontal flip (off for digits and text)")
    rotation: float = param("max random rotation in degrees", ge=0, le=180)
    translate: float = param("max random shift as a fraction of the image side", ge=0, lt=0.5)
    scale: float = param("max random zoom in or out as a fraction (0.1 = 0.9x..1.1x)", ge=0, lt=1)
    crop_scale: float = param("random resized crop: min fraction of the image's area kept (torchvision's "
                              "scale=(crop_scale, 1); 1.0 = off)", gt=0, le=1)
    crop_ratio: float = param("random resized crop: max aspect ratio; crops have aspects in "
                              "[1/crop_ratio, crop_ratio] (torchvision's (3/4, 4/3) is 1.3333)", ge=1)
    policy: Literal["none", "trivial_wide", "randaugment", "autoaugment"] = param(
        "augmentation policy, as torchvision's TrivialAugmentWide, RandAugment, AutoAugment (ImageNet)")
    erasing: float = param("random erasing probability per image (torchvision's RandomErasing; 0 = off)",
                           ge=0, le=1)


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
        if images.device.type == "cuda":
            # From pageable memory a copy to the GPU waits for it to finish its queue; from pinned memory
            # it is queued like a kernel (torch's caching host allocator keeps the block until it is done).
            theta = theta.pin_memory()
        theta = theta.to(images.device, non_blocking=True)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        # grid_sample pads with zeros; shifting by the fill colour first makes it pad with that colour.
        out = F.grid_sample(images - self.fill, grid.to(images.dtype), mode="bilinear",
                            padding_mode="zeros", align_corners=False)
        return (out + self.fill).contiguous(memory_format=torch.channels_last
                                            if images.is_contiguous(memory_format=torch.channels_last)
                                            else torch.contiguous_format)



class TrainInput:
    """uint8 training batch -> augmented model input on the device.

    crop and policy work on pixel values 0..255 (the policy's ops are defined on uint8 images), then the
    batch is normalised, rotated/shifted/zoomed/flipped and erased. With the recipe's parts off this is
    exactly ModelInput followed by BatchRandomAffine, drawing the same random numbers as before.
    """

    def __init__(self, augment: AugmentConfig, prepare: ModelInput, output_size: int, generator: torch.Generator):
        self.prepare = prepare
        self.crop = BatchRandomResizedCrop(output_size, (augment.crop_scale, 1.0),
                                           (1 / augment.crop_ratio, augment.crop_ratio), generator) \
            if augment.crop_scale < 1 else None
        self.policy = BatchAugmentPolicy(augment.policy, BACKGROUND, generator) if augment.policy != "none" else None
        self.affine = BatchRandomAffine(augment, prepare.fill(), generator)
        # After normalisation, erased pixels are 0: the mean colour, as torchvision's reference erases.
        self.erasing = BatchRandomErasing(augment.erasing, generator=generator) if augment.erasing else None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Augment one uint8 N x 3 x S x S batch (S: the stored size with a crop, else the model's input size)."""
        if self.crop is None and self.policy is None:
            batch = self.prepare(images)
        else:
            pixels = self.prepare.pixels(images)
            if self.crop is not None:
                pixels = self.crop(pixels)
                if self.policy is not None:
                    pixels = pixels.round_().clamp_(0, 255)  # the policy's ops take uint8 values, as after a uint8 crop
            if self.policy is not None:
                pixels = self.policy(pixels)
            batch = self.prepare.normalise(pixels)
        batch = self.affine(batch)
        return self.erasing(batch) if self.erasing is not None else batch
