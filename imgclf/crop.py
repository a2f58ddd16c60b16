"""Random resized crop for a whole batch on its device: torchvision's RandomResizedCrop, drawn per image."""

from __future__ import annotations

import math

import torch

ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before it falls back to a centre crop


def to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move parameters drawn on the CPU to the images' device without waiting for the GPU's queue."""
    if device.type == "cuda":
        # From pageable memory a copy to the GPU waits for it to finish its queue; from pinned memory
        # it is queued like a kernel (as in augment.py).
        values = values.pin_memory()
    return values.to(device, non_blocking=True)


def memory_format_of(images: torch.Tensor) -> torch.memory_format:
    """The memory format to return results in: channels_last stays channels_last."""
    channels_last = images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


class BatchRandomResizedCrop:
    """Crop a random box of every image (area and aspect as torchvision's) and resize it to size x size."""

    def __init__(self, size: int, scale: tuple[float, float], ratio: tuple[float, float],
                 generator: torch.Generator):
        self.size = size
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.generator = generator  # a CPU generator: the same draws on every device

    @property
    def active(self) -> bool:
        """False when scale is (1, 1), the config's "off" (then the batch passes unchanged, nothing drawn)."""
        return self.scale[0] < 1.0

    def params(self, n: int, height: int, width: int) -> torch.Tensor:
        """Boxes (top, left, h, w) for n images of height x width: a LongTensor n x 4 on the CPU."""
        area = height * width
        g = self.generator
        # All attempts of all images at once, in float64 as torchvision's Python floats.
        fraction = self.scale[0] + (self.scale[1] - self.scale[0]) * torch.rand(n, ATTEMPTS, generator=g,
                                                                                 dtype=torch.float64)
        low, high = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(low + (high - low) * torch.rand(n, ATTEMPTS, generator=g, dtype=torch.float64))
        target = area * fraction
        # torch.round rounds halves to even, as Python's round does.
        w = torch.sqrt(target * aspect).round().long()
        h = torch.sqrt(target / aspect).round().long()
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        found = fits.any(1)
        first = fits.long().argmax(1, keepdim=True)  # the first attempt that fits, as torchvision's loop breaks
        h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]

        # Fallback: the whole image, cropped to the nearest allowed aspect ratio, centred.
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            fallback_w, fallback_h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            fallback_w, fallback_h = int(round(height * max(self.ratio))), height
        else:
            fallback_w, fallback_h = width, height
        h = torch.where(found, h, fallback_h)
        w = torch.where(found, w, fallback_w)
        # randint(0, height - h + 1) per image: floor of a uniform draw times the number of positions.
        u = torch.rand(n, 2, generator=g, dtype=torch.float64)
        top = torch.where(found, (u[:, 0] * (height - h + 1)).floor().long(), (height - h) // 2)
        left = torch.where(found, (u[:, 1] * (width - w + 1)).floor().long(), (width - w) // 2)
        return torch.stack([top, left, h, w], 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Float N x C x H x W (any range, any device) -> N x C x size x size, antialiased bilinear."""
        if not self.active:
            return images
        n, _, height, width = images.shape
        boxes = to_device(self.params(n, height, width), images.device)
        top, left, h, w = boxes.unbind(1)
        # Crop and resize in one step: out = Ry @ image @ Rx^T with per-image resampling matrices that hold
        # torchvision's (ATen's) antialiased bilinear weights, zero outside each image's box. Two batched
        # matmuls for the whole batch, on its device; roi_align was tried and is not close enough (it
        # samples pixels outside the box at its edges and its box-of-samples filter is not the triangle).
        rows = resize_weights(top, h, height, self.size, images.dtype)
        cols = resize_weights(left, w, width, self.size, images.dtype)
        out = rows.unsqueeze(1) @ images @ cols.transpose(1, 2).unsqueeze(1)
        return out.contiguous(memory_format=memory_format_of(images))


def resize_weights(start: torch.Tensor, length: torch.Tensor, extent: int, size: int,
                   dtype: torch.dtype) -> torch.Tensor:
    """Per-image n x size x extent weights: antialiased bilinear from [start, start + length) to `size`."""
    # ATen's _upsample_bilinear2d_aa (interpolate(antialias=True), which resized_crop calls) along one
    # axis: a triangle filter stretched by the scale when downscaling, cut to the input and normalised.
    scale = (length.to(dtype) / size).unsqueeze(1)  # n x 1
    centre = scale * (torch.arange(size, device=start.device, dtype=dtype) + 0.5)  # n x size
    support = torch.where(scale >= 1, scale, torch.ones_like(scale))
    inv_scale = torch.where(scale >= 1, 1 / scale, torch.ones_like(scale))
    low = (centre - support + 0.5).trunc().clamp(min=0)
    high = torch.minimum((centre + support + 0.5).trunc(), length.to(dtype).unsqueeze(1))
    # Input index relative to the box, for every input pixel of the axis: n x 1 x extent.
    j = (torch.arange(extent, device=start.device, dtype=dtype) - start.to(dtype).unsqueeze(1)).unsqueeze(1)
    taps = (j >= low.unsqueeze(2)) & (j < high.unsqueeze(2))
    weight = (1 - ((j - centre.unsqueeze(2) + 0.5) * inv_scale.unsqueeze(2)).abs()).clamp(min=0)
    weight = torch.where(taps, weight, torch.zeros_like(weight))
    return weight / weight.sum(2, keepdim=True)
