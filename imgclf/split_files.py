"""Reading the split stage's files (train/val/test CSVs of `path,label`, classes.json), for every later stage.

They are written by `split.write_split`; tests keep the two in step.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import pandas as pd

from imgclf.errors import DataError


def read_classes(path: str | os.PathLike) -> list[str]:
    """Read classes.json, the class order written by the split stage."""
    try:
        with open(path, encoding="utf-8") as handle:
            classes = json.load(handle)
    except FileNotFoundError:
        raise DataError(f"{path}: class list not found (run the split stage first)") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise DataError(f"{path}: expected a non-empty JSON list of class names")
    return classes


def read_split_paths(path: str | os.PathLike) -> pd.DataFrame:
    """Read a split CSV as written by the split stage: columns path,label, every value a string."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"{path}: split file not found (run the split stage first)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a valid split CSV ({str(err).splitlines()[0]})") from None
    if list(frame.columns) != ["path", "label"]:
        raise DataError(f"{path}: expected columns path,label; got {','.join(frame.columns)}")
    return frame


def read_split(path: str | os.PathLike, classes: Sequence[str]) -> pd.DataFrame:
    """Read a split CSV (`path,label`) and add `target`, the label's index in `classes`."""
    frame = read_split_paths(path)
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(frame["label"]) - set(index))
    if unknown:
        raise DataError(f"{path}: label(s) {', '.join(unknown[:5])} are not among the model's classes")
    frame["target"] = frame["label"].map(index).astype("int64")
    return frame
