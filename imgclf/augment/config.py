"""train.augment's params: which of the batched augmentations train with, and how strongly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from imgclf.config import param


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
