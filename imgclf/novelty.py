"""Images of no class: how far an image's features lie from the training images', and where `unknown` begins.

A classifier gives every image one of its classes, confidently or not; an image of none of them (a
photo of something else) needs another question: is it like any training image at all? The answer is
the k-nearest-neighbour distance in the model's feature space (Sun et al. 2022, "Out-of-distribution
detection with deep nearest neighbors"; cleanlab's OutOfDistribution scores the same way): the mean
cosine distance from the image's features (the output layer's input) to its k nearest among a bank of
training images' features. The train stage keeps the bank (a class-stratified sample of at most BANK
training images) and the same distance for each validation image, held-out images of the classes, in
model.pt; export builds the distance into model.onnx. Predict marks an image `unknown` when its distance
exceeds the `predict.unknown_quantile` quantile of the validation images' distances (predict.py, without
torch): 0.99 marks about 1 in 100 images of the classes, and (measured in docs/data.md) most images of other
things.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imgclf.features import compute_features
from imgclf.model import output_layer

K = 10  # neighbours averaged
BANK = 1024  # training images kept, at most: 5 MB of float32 features at 1,280 per image
MIN_REFERENCE = 20  # fewer validation images than this: the bank's own leave-one-out distances are the reference


class FeaturesAndLogits(nn.Module):
    """A classifier split at its output layer: images -> (logits, the output layer's input, its pooled features)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        name, linear = output_layer(model)
        self.backbone = copy.deepcopy(model)
        parent, _, attr = name.rpartition(".")
        setattr(self.backbone.get_submodule(parent), attr, nn.Identity())  # returns what the output layer takes
        self.linear = linear

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(images)
        return self.linear(features), features


def distances(features: torch.Tensor, bank: torch.Tensor, k: int = K) -> torch.Tensor:
    """Mean cosine distance from each row of `features` to its k nearest rows of `bank` (rows already unit length)."""
    similarity = F.normalize(features.float(), dim=1) @ bank.T
    return 1 - similarity.topk(min(k, bank.shape[0]), dim=1).values.mean(1)


class Novelty(nn.Module):
    """Features -> their distance to the training images (`distances`), with the bank as a constant of the module."""

    def __init__(self, bank: torch.Tensor, k: int = K):
        super().__init__()
        self.register_buffer("bank", bank.float())
        self.k = k

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return distances(features, self.bank, self.k)


def bank_rows(targets: Sequence[int], size: int = BANK, seed: int = 0) -> np.ndarray:
    """At most `size` training rows, each class in its share of them (at least one each), sorted: the bank's images."""
    targets = np.asarray(targets)
    if len(targets) <= size:
        return np.arange(len(targets))
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(targets):
        rows = np.flatnonzero(targets == label)
        take = max(1, int(round(size * len(rows) / len(targets))))
        chosen.append(rng.choice(rows, min(take, len(rows)), replace=False))
    return np.sort(np.concatenate(chosen))


def fit(bank_features: np.ndarray, reference_features: np.ndarray, k: int = K) -> dict:
    """What model.pt keeps: the unit-length bank, k, and the sorted distances of the held-out reference images (or,
    with fewer than MIN_REFERENCE of them, each bank image's distance to the others), where thresholds come from."""
    bank = F.normalize(torch.as_tensor(bank_features, dtype=torch.float32), dim=1)
    if len(reference_features) >= MIN_REFERENCE:
        reference = distances(torch.as_tensor(reference_features), bank, k)
        source = "validation"
    else:  # leave-one-out: each bank image against the others
        similarity = bank @ bank.T
        similarity.fill_diagonal_(-2.0)
        reference = 1 - similarity.topk(min(k, max(len(bank) - 1, 1)), dim=1).values.mean(1)
        source = "training (leave-one-out)"
    return {"novelty_bank": bank, "novelty": {"k": k, "reference": source,
                                              "distances": sorted(float(d) for d in reference)}}


def fit_model(model: nn.Module, prepare, train_images, train_targets: Sequence[int], val_images, batch_size: int,
              seed: int = 0, cached: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """fit() for a trained model: its features of a class-stratified sample of the training images (the bank) and of
    every validation image, un-augmented (images[rows] -> uint8 batches); `cached` (the training and validation
    feature tables of a head trained on a frozen backbone's features) makes it free."""
    rows = bank_rows(train_targets, BANK, seed)
    if cached is not None:
        return fit(cached[0][rows], cached[1])

    def batches(images, positions):
        for start in range(0, len(positions), batch_size):
            yield torch.from_numpy(np.asarray(images[positions[start:start + batch_size]]))

    bank = compute_features(model, batches(train_images, rows), prepare, -(-len(rows) // batch_size), "novelty bank")
    everything = np.arange(len(val_images))
    reference = compute_features(model, batches(val_images, everything), prepare, -(-len(everything) // batch_size),
                                 "novelty val")
    return fit(bank, reference)
