"""Reading the compute_weights stage's file, data/weights.json (per class: count and weight), for the train stage."""

from __future__ import annotations

import json
import os
from typing import Sequence

from imgclf.errors import DataError


def read_weights(path: str | os.PathLike, classes: Sequence[str]) -> list[float]:
    """Read weights.json and return the weights in `classes` order; the classes must match exactly."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
        per_class = document["classes"]
        names = list(per_class)
        weights = [float(per_class[name]["weight"]) for name in classes] if names == list(classes) else None
    except FileNotFoundError:
        raise DataError(f"{path}: class weights not found (run the compute_weights stage first)") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise DataError(f"{path}: malformed class weights file ({err})") from None
    if weights is None:
        raise DataError(f"{path}: its classes {names} differ from the split's classes {list(classes)}")
    return weights
