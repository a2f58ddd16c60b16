"""Device helpers of the batched augmentations: parameters drawn on the CPU moved without a stall, formats kept."""

from __future__ import annotations

import torch


def to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move parameters drawn on the CPU to the images' device without waiting for the GPU's queue."""
    if device.type == "cuda":
        # From pageable memory a copy to the GPU waits for it to finish its queue; from pinned memory
        # it is queued like a kernel.
        values = values.pin_memory()
    return values.to(device, non_blocking=True)


def memory_format_of(images: torch.Tensor) -> torch.memory_format:
    """The memory format to return results in: channels_last stays channels_last."""
    channels_last = images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format
