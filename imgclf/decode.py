"""The decode stage's logic: every train and val image decoded once per (content, params), into the store.

The store (`imgclf/store/`) keeps each image once, in immutable shards looked up by the SHA-256 of
the file's bytes: adding or removing images decodes only the new ones and leaves every old shard
unchanged, so DVC caches nothing new for them. Training reads batches from it every epoch and
every experiment instead of decoding and resizing the files again (the classic loop's bottleneck).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from tqdm import tqdm

from imgclf.config import param
from imgclf.errors import DataError
from imgclf.images import load_resized_or_error
from imgclf.split_files import read_split_paths
from imgclf.store.layout import StoreParams, file_key, paths_digest
from imgclf.store.writer import (
    OutOfSpace,
    Store,
    encode,
    free_bytes,
    is_out_of_space,
    no_partial_shard,
    space_message,
    store_bytes,
)
from imgclf.workers import pool_if_worth_it

SPLITS = ("train", "val")
# Room left free beyond the estimate: the file system's own metadata and DVC's bookkeeping need some too.
SPACE_MARGIN = 1.1


@dataclass(frozen=True)
class DecodeConfig:
    """Params of the `decode` stage: the side, geometry and storage of the train and val images, decoded once."""

    image_size: int = param("side in pixels of the stored images (train.input_size crops from it)", ge=8, le=1024)
    resize: Literal["crop", "squash"] = param(
        "crop: shorter side to image_size, then the centre square (torchvision's Resize + CenterCrop); "
        "squash: both sides to image_size (the aspect ratio is lost)")
    storage: Literal["raw", "jpeg"] = param(
        "raw: uint8 pixels (fastest to read, 3 x S x S bytes each); jpeg: re-encoded at the stored size "
        "(~7x smaller at 224 px, lossy, decoded again by every epoch)")
    quality: int = param("JPEG quality of storage: jpeg (ignored by raw)", ge=50, le=100)
    reducing_gap: float | None = param(
        "JPEG files decode at a reduced scale (DCT scaling) no smaller than reducing_gap x the resized size, then "
        "resize (Pillow's thumbnail rule; 2.0: several times faster from large photos, ~0.4 grey levels from a full "
        "decode on average); null: full decode, torchvision's pixels exactly", ge=1)

    def store_params(self) -> StoreParams:
        """The params an entry's pixels depend on (quality only matters to jpeg)."""
        return StoreParams(self.image_size, self.resize, self.storage, self.quality if self.storage == "jpeg" else 0,
                           self.reducing_gap)


def _file_keys(paths: Sequence[str], workers: int) -> dict[str, bytes]:
    """{path: SHA-256 of its bytes} for every path, read on all cores; an unreadable file is a DataError."""
    pool = pool_if_worth_it(workers, len(paths))
    try:
        results = pool.imap(file_key, paths, chunksize=64) if pool else map(file_key, paths)
        keys = {}
        for path, (key, problem) in zip(paths, tqdm(results, total=len(paths), desc="hash", unit="img",
                                                  mininterval=1.0, leave=False)):
            if key is None:
                raise DataError(f"{path}: cannot read ({problem}); it was there when the split stage ran, "
                                f"so it changed since: run `dvc repro` again")
            keys[path] = key
        return keys
    finally:
        if pool:
            pool.terminate()


def _encoded(task: tuple[str, StoreParams]) -> tuple[bytes | None, str]:
    """Worker task: a file decoded at the store's geometry and encoded for storage, or (None, why)."""
    path, params = task
    pixels, problem = load_resized_or_error((path, params.image_size, params.resize, params.reducing_gap))
    return (encode(pixels, params), "") if pixels is not None else (None, problem)


def decode_split(split_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: DecodeConfig,
                 workers: int | None = None, say=print, pool: str | os.PathLike | None = None) -> dict[str, int]:
    """Bring the store `out_dir` up to date with the train and val CSVs of `split_dir`, decoding only new images.

    `pool` is the folder of earlier shards (store.pool.find_pool: beside DVC's cache), if any. Returns
    counts: train, val, decoded (images decoded now), reused, copied (moved out of sparse shards),
    bytes (the store's size).
    """
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    workers = workers or os.cpu_count() or 1
    # Both CSVs are read before anything is written.
    splits = {name: read_split_paths(split_dir / f"{name}.csv")["path"].tolist() for name in SPLITS}
    store = Store(out_dir, cfg.store_params(), pool)
    if store.notice():
        say(store.notice())
    unique = list(dict.fromkeys(p for paths in splits.values() for p in paths))
    keys = _file_keys(unique, workers)
    # One entry per distinct content: byte-identical files share it.
    first_path = {}
    for path in unique:
        first_path.setdefault(keys[path], path)
    missing, copies = store.plan(first_path)
    needed = len(missing) * store.mean_entry_bytes() + store.entry_bytes(copies)
    free = free_bytes(out_dir)
    if needed * SPACE_MARGIN > free:
        raise DataError(space_message(out_dir, needed * SPACE_MARGIN, free, len(missing)))
    writer = store.writer()
    processes = pool_if_worth_it(workers, len(missing))
    try:
        with no_partial_shard(writer):
            for key in copies:  # live entries of mostly-dead shards: copied, never decoded again
                writer.add(key, store.read_entry(key))
            tasks = [(first_path[k], store.params) for k in missing]
            results = processes.imap(_encoded, tasks, chunksize=16) if processes else map(_encoded, tasks)
            for key, (data, problem) in zip(missing, tqdm(results, total=len(missing), desc="decode", unit="img",
                                                          mininterval=1.0)):
                if data is None:
                    raise DataError(f"{first_path[key]}: cannot decode ({problem}); it was valid when the split "
                                    f"stage ran, so the file changed since: run `dvc repro` again")
                writer.add(key, data)
            writer.close_shard()
            meta = store.commit(writer, {name: (paths, [keys[p] for p in paths], paths_digest(paths))
                                         for name, paths in splits.items()})
    except (OutOfSpace, OSError) as err:
        if isinstance(err, OSError) and not is_out_of_space(err):
            raise
        # What the whole run needs, from the entries written before the disk filled, less what stays on disk.
        # (A full disk while the indexes or meta.json are written: the previous meta.json still names the
        # previous indexes, so the previous store is whole.)
        per_entry = writer.bytes_written / max(writer.entries, 1)
        still = max(per_entry * (len(missing) + len(copies)), needed) - writer.closed_bytes
        raise DataError(space_message(out_dir, still * SPACE_MARGIN, free_bytes(out_dir), len(missing))) from None
    finally:
        if processes:
            processes.terminate()
    return {"train": meta["splits"]["train"]["count"], "val": meta["splits"]["val"]["count"],
            "decoded": len(missing), "reused": len(first_path) - len(missing), "copied": len(copies),
            "bytes": store_bytes(out_dir)}
