"""The split stage's logic: scan an ImageFolder tree, prove every file by decoding it, split each class."""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import PIL
from tqdm import tqdm

from imgclf.artifacts import write_json
from imgclf.config import param
from imgclf.errors import ConfigError, DataError
from imgclf.images import describe_error, has_image_extension, is_hidden, load_image


@dataclass(frozen=True)
class SplitConfig:
    """Params of the `split` stage: stratified train/val/test fractions."""

    train: float = param("fraction of each class used for training", gt=0, lt=1)
    val: float = param("fraction of each class used for validation (early stopping)", gt=0, lt=1)
    test: float = param("fraction of each class used for the final test", gt=0, lt=1)
    seed: int = param("seed of the per-class shuffle", ge=0)

    def validate(self) -> None:
        """The three fractions must add up to 1."""
        total = self.train + self.val + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ConfigError(f"split.train + split.val + split.test must sum to 1, got {total:g}")


def image_problem(path: str | os.PathLike) -> str | None:
    """Return why `path` cannot be used as an image (one line), or None if it decodes fully."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        load_image(path)
    except Exception as err:  # any decoder failure is a property of the file, reported not raised
        return describe_error(err)
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


def inspect_file(path: str) -> tuple[str | None, str]:
    """(why the file is unusable or None, SHA-256 of its bytes): one worker task of the split stage."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        return f"unreadable file: {err.strerror}", ""
    return image_problem(path), digest.hexdigest()


def inspect_files(paths: Sequence[str], workers: int | None = None,
                  cache_path: str | os.PathLike | None = None) -> list[tuple[str | None, str]]:
    """inspect_file() for every path, decoding in parallel processes on all cores.

    With `cache_path`, a file whose path, size and modification time match the cache's record is not
    read again (the test that make and DVC trust too); the cache is then rewritten for `paths`.
    """
    cache = read_validation_cache(cache_path) if cache_path else {}
    results: list[tuple[str | None, str] | None] = [None] * len(paths)
    signatures: dict[int, tuple[int, int]] = {}
    todo = []
    for index, path in enumerate(paths):
        try:
            stat = os.stat(path)
            signatures[index] = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            pass  # inspect_file reports it
        record = cache.get(path)
        if record is not None and index in signatures and tuple(record[:2]) == signatures[index]:
            results[index] = (record[3], record[2])
        else:
            todo.append(index)
    if cache_path:
        tqdm.write(f"validate images: {len(todo)} new or changed, {len(paths) - len(todo)} unchanged "
                   f"since the last run ({cache_path})")
    for index, result in zip(todo, _inspect_all([paths[i] for i in todo], workers)):
        results[index] = result
    if cache_path:
        write_validation_cache(cache_path, {
            path: [*signatures[i], results[i][1], results[i][0]]
            for i, path in enumerate(paths) if i in signatures and results[i][1]})
    return results  # type: ignore[return-value]


