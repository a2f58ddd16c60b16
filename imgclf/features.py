"""Features once: a frozen backbone's pooled features of each image, computed once and kept by content.

While the backbone is frozen (`train.freeze_epochs`), every epoch would run the same images through
the same backbone; instead each image's features (the output layer's input, in evaluation mode, from
the un-augmented image) are computed once and the head trains on them (the Keras transfer-learning
guide's "run the frozen base once"). They are kept in a store keyed like the decoded images: by the
SHA-256 of the image file, within a feature set named by everything the features depend on (the
backbone's weights, the pixels' geometry and storage, the normalisation). A store lives beside DVC's
cache (`imgclf-features/`), where the next run finds it after DVC deleted the stage's outputs, and a
queued experiment's copy of the workspace finds it too; a new data version computes features for its
new images only. Each addition is a new immutable chunk file: a killed run loses only its own.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from imgclf.artifacts import atomic_path
from imgclf.model import output_layer

FORMAT = "imgclf.features/1"


def backbone_digest(model: nn.Module) -> str:
    """SHA-256 of every tensor of `model` but its output layer's: the backbone's weights and buffers, in order."""
    head = output_layer(model)[0]
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if name == head or name.startswith(head + "."):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def feature_set_id(model: nn.Module, arch: str, pixels: dict, mean: Sequence[float], std: Sequence[float]) -> str:
    """A name for the features of `model`'s backbone on images prepared by `pixels` (geometry and storage) and
    normalised by mean / std: any change of any of them is another feature set."""
    described = {"format": FORMAT, "arch": arch, "backbone": backbone_digest(model), "pixels": pixels,
                 "mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:24]


class FeatureStore:
    """One feature set's folder: chunk files of (content keys N x 32 bytes, features N x D float32), never rewritten.

    With `root` None the store is this process's memory only (outside a DVC project, in tests).
    """

    def __init__(self, root: str | os.PathLike | None, set_id: str):
        self.directory = Path(root) / set_id if root is not None else None
        self.found: dict[bytes, np.ndarray] = {}
        if self.directory is None or not self.directory.is_dir():
            return
        for stale in self.directory.glob(".*.tmp"):  # a killed run's
            stale.unlink(missing_ok=True)
        for chunk in sorted(self.directory.glob("chunk-*.npz")):
            try:
                with np.load(chunk) as data:
                    keys, features = data["keys"], data["features"]
            except (OSError, ValueError, KeyError):
                continue  # damaged: its images are computed again
            self.found.update(zip(map(bytes, keys), features))

    def add(self, keys: Sequence[bytes], features: np.ndarray) -> None:
        """Keep new features: in memory, and as a new chunk file (named by its content) when the store has a folder."""
        self.found.update(zip(keys, features))
        if self.directory is None or not len(keys):
            return
        key_array = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, 32)
        features = np.ascontiguousarray(features, dtype=np.float32)
        name = hashlib.sha256(key_array.tobytes() + features.tobytes()).hexdigest()[:32]
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.directory / f"chunk-{name}.npz") as tmp:
                with open(tmp, "wb") as out:
                    np.savez(out, keys=key_array, features=features)
        except OSError:
            pass  # a cache: a full disk costs only recomputing them next time


@torch.no_grad()
def compute_features(model: nn.Module, batches: Iterable[torch.Tensor], prepare: Callable[[torch.Tensor], torch.Tensor],
                     total: int | None = None, desc: str = "features") -> np.ndarray:
    """The pooled features (the output layer's input) of every uint8 image batch, in float32, model in eval mode."""
    captured: list[torch.Tensor] = []
    hook = output_layer(model)[1].register_forward_hook(lambda module, args, out: captured.append(args[0].detach()))
    model.eval()
    parts = []
    try:
        for images in tqdm(batches, total=total, desc=desc, unit="batch", leave=False, mininterval=1.0):
            captured.clear()
            model(prepare(images))
            parts.append(captured[-1].float().flatten(1).cpu().numpy())
    finally:
        hook.remove()
    return np.concatenate(parts) if parts else np.empty((0, output_layer(model)[1].in_features), np.float32)


@dataclass(frozen=True)
class FeatureCounts:
    """How many images' features were computed now and how many were found in the store."""

    computed: int
    reused: int

    def __add__(self, other: "FeatureCounts") -> "FeatureCounts":
        return FeatureCounts(self.computed + other.computed, self.reused + other.reused)


def features_of(model: nn.Module, images, keys: Sequence[bytes], prepare: Callable[[torch.Tensor], torch.Tensor],
                store: FeatureStore, batch_size: int, desc: str = "features") -> tuple[np.ndarray, FeatureCounts]:
    """Features of every row of `images` (anything giving images[indices] -> uint8 n x 3 x I x I) whose content keys
    are `keys`: those in `store` reused, the others computed once per distinct content and added to it."""
    missing = list(dict.fromkeys(k for k in keys if k not in store.found))
    if missing:
        first_row = {}
        for row, key in enumerate(keys):
            first_row.setdefault(key, row)
        rows = [first_row[k] for k in missing]
        batches = (torch.from_numpy(np.asarray(images[rows[i:i + batch_size]]))
                   for i in range(0, len(rows), batch_size))
        store.add(missing, compute_features(model, batches, prepare, -(-len(rows) // batch_size), desc))
    table = np.stack([store.found[k] for k in keys]) if len(keys) else np.empty((0, 0), np.float32)
    return table.astype(np.float32, copy=False), FeatureCounts(len(missing), len(set(keys)) - len(missing))
