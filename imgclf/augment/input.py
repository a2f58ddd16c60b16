"""The training input: TrainInput composes the recipe's parts as train.augment (augment.config) says.

Random resized crop (crop.py), an augmentation policy (policy.py) on pixel values, then normalisation,
random rotation / shift / zoom / flip (affine.py) and random erasing (erasing.py), as torchvision's
reference orders them. MixUp/CutMix (mixing.py) need the targets: the epoch loop applies them.
"""

from __future__ import annotations

import torch

from imgclf.augment.affine import BatchRandomAffine
from imgclf.augment.config import AugmentConfig
from imgclf.augment.crop import BatchRandomResizedCrop
from imgclf.augment.erasing import BatchRandomErasing
from imgclf.augment.policy import BatchAugmentPolicy
from imgclf.images import BACKGROUND
from imgclf.transforms import ModelInput


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
