"""The compute_weights stage's logic: class weights from label counts alone (no image is decoded), and their file."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import pandas as pd

from imgclf.config import param
from imgclf.errors import DataError

SCHEMES = ("inverse", "sqrt_inverse", "effective", "none")


@dataclass(frozen=True)
class ComputeWeightsConfig:
    """Params of the `compute_weights` stage: the class-weight scheme."""

    scheme: Literal["inverse", "sqrt_inverse", "effective", "none"] = param(
        "inverse: N/count; sqrt_inverse: sqrt(N/count); effective: Cui et al. 2019; none: all 1")
    beta: float = param("beta of the effective-number scheme", gt=0, lt=1)


def count_labels(labels: Sequence[str], classes: Sequence[str]) -> list[int]:
    """Images per class, in `classes` order."""
    counts = pd.Series(list(labels), dtype=object).value_counts()
    return [int(counts.get(name, 0)) for name in classes]


def class_weights(counts: Sequence[int], scheme: str, beta: float = 0.999) -> list[float]:
    """Per-class weights for `counts` under `scheme`; every class must have at least one image."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown weight scheme {scheme!r}")
    if any(c <= 0 for c in counts):
        raise DataError("every class needs at least one training image to get a weight")
    total = sum(counts)
    if scheme == "inverse":  # the classic recipe: N / count
        return [total / c for c in counts]
    if scheme == "sqrt_inverse":
        return [math.sqrt(total / c) for c in counts]
    if scheme == "effective":
        # Cui et al. 2019: weight = (1 - beta) / (1 - beta^n), rescaled to sum to the class count.
        raw = [(1.0 - beta) / (1.0 - beta ** c) for c in counts]
        return [w * len(counts) / sum(raw) for w in raw]
    return [1.0] * len(counts)


def weights_document(classes: Sequence[str], counts: Sequence[int], scheme: str, beta: float) -> dict:
    """The content of weights.json: the scheme and, per class, its count and weight."""
    weights = class_weights(counts, scheme, beta)
    return {"scheme": scheme, "beta": beta,
            "classes": {name: {"count": int(c), "weight": float(w)}
                        for name, c, w in zip(classes, counts, weights)}}
