"""torch Datasets over image paths, decoding with data.load_image: shared by train, evaluate and predict."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from imgclf.data import describe_error, load_image


class ImageListDataset(torch.utils.data.Dataset):
    """Images from a list of paths with integer targets, each decoded by load_image and transformed."""

    def __init__(self, paths: Sequence[str], targets: Sequence[int], transform: Callable):
        self.paths = list(paths)
        self.targets = list(targets)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return self.transform(load_image(self.paths[index])), self.targets[index]


class TolerantImageDataset(torch.utils.data.Dataset):
    """Images for prediction: an unreadable file yields a blank tensor and its error, not an exception."""

    def __init__(self, paths: Sequence[str], transform: Callable, image_size: int):
        self.paths = list(paths)
        self.transform = transform
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return self.transform(load_image(self.paths[index])), ""
        except Exception as err:  # reported in the predictions file's status column
            return torch.zeros(3, self.image_size, self.image_size), f"error: {describe_error(err)}"
