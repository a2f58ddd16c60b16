"""Random erasing for a whole batch on its device: torchvision's RandomErasing, drawn per image."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from imgclf.augment.device import memory_format_of, to_device

ATTEMPTS = 10  # torchvision's RandomErasing tries 10 boxes, then leaves the image as it is


class BatchRandomErasing:
    """Erase a random box of each image with probability p (box area and aspect as torchvision's)."""

    def __init__(self, p: float, scale: tuple[float, float] = (0.02, 0.33), ratio: tuple[float, float] = (0.3, 3.3),
                 value: float | Sequence[float] = 0.0, *, generator: torch.Generator):
        self.p = float(p)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.value = [float(v) for v in value] if isinstance(value, Sequence) else [float(value)]
        self.generator = generator  # a CPU generator: the same draws on every device
        self._values: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    @property
    def active(self) -> bool:
        """False when p is 0 (then the batch passes unchanged and nothing is drawn)."""
        return self.p > 0

    def params(self, n: int, height: int, width: int) -> torch.Tensor:
        """Boxes (top, left, h, w) for n images on the CPU, a LongTensor n x 4; h = w = 0: not erased."""
        g = self.generator
        erase = torch.rand(n, generator=g) < self.p  # torchvision erases when rand < p
        area = height * width
        fraction = self.scale[0] + (self.scale[1] - self.scale[0]) * torch.rand(n, ATTEMPTS, generator=g,
                                                                                 dtype=torch.float64)
        low, high = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(low + (high - low) * torch.rand(n, ATTEMPTS, generator=g, dtype=torch.float64))
        # RandomErasing's rule (h from area * aspect, unlike RandomResizedCrop's w); round halves to even.
        h = torch.sqrt(area * fraction * aspect).round().long()
        w = torch.sqrt(area * fraction / aspect).round().long()
        fits = (h < height) & (w < width)
        first = fits.long().argmax(1, keepdim=True)  # the first attempt that fits, as torchvision's loop breaks
        erase &= fits.any(1)
        h = torch.where(erase, h.gather(1, first)[:, 0], 0)
        w = torch.where(erase, w.gather(1, first)[:, 0], 0)
        u = torch.rand(n, 2, generator=g, dtype=torch.float64)
        top = (u[:, 0] * (height - h + 1)).floor().long()  # randint(0, height - h + 1)
        left = (u[:, 1] * (width - w + 1)).floor().long()
        return torch.stack([top, left, h, w], 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Float N x C x H x W (normalised, any device) -> the same shape, erased boxes set to value."""
        if not self.active:
            return images
        n, _, height, width = images.shape
        top, left, h, w = to_device(self.params(n, height, width), images.device).unbind(1)
        rows = torch.arange(height, device=images.device)
        cols = torch.arange(width, device=images.device)
        inside_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
        inside_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
        mask = inside_rows[:, None, :, None] & inside_cols[:, None, None, :]  # n x 1 x H x W
        out = torch.where(mask, self._value(images), images)
        return out.contiguous(memory_format=memory_format_of(images))

    def _value(self, images: torch.Tensor) -> torch.Tensor:
        """The erasing value as a 1 x C x 1 x 1 (or 1 x 1 x 1 x 1) tensor on the images' device, made once."""
        key = (images.device, images.dtype)
        if key not in self._values:
            value = torch.tensor(self.value, dtype=images.dtype).view(1, -1, 1, 1)
            self._values[key] = to_device(value, images.device)
        return self._values[key]
