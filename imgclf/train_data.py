"""The train stage's data: the decoded split it reads, and its batches (training images drawn by the balancing
sampler, validation in order, precise BN's).

Each batches object is a batches.DecodedBatches over the decoded images (or any array-like of rows:
the features of frozen-backbone epochs too); under DDP each process gets its shard.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import BatchSampler, RandomSampler, WeightedRandomSampler

from imgclf.batches import DecodedBatches
from imgclf.distributed import DistributedWeightedSampler, World, shard
from imgclf.errors import ConfigError
from imgclf.images import Geometry
from imgclf.split_files import read_split
from imgclf.store.reader import StoredSplit


def make_train_batches(images, targets: Sequence[int], balance: str, batch_size: int,
                       class_weights: Sequence[float], generator: torch.Generator,
                       device: torch.device, world: World = World(), seed: int = 0) -> DecodedBatches:
    """Training batches; with balance=sampler, drawn by a WeightedRandomSampler (with replacement).

    In one process that is torch's WeightedRandomSampler (or RandomSampler) drawing from `generator`,
    the classic recipe. Under DDP each process takes its shard of one shared draw per epoch, seeded
    by `seed` and the epoch (DistributedWeightedSampler); `batch_size` is per process.
    """
    # Per-sample weights from the known targets: no image is decoded to find its label.
    sample_weights = [class_weights[t] for t in targets] if balance == "sampler" else None
    if world.distributed:
        sampler = DistributedWeightedSampler(sample_weights, len(targets), world_size=world.world_size,
                                             rank=world.rank, seed=seed)
    elif sample_weights is not None:
        sampler = WeightedRandomSampler(torch.tensor(sample_weights, dtype=torch.double), num_samples=len(targets),
                                        replacement=True, generator=generator)
    else:
        sampler = RandomSampler(range(len(targets)), generator=generator)
    # A last batch of one image breaks BatchNorm in training mode; drop it only in that case.
    drop_last = len(sampler) % batch_size == 1 and len(sampler) > 1
    return DecodedBatches(images, targets, BatchSampler(sampler, batch_size, drop_last),
                          pin_memory=device.type == "cuda")


def make_val_batches(images, targets: Sequence[int], batch_size: int,
                     device: torch.device, world: World = World()) -> DecodedBatches:
    """Validation batches in file order, never augmented; under DDP this process's shard (no padding)."""
    positions = shard(len(targets), world)
    return DecodedBatches(images, targets, BatchSampler(positions, batch_size, False),
                          pin_memory=device.type == "cuda")


def make_bn_batches(images, targets: Sequence[int], batch_size: int, device: torch.device,
                    world: World, seed: int) -> DecodedBatches:
    """Training images for precise BN: centre-cropped, never augmented, in one fixed shuffled order (this rank's shard).

    Shuffled because the split lists images class by class: batches of one class each would average
    within-class variances only, and BatchNorm would divide by far too small a deviation. The order
    comes from its own seeded permutation, so no random number of the training run is drawn.
    """
    order = np.random.default_rng(seed).permutation(len(targets))
    positions = [int(order[i]) for i in shard(len(targets), world)]
    drop_last = len(positions) % batch_size == 1 and len(positions) > 1  # a batch of one: as make_train_batches
    return DecodedBatches(images, targets, BatchSampler(positions, batch_size, drop_last),
                          pin_memory=device.type == "cuda")


def open_split(decoded_dir: str | os.PathLike, split: str, paths: Sequence[str], input_size: int) -> StoredSplit:
    """A split of the decode stage's store, centre-cropped to `input_size` (0: the stored size), checked."""
    images = StoredSplit(decoded_dir, split, list(paths))
    if input_size > images.stored_size:
        raise ConfigError(f"train.input_size: {input_size} px is larger than the stored images "
                          f"(decode.image_size {images.stored_size}); set it to at most that, or 0")
    return images.cropped(input_size or images.stored_size)


@dataclass
class SplitData:
    """The decoded training and validation images one run reads, with their labels and geometry."""

    train: pd.DataFrame  # path, label, target
    val: pd.DataFrame
    train_images: StoredSplit  # what augmented batches read: whole stored images under a random resized crop
    cropped_train: StoredSplit  # centre-cropped to the input size: precise BN's and the features' images
    val_images: StoredSplit
    geometry: Geometry

    @property
    def pixels(self) -> dict:
        """What the input pixels depend on, beyond each file's bytes (a feature set's name includes it)."""
        params = self.train_images.params
        storage = "exact" if params.storage == "raw" else f"jpeg q{params.quality}"
        return {**self.geometry.metadata(), "pixels": storage}


def read_data(decoded_dir: str | os.PathLike, train_csv: str | os.PathLike, val_csv: str | os.PathLike,
              classes: Sequence[str], input_size: int, whole_train_images: bool) -> SplitData:
    """The split CSVs and the decoded images of both splits, centre-cropped to `input_size` (train.input_size),
    checked; with `whole_train_images` (a random resized crop) the training batches read the whole stored images."""
    train, val = read_split(train_csv, classes), read_split(val_csv, classes)
    cropped_train = open_split(decoded_dir, "train", train["path"], input_size)  # N x 3 x I x I
    whole = open_split(decoded_dir, "train", train["path"], 0) if whole_train_images else cropped_train
    val_images = open_split(decoded_dir, "val", val["path"], input_size)
    params = cropped_train.params
    geometry = Geometry(cropped_train.stored_size, cropped_train.shape[-1], params.resize, params.reducing_gap)
    return SplitData(train, val, whole, cropped_train, val_images, geometry)
