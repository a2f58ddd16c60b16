"""The split stage's logic: scan an ImageFolder tree, prove every file by decoding it, split each class."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import PIL
from PIL import UnidentifiedImageError
from tqdm import tqdm

from imgclf.artifacts import write_json, write_rows
from imgclf.config import param
from imgclf.errors import ConfigError, DataError
from imgclf.images import check_decodes, describe_error, has_image_extension, is_hidden
from imgclf.workers import worker_pool


@dataclass(frozen=True)
class SplitConfig:
    """Params of the `split` stage: per-class train/val/test fractions and the seed of the stable split."""

    train: float = param("fraction of each class used for training", gt=0, lt=1)
    val: float = param("fraction of each class used for validation (early stopping)", gt=0, lt=1)
    test: float = param("fraction of each class used for the final test", gt=0, lt=1)
    seed: int = param("seed of the content-hash split: changing it (or a fraction) is how to reshuffle", ge=0)

    def validate(self) -> None:
        """The three fractions must add up to 1."""
        total = self.train + self.val + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ConfigError(f"split.train + split.val + split.test must sum to 1, got {total:g}")


def image_problem(path: str | os.PathLike, data: bytes | None = None) -> str | None:
    """Return why `path` (whose bytes are `data`, if already read) cannot be used as an image, or None."""
    try:
        if data is None:
            data = Path(path).read_bytes()
        if not data:
            return "empty file"
        check_decodes(io.BytesIO(data))
    except UnidentifiedImageError:  # its message would name the in-memory buffer; rejected.csv names the file
        return "UnidentifiedImageError: cannot identify image file"
    except Exception as err:  # any decoder failure is a property of the file, reported not raised
        return describe_error(err)
    return None


@dataclass
class FolderScan:
    """The result of scanning an ImageFolder tree."""

    classes: list[str]
    candidates: list[tuple[str, str]] = field(default_factory=list)  # (path, class) with image extension
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


# Folder names of a data set that is already split: this pipeline splits by itself.
SPLIT_FOLDER_NAMES = {"train", "training", "val", "valid", "validation", "test", "testing"}


def normalised_class(name: str) -> str:
    """A class name as people read it: Unicode NFC, case-folded, surrounding blanks removed."""
    return unicodedata.normalize("NFC", name).strip().casefold()


def check_class_folders(root: Path, classes: Sequence[str]) -> None:
    """Refuse class folders that cannot make a classifier (docs/data.md, "What is refused"), one line each:
    fewer than two, names that differ only in case, blanks or Unicode form, a layout already split."""
    if len(classes) < 2:
        inside = f" ('{classes[0]}')" if classes else ""
        raise DataError(f"{root}: found {len(classes)} class folder{inside}; a classifier needs at least 2 "
                        f"(one folder per class: {root}/<class>/<image files>)")
    seen: dict[str, str] = {}
    for name in classes:
        other = seen.setdefault(normalised_class(name), name)
        if other != name:
            raise DataError(f"{root}: class folders '{other}' and '{name}' differ only in case, blanks or Unicode "
                            f"form: merge them into one folder, or rename one")
    split_like = sorted(name for name in classes if normalised_class(name) in SPLIT_FOLDER_NAMES)
    if len(split_like) >= 2:
        raise DataError(f"{root}: class folders {', '.join(repr(n) for n in split_like)} look like a data set already "
                        f"split into train/val/test; put the class folders directly in {root} (this pipeline "
                        f"splits by itself: split.train, split.val, split.test)")


def scan_image_folder(root: str | os.PathLike) -> FolderScan:
    """List class folders (sorted, as ImageFolder) and every file under `root`, without decoding."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found (expected {root}/<class>/<image files>)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not is_hidden(p.name))
    if not classes:
        raise DataError(f"{root}: no class folders found (expected {root}/<class>/<image files>)")
    check_class_folders(root, classes)
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
    """(why the file is unusable or None, SHA-256 of its bytes): one worker task of the split stage.

    The file is read once: its bytes are hashed and then decoded from memory.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        return f"unreadable file: {err.strerror}", ""
    return image_problem(path, data), hashlib.sha256(data).hexdigest()


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
    with worker_pool(workers) as pool:
        return list(tqdm(pool.imap(inspect_file, paths, chunksize=8), **progress))


# The cache is valid only for the same decoder and the same validation rules.
VALIDATION_CACHE_KEY = f"imgclf.validation/2 Pillow {PIL.__version__}"


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


# Part of every image's position: changing it (a new rule) reshuffles everything, like a new seed.
POSITION_KEY = "imgclf.split/2"
SPLITS = ("train", "val", "test")


def split_position(seed: int, label: str, digest: str) -> float:
    """An image's fixed place in [0, 1): a SHA-256 of (seed, class, content hash), nothing else.

    hashlib, not Python's hash(), which is salted per process (PYTHONHASHSEED).
    """
    key = f"{POSITION_KEY}\0{seed}\0{label}\0{digest}".encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2.0 ** 64


def split_intervals(val: float, test: float) -> dict[str, tuple[float, float]]:
    """Where each split lies in [0, 1): test first, then val, then train (so a fraction change moves few)."""
    return {"test": (0.0, test), "val": (test, test + val), "train": (test + val, 1.0)}


def assign_splits(positions: dict[str, float], val: float, test: float) -> dict[str, str]:
    """Each key's split by its position; then, where that leaves a split empty, the nearest image moves in.

    The first rule alone makes an image's split a function of the image (adding, removing or renaming
    others never moves it). The second is the small-class rule: with p = 0.15, a class of n images
    has no val (or no test) image with probability 0.85^n (20 images: 4%; 50: 0.03%); then the image
    whose position is nearest to that split's interval is moved into it, so every split keeps one.
    Only in such a class can an image move when others are added or removed.
    """
    intervals = split_intervals(val, test)
    where = {key: "test" if u < test else "val" if u < test + val else "train" for key, u in positions.items()}
    for name, (low, high) in intervals.items():
        counts = Counter(where.values())
        if counts[name]:
            continue
        # The nearest position to the empty interval, from a split that can spare one; ties by key.
        donor = min((key for key in where if counts[where[key]] > 1),
                    key=lambda key: (max(low - positions[key], positions[key] - high, 0.0), key))
        where[donor] = name
    return where


def stratified_split(files: Sequence[tuple[str, str]], classes: Sequence[str], val: float, test: float,
                     seed: int, digests: dict[str, str]) -> dict[str, list[tuple[str, str]]]:
    """Split (path, class) pairs into train/val/test rows of (path, label), each image by its content hash.

    An image's split depends only on its content (`digests`: path -> SHA-256), its class, the seed
    and the fractions: not on which other files exist, their names or their order. Byte-identical
    copies share a hash, so they always land together and a duplicate never leaks from train into
    test. Per class the shares are binomial around the fractions (see assign_splits for small classes).
    """
    by_class: dict[str, dict[str, list[str]]] = {c: {} for c in classes}
    for path, label in files:
        by_class[label].setdefault(digests[path], []).append(path)
    parts: dict[str, list[tuple[str, str]]] = {name: [] for name in SPLITS}
    for label in classes:
        units = by_class[label]
        if len(units) < 3:
            raise DataError(f"class '{label}' has {len(units)} valid distinct image(s); at least 3 are "
                            f"needed so that train, val and test each get one")
        where = assign_splits({digest: split_position(seed, label, digest) for digest in units}, val, test)
        for digest, name in where.items():
            parts[name] += [(path, label) for path in units[digest]]
    order = {label: k for k, label in enumerate(classes)}
    return {name: sorted(rows, key=lambda r: (order[r[1]], r[0])) for name, rows in parts.items()}


@dataclass
class SplitResult:
    """What the split stage writes: class order, the three splits' (path, label) rows, every rejected file."""

    classes: list[str]
    parts: dict[str, list[tuple[str, str]]]
    rejected: list[tuple[str, str]]  # (path, reason), sorted


def split_image_folder(root: str | os.PathLike, val: float, test: float, seed: int,
                       workers: int | None = None, cache_path: str | os.PathLike | None = None) -> SplitResult:
    """Scan `root`, decode every image, drop bad files and label conflicts, split the rest by content hash."""
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
                             digests={p: digest for p, _, digest in valid})
    return SplitResult(scan.classes, parts, sorted(rejected))


def class_counts(rows: Sequence[tuple[str, str]], classes: Sequence[str]) -> list[tuple[str, int]]:
    """(class, images) for one split's (path, label) rows, every class listed, in class order (a plot)."""
    counts = Counter(label for _, label in rows)
    return [(name, counts[name]) for name in classes]


def write_split(out_dir: str | os.PathLike, parts: dict[str, Sequence[tuple[str, str]]],
                classes: Sequence[str]) -> None:
    """Write `out_dir`/{train,val,test}.csv (`path,label`) and classes.json, each atomically.

    The format split_files reads; written with the csv module, because pandas alone would cost the
    split stage a quarter of a second of start-up.
    """
    out_dir = Path(out_dir)
    for name in SPLITS:
        write_rows(out_dir / f"{name}.csv", ["path", "label"], parts[name])
    write_json(out_dir / "classes.json", list(classes))
