"""Images on disk: scanning an ImageFolder tree, decoding to RGB, stratified splits, split CSVs, datasets."""

from __future__ import annotations

import json
import multiprocessing
import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps
from torchvision.datasets.folder import IMG_EXTENSIONS
from tqdm import tqdm

from imgclf.errors import DataError

# Folders that tools and operating systems create beside real data; never classes.
SYSTEM_FOLDERS = {"__MACOSX", "__pycache__", "lost+found", "$RECYCLE.BIN", "System Volume Information"}
# Transparent pixels are composited on white: scans and product photos have white paper behind them.
BACKGROUND = (255, 255, 255)


def is_hidden(name: str) -> bool:
    """True for dot-files/folders (.git, .ipynb_checkpoints, .DS_Store) and system folders."""
    return name.startswith(".") or name in SYSTEM_FOLDERS


def has_image_extension(path: str | os.PathLike) -> bool:
    """True if the file name ends with an image extension torchvision knows, in any letter case."""
    return str(path).lower().endswith(IMG_EXTENSIONS)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: alpha over white, 16-bit scaled (not clipped)."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(img, dtype=np.float64)
        # 16-bit data would clip to white under Pillow's convert("L"); scale it to 0..255 instead.
        if values.max(initial=0) > 255:
            values = values / 257.0
        return Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8), mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Fully decode an image file to RGB with its EXIF orientation applied (first frame if animated)."""
    with warnings.catch_warnings():
        # A header that declares a huge image is refused before its pixels are allocated.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            img.seek(0)
            img.load()
            oriented = ImageOps.exif_transpose(img)
            return to_rgb(oriented)


def image_problem(path: str | os.PathLike) -> str | None:
    """Return why `path` cannot be used as an image (one line), or None if it decodes fully."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        load_image(path)
    except Exception as err:  # any decoder failure is a property of the file, reported not raised
        message = str(err).splitlines()[0] if str(err) else ""
        return f"{type(err).__name__}: {message}".rstrip(": ")
    return None


@dataclass
class FolderScan:
    """The result of scanning an ImageFolder tree."""

    classes: list[str]
    candidates: list[tuple[str, str]] = field(default_factory=list)  # (path, class) with image extension
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def scan_image_folder(root: str | os.PathLike) -> FolderScan:
    """List class folders (sorted, as ImageFolder) and every file under `root`, without decoding."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found (expected {root}/<class>/<image files>)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not is_hidden(p.name))
    if not classes:
        raise DataError(f"{root}: no class folders found (expected {root}/<class>/<image files>)")
    scan = FolderScan(classes=classes)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        for name in sorted(dirnames):
            if is_hidden(name):
                scan.rejected.append(((here / name).as_posix(), "hidden or system folder, skipped"))
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for name in sorted(filenames):
            path = (here / name).as_posix()
            if here == root:
                scan.rejected.append((path, "not inside a class folder"))
            elif is_hidden(name):
                scan.rejected.append((path, "hidden file"))
            elif not has_image_extension(name):
                scan.rejected.append((path, "unsupported file extension"))
            else:
                scan.candidates.append((path, here.relative_to(root).parts[0]))
    return scan


def find_problems(paths: Sequence[str], workers: int | None = None) -> list[str | None]:
    """Decode every file (in parallel processes) and return image_problem() for each."""
    workers = workers or os.cpu_count() or 1
    progress = dict(total=len(paths), desc="validate images", unit="img", mininterval=1.0)
    if workers == 1 or len(paths) < 64:
        return [image_problem(p) for p in tqdm(paths, **progress)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return list(tqdm(pool.imap(image_problem, paths, chunksize=32), **progress))


def split_counts(n: int, val: float, test: float) -> tuple[int, int, int]:
    """Per-class (train, val, test) sizes: rounded fractions, at least one image in each split."""
    n_val = max(1, int(round(n * val)))
    n_test = max(1, int(round(n * test)))
    return n - n_val - n_test, n_val, n_test


def stratified_split(files: Sequence[tuple[str, str]], classes: Sequence[str], val: float, test: float,
                     seed: int) -> dict[str, pd.DataFrame]:
    """Split (path, class) pairs per class into train/val/test frames of `path,label`, deterministically."""
    by_class: dict[str, list[str]] = {c: [] for c in classes}
    for path, label in files:
        by_class[label].append(path)
    parts: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    for label in classes:
        paths = sorted(by_class[label])
        n_train, n_val, n_test = split_counts(len(paths), val, test)
        if n_train < 1:
            raise DataError(f"class '{label}' has {len(paths)} valid image(s); at least 3 are needed "
                            f"so that train, val and test each get one")
        # Seeded per class by name, so that adding a class does not reshuffle the others.
        rng = np.random.default_rng([seed, zlib.crc32(label.encode("utf-8"))])
        order = [paths[i] for i in rng.permutation(len(paths))]
        parts["val"] += [(p, label) for p in order[:n_val]]
        parts["test"] += [(p, label) for p in order[n_val:n_val + n_test]]
        parts["train"] += [(p, label) for p in order[n_val + n_test:]]
    return {name: pd.DataFrame(sorted(rows, key=lambda r: (classes.index(r[1]), r[0])),
                               columns=["path", "label"]) for name, rows in parts.items()}


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


def read_split(path: str | os.PathLike, classes: Sequence[str]) -> pd.DataFrame:
    """Read a split CSV (`path,label`) and add `target`, the label's index in `classes`."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"{path}: split file not found (run the split stage first)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a valid split CSV ({str(err).splitlines()[0]})") from None
    if list(frame.columns) != ["path", "label"]:
        raise DataError(f"{path}: expected columns path,label; got {','.join(frame.columns)}")
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(frame["label"]) - set(index))
    if unknown:
        raise DataError(f"{path}: label(s) {', '.join(unknown[:5])} are not among the model's classes")
    frame["target"] = frame["label"].map(index).astype("int64")
    return frame


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
            message = str(err).splitlines()[0] if str(err) else ""
            blank = torch.zeros(3, self.image_size, self.image_size)
            return blank, f"error: {type(err).__name__}: {message}".rstrip(": ")


def list_images(root: str | os.PathLike) -> list[str]:
    """All non-hidden files under `root`, recursively and sorted (image extension or not)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: input folder not found")
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        found += [(Path(dirpath) / f).as_posix() for f in sorted(filenames) if not is_hidden(f)]
    return sorted(found)
