"""MixUp and CutMix on a training batch, as torchvision.transforms.v2's MixUp/CutMix define them.

One mixing coefficient per batch; each image is mixed with its neighbour in the batch (the batch
rolled by one), as torchvision does. Instead of soft one-hot targets, the loss is the same mix of
the two hard-label losses: for cross-entropy, label smoothing included, that is exactly the loss of
torchvision's soft targets (the loss is linear in the target), and it also defines the mix for a
class-weighted loss (`balance: loss`) and keeps the sampler's hard labels as they are.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch


def cutmix_box(lam: float, center_x: int, center_y: int, height: int, width: int) -> tuple[int, int, int, int, float]:
    """torchvision's CutMix box around (center_x, center_y) for `lam`: (x1, y1, x2, y2, lam adjusted to its area)."""
    ratio = 0.5 * math.sqrt(1.0 - lam)
    half_w, half_h = int(ratio * width), int(ratio * height)
    x1, y1 = max(center_x - half_w, 0), max(center_y - half_h, 0)
    x2, y2 = min(center_x + half_w, width), min(center_y + half_h, height)
    return x1, y1, x2, y2, 1.0 - (x2 - x1) * (y2 - y1) / (width * height)


class BatchMix:
    """Mixes a batch with MixUp (alpha > 0), CutMix (alpha > 0), or one of the two per batch when both are on.

    Every random number comes from `generator` (a CPU generator saved with the training state), so a
    resumed run draws the same mixes. Nothing is read back from the device.
    """

    def __init__(self, mixup_alpha: float, cutmix_alpha: float, generator: torch.Generator):
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.generator = generator

    @property
    def active(self) -> bool:
        """False when both are off: then nothing is mixed and nothing is drawn."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def _beta(self, alpha: float) -> float:
        """A Beta(alpha, alpha) draw from the generator (torch's Beta sampler cannot take a generator)."""
        seed = int(torch.randint(2**62, (1,), generator=self.generator))
        return float(np.random.default_rng(seed).beta(alpha, alpha))

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(mixed images, the partners' targets, lam): the loss is lam * loss(targets) + (1 - lam) * loss(partners)."""
        use_cutmix = self.cutmix_alpha > 0 and (
            self.mixup_alpha == 0 or bool(torch.rand(1, generator=self.generator) < 0.5))
        partners = targets.roll(1, 0)
        rolled = images.roll(1, 0)
        if not use_cutmix:
            lam = self._beta(self.mixup_alpha)
            return rolled.mul(1.0 - lam).add_(images.mul(lam)), partners, lam
        lam = self._beta(self.cutmix_alpha)
        height, width = images.shape[-2:]
        center_x = int(torch.randint(width, (1,), generator=self.generator))
        center_y = int(torch.randint(height, (1,), generator=self.generator))
        x1, y1, x2, y2, lam = cutmix_box(lam, center_x, center_y, height, width)
        mixed = images.clone()
        mixed[..., y1:y2, x1:x2] = rolled[..., y1:y2, x1:x2]
        return mixed, partners, lam


def mixed_loss(criterion: Callable, outputs: torch.Tensor, targets: torch.Tensor, partners: torch.Tensor,
               lam: float) -> torch.Tensor:
    """lam * criterion(outputs, targets) + (1 - lam) * criterion(outputs, partners)."""
    return lam * criterion(outputs, targets) + (1.0 - lam) * criterion(outputs, partners)
