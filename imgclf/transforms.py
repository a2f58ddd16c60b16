"""Image transforms, defined once for train, evaluate and predict (as torchvision's reference presets)."""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision.transforms import v2

from imgclf.config import AugmentConfig
from imgclf.data import BACKGROUND

# torchvision's classification weights are all trained with ImageNet statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """RGB PIL image -> normalised float tensor of image_size x image_size; no randomness."""
    return v2.Compose([
        v2.PILToTensor(),
        # Resize the uint8 tensor: several times faster than resizing a PIL image or a float tensor.
        v2.Resize((image_size, image_size), antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ])


def train_transform(image_size: int, mean: Sequence[float], std: Sequence[float],
                    augment: AugmentConfig) -> v2.Compose:
    """eval_transform plus the random augmentations that `augment` switches on."""
    steps: list = [v2.PILToTensor(), v2.Resize((image_size, image_size), antialias=True)]
    if augment.rotation or augment.translate or augment.scale:
        steps.append(v2.RandomAffine(
            degrees=augment.rotation,
            translate=(augment.translate, augment.translate) if augment.translate else None,
            scale=(1 - augment.scale, 1 + augment.scale) if augment.scale else None,
            fill=list(BACKGROUND),  # uncovered corners get the same background as transparency
        ))
    if augment.hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    return v2.Compose(steps)