def _inspect_all(paths: Sequence[str], workers: int | None) -> list[tuple[str | None, str]]:
    """inspect_file() over `paths`, in a process pool when there is enough work to share."""
    workers = workers or os.cpu_count() or 1
    progress = dict(total=len(paths), desc="validate images", unit="img", mininterval=1.0)
    if workers == 1 or len(paths) < 64:
        return [inspect_file(p) for p in tqdm(paths, **progress)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return list(tqdm(pool.imap(inspect_file, paths, chunksize=32), **progress))


# The cache is valid only for the same decoder and the same validation rules.
VALIDATION_CACHE_KEY = f"imgclf.validation/1 Pillow {PIL.__version__}"


def read_validation_cache(path: str | os.PathLike) -> dict[str, list]:
    """{path: [size, mtime_ns, sha256, problem or None]} from an earlier split run; {} if absent or stale."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}  # a missing or damaged cache only costs time
    if not isinstance(data, dict) or data.get("key") != VALIDATION_CACHE_KEY:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def write_validation_cache(path: str | os.PathLike, entries: dict[str, list]) -> None:
    """Write the validation cache atomically."""
    write_json(path, {"key": VALIDATION_CACHE_KEY, "entries": entries})


def find_label_conflicts(items: Sequence[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """(path, reason) for byte-identical files filed under different classes: their label is unknowable."""
    labels_by_digest: dict[str, set[str]] = {}
    first_path: dict[tuple[str, str], str] = {}
    for path, label, digest in sorted(items):
        labels_by_digest.setdefault(digest, set()).add(label)
        first_path.setdefault((digest, label), path)
    conflicts = []
    for path, label, digest in items:
        labels = labels_by_digest[digest]
        if len(labels) > 1:
            others = ", ".join(f"{first_path[(digest, other)]} in class '{other}'"
                               for other in sorted(labels - {label}))
            conflicts.append((path, f"label conflict: identical to {others}"))
    return conflicts


def split_counts(n: int, val: float, test: float) -> tuple[int, int, int]:
    """Per-class (train, val, test) sizes: rounded fractions, at least one image in each split."""
    n_val = max(1, int(round(n * val)))
    n_test = max(1, int(round(n * test)))
    return n - n_val - n_test, n_val, n_test


def stratified_split(files: Sequence[tuple[str, str]], classes: Sequence[str], val: float, test: float,
                     seed: int, groups: dict[str, str] | None = None) -> dict[str, pd.DataFrame]:
    """Split (path, class) pairs per class into train/val/test frames of `path,label`, deterministically.

    Files that share a `groups` key (byte-identical copies) always land in the same split, so a
    duplicate can never leak from train into test; fractions then count groups, not files.
    """
    by_class: dict[str, dict[str, list[str]]] = {c: {} for c in classes}
    for path, label in files:
        key = groups.get(path, path) if groups else path
        by_class[label].setdefault(key, []).append(path)
    parts: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    for label in classes:
        units = sorted(sorted(paths) for paths in by_class[label].values())
        n_train, n_val, n_test = split_counts(len(units), val, test)
        if n_train < 1:
            raise DataError(f"class '{label}' has {len(units)} valid distinct image(s); at least 3 are "
                            f"needed so that train, val and test each get one")
        # Seeded per class by name, so that adding a class does not reshuffle the others.
        rng = np.random.default_rng([seed, zlib.crc32(label.encode("utf-8"))])
        order = [units[i] for i in rng.permutation(len(units))]
        for name, chosen in (("val", order[:n_val]), ("test", order[n_val:n_val + n_test]),
                             ("train", order[n_val + n_test:])):
            parts[name] += [(path, label) for unit in chosen for path in unit]
    return {name: pd.DataFrame(sorted(rows, key=lambda r: (classes.index(r[1]), r[0])),
                               columns=["path", "label"]) for name, rows in parts.items()}


@dataclass
class SplitResult:
    """What the split stage writes: class order, the three splits, and every rejected file."""

    classes: list[str]
    parts: dict[str, pd.DataFrame]
    rejected: pd.DataFrame


def split_image_folder(root: str | os.PathLike, val: float, test: float, seed: int,
                       workers: int | None = None, cache_path: str | os.PathLike | None = None) -> SplitResult:
    """Scan `root`, decode every image, drop bad files and label conflicts, split the rest by class.

    Train gets whatever val and test leave of each class.
    """
    scan = scan_image_folder(root)
    inspected = inspect_files([path for path, _ in scan.candidates], workers, cache_path)
    rejected = list(scan.rejected)
    valid = []
    for (path, label), (problem, digest) in zip(scan.candidates, inspected):
        if problem is None:
            valid.append((path, label, digest))
        else:
            rejected.append((path, problem))
    conflicts = find_label_conflicts(valid)
    rejected += conflicts
    conflicted = {path for path, _ in conflicts}
    valid = [item for item in valid if item[0] not in conflicted]
    found = {label for _, label, _ in valid}
    for name in scan.classes:
        if name not in found:
            raise DataError(f"{Path(root) / name}: class folder has no valid image")
    parts = stratified_split([(p, label) for p, label, _ in valid], scan.classes, val, test, seed,
                             groups={p: digest for p, _, digest in valid})
    return SplitResult(scan.classes, parts, pd.DataFrame(sorted(rejected), columns=["path", "reason"]))


def class_counts(frame: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Images per class in one split (`path,label` frame), every class listed, in class order (a plot)."""
    counts = frame["label"].value_counts()
    return pd.DataFrame({"class": list(classes), "count": [int(counts.get(c, 0)) for c in classes]})
