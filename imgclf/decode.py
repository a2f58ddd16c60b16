"""The decode stage's logic: every train and val image decoded once, at training resolution, into uint8 arrays.

Training then reads pixels from these arrays every epoch and every experiment instead of decoding
and resizing files again (the classic loop's bottleneck). Each split is one `.npy` file of shape
N x 3 x S x S, opened memory-mapped, so that a set larger than RAM still works.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from imgclf.artifacts import atomic_path, write_json
from imgclf.config import param
from imgclf.errors import DataError, ignore_interrupts
from imgclf.images import describe_error, load_resized_or_error
from imgclf.split_files import read_split_paths

FORMAT = "imgclf.decoded/1"
SPLITS = ("train", "val")


@dataclass(frozen=True)
class DecodeConfig:
    """Params of the `decode` stage: the resolution the train and val images are decoded at, once."""

    image_size: int = param("side in pixels that images are resized to (for training and inference)",
                           ge=8, le=1024)


def paths_digest(paths: Sequence[str]) -> str:
    """SHA-256 of the newline-joined path list: ties an array to the split CSV it was decoded from."""
    return hashlib.sha256("\n".join(paths).encode("utf-8")).hexdigest()


def decode_images(paths: Sequence[str], image_size: int, out_path: str | os.PathLike,
                  workers: int | None = None, desc: str = "decode") -> None:
    """Decode `paths` in parallel processes into one N x 3 x S x S uint8 .npy file, written atomically."""
    workers = workers or os.cpu_count() or 1
    tasks = [(p, image_size) for p in paths]
    parallel = workers > 1 and len(paths) >= 64
    with atomic_path(out_path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                          shape=(len(paths), 3, image_size, image_size))
        progress = dict(total=len(paths), desc=desc, unit="img", mininterval=1.0)
        pool = multiprocessing.get_context("fork").Pool(workers, initializer=ignore_interrupts) if parallel else None
        try:
            load = load_resized_or_error
            results = pool.imap(load, tasks, chunksize=16) if pool else map(load, tasks)
            for index, (pixels, problem) in enumerate(tqdm(results, **progress)):
                if pixels is None:
                    raise DataError(f"{paths[index]}: cannot decode ({problem}); it was valid when the split "
                                    f"stage ran, so the file changed since: run `dvc repro` again")
                array[index] = pixels
        finally:
            if pool:
                pool.terminate()
        array.flush()
        del array


def decode_split(split_dir: str | os.PathLike, out_dir: str | os.PathLike, image_size: int,
                 workers: int | None = None) -> dict[str, int]:
    """Decode the train and val CSVs of `split_dir` into `out_dir`/{train,val}.npy plus meta.json."""
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    meta = {"format": FORMAT, "image_size": image_size, "splits": {}}
    # Both CSVs are read before any output is written.
    splits = {name: read_split_paths(split_dir / f"{name}.csv")["path"].tolist() for name in SPLITS}
    for name, paths in splits.items():
        decode_images(paths, image_size, out_dir / f"{name}.npy", workers, desc=f"decode {name}")
        meta["splits"][name] = {"count": len(paths), "paths_sha256": paths_digest(paths)}
    write_json(out_dir / "meta.json", meta)
    return {name: info["count"] for name, info in meta["splits"].items()}


def read_meta(decoded_dir: str | os.PathLike) -> dict:
    """Read and check meta.json of a decoded folder."""
    path = Path(decoded_dir) / "meta.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: not found (run the decode stage first)") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{path}: not a decoded-images index of format {FORMAT}")
    return meta


def open_decoded(decoded_dir: str | os.PathLike, split: str, paths: Sequence[str]) -> np.ndarray:
    """The uint8 N x 3 x S x S array of `split`, memory-mapped; it must match the split's `paths`."""
    meta = read_meta(decoded_dir)
    info = meta["splits"].get(split, {})
    if info.get("paths_sha256") != paths_digest(list(paths)):
        raise DataError(f"{Path(decoded_dir) / (split + '.npy')}: decoded from another {split} split "
                        f"than the current one; run `dvc repro` (the decode stage) again")
    path = Path(decoded_dir) / f"{split}.npy"
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read decoded images ({describe_error(err)})") from None
    size = meta["image_size"]
    if array.dtype != np.uint8 or array.shape != (len(paths), 3, size, size):
        raise DataError(f"{path}: expected uint8 array of shape {(len(paths), 3, size, size)}, "
                        f"got {array.dtype} {array.shape}")
    return array
