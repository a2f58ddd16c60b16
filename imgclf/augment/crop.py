"""Random resized crop for a whole batch on its device: torchvision's RandomResizedCrop, drawn per image."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from imgclf.augment.device import memory_format_of, to_device

ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before it falls back to a centre crop


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
        n, channels, height, width = images.shape
        top, left, h, w = self.params(n, height, width).unbind(1)
        # Crop and resize in one step, one axis after the other, with torchvision's (ATen's) antialiased
        # bilinear weights over each image's box. (roi_align was tried: it samples pixels outside the box at
        # its edges and its box-of-samples filter is not the triangle, up to ~20 grey levels off; dense
        # per-image resampling matrices and gathers were exact but several times slower on the CPU.)
        row_index, row_weight = resize_taps(top, h, height, self.size)
        col_index, col_weight = resize_taps(left, w, width, self.size)
        size, device, dtype = self.size, images.device, images.dtype

        def image_offsets(index: torch.Tensor, rows_per_image: int) -> torch.Tensor:
            """Bags of table rows, one per (image, channel, output line): image and channel's offset added."""
            planes = torch.arange(n * channels).view(n, channels, 1, 1) * rows_per_image
            return to_device((index.unsqueeze(1) + planes).view(n * channels * size, -1), device)

        def weights(weight: torch.Tensor) -> torch.Tensor:
            return to_device(weight.unsqueeze(1).expand(n, channels, size, -1).reshape(n * channels * size, -1),
                             device).to(dtype)

        # Pass 1, rows: every output row of a channel is a weighted sum of a few input rows. embedding_bag with
        # per-sample weights computes exactly that, fused, for the whole batch: its table's rows are the
        # images' rows (N x C x H x W is that table as it lies in memory: no copy).
        table = images.contiguous().view(n * channels * height, width)
        rows = F.embedding_bag(image_offsets(row_index, height), table, mode="sum",
                               per_sample_weights=weights(row_weight))
        # Pass 2, columns: the same with the result transposed (its columns as the table's rows).
        table = rows.view(n, channels, size, width).transpose(2, 3).reshape(n * channels * width, size)
        out = F.embedding_bag(image_offsets(col_index, width), table, mode="sum",
                              per_sample_weights=weights(col_weight))
        out = out.view(n, channels, size, size).transpose(2, 3)  # back to rows x columns
        return out.contiguous(memory_format=memory_format_of(images))


def resize_taps(start: torch.Tensor, length: torch.Tensor, extent: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image input indices and weights (n x size x taps, on the CPU) resizing [start, start + length) to size.

    ATen's _upsample_bilinear2d_aa (interpolate(antialias=True), which resized_crop calls) along one axis:
    a triangle filter, stretched by the scale when downscaling, cut to the box and normalised; in float32
    as ATen computes it for float images.
    """
    scale = (length.float() / size).unsqueeze(1)  # n x 1
    centre = scale * (torch.arange(size, dtype=torch.float32) + 0.5)  # n x size
    support = torch.where(scale >= 1, scale, 1.0)
    inv_scale = torch.where(scale >= 1, 1 / scale, 1.0)
    low = (centre - support + 0.5).trunc().clamp(min=0)
    high = torch.minimum((centre + support + 0.5).trunc(), length.float().unsqueeze(1))
    taps = int((high - low).max())
    j = low.unsqueeze(2) + torch.arange(taps, dtype=torch.float32)  # n x size x taps, relative to the box
    weight = (1 - ((j - centre.unsqueeze(2) + 0.5) * inv_scale.unsqueeze(2)).abs()).clamp(min=0)
    weight = torch.where(j < high.unsqueeze(2), weight, 0.0)
    weight = weight / weight.sum(2, keepdim=True)
    index = (j.long() + start[:, None, None]).clamp(max=extent - 1)  # past the box: weight 0, any valid index
    return index, weight
