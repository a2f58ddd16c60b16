"""Where batches come from: image files (evaluate) or rows of the decode stage's store (train); predict has its own.

All of them yield uint8 images at the model's input side, prepared by one images.Geometry (the
store holds its first step, resized to the stored side; a batch is centre-cropped from it);
transforms.ModelInput turns a batch into model input on the device. DecodedBatches also serves the
frozen backbone's cached features (float32 rows) to the head.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from imgclf.images import Geometry


class ImageListDataset(torch.utils.data.Dataset):
    """Images from a list of paths with integer targets, as uint8 3 x I x I tensors prepared by `geometry`."""

    def __init__(self, paths: Sequence[str], targets: Sequence[int], geometry: Geometry):
        self.paths = list(paths)
        self.targets = list(targets)
        self.geometry = geometry

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return torch.from_numpy(self.geometry.load(self.paths[index])), self.targets[index]


class DecodedBatches:
    """(uint8 images, targets) batches gathered from decoded images, one copy per batch.

    `images` is anything that gives len() and images[index array] -> uint8 n x 3 x I x I: the
    store's StoredSplit (imgclf/store/reader.py), an in-memory array, or cached features.

    The index lists come from a torch BatchSampler, so that a WeightedRandomSampler or a shuffle
    draws exactly as it would inside a DataLoader; what goes is the per-image fetch and collate.
    """

    def __init__(self, images, targets: Sequence[int], batch_sampler: Iterable[list[int]],
                 pin_memory: bool = False):
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = torch.from_numpy(np.array(targets, dtype=np.int64))  # a copy: pandas columns are read-only
        self.batch_sampler = batch_sampler
        self.pin_memory = pin_memory

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        """Tell a distributed sampler which epoch's draw to make (the same on every rank); others ignore it."""
        sampler = getattr(self.batch_sampler, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for indices in self.batch_sampler:
            index = np.asarray(indices, dtype=np.int64)
            # One contiguous batch: rows copied out of the store's memory maps (or decoded, for jpeg storage).
            images = torch.from_numpy(self.images[index])
            targets = self.targets[index]
            if self.pin_memory:  # page-locked memory lets the copy to the GPU run asynchronously
                images, targets = images.pin_memory(), targets.pin_memory()
            yield images, targets
