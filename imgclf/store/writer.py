"""The decode stage's side of the store: entries encoded, written into new immutable shards, looked up by content,
committed with each split's index and meta.json (last)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from imgclf.artifacts import atomic_path, write_json
from imgclf.store.layout import FORMAT, KEY_DTYPE, OLD_FORMATS, StoreParams, read_keys
from imgclf.store.pool import link

SHARD_BYTES = 64 * 2**20  # big enough that DVC tracks few files (~300 at 1.28M images), small enough to rewrite
# Below this share of live entries, a shard's live entries are copied into a new shard and it is deleted.
MIN_LIVE = 0.5


def encode(pixels: np.ndarray, params: StoreParams) -> bytes:
    """One uint8 3 x S x S image as stored: its raw bytes, or a JPEG (4:4:4, params.quality)."""
    if params.storage == "raw":
        return np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    out = io.BytesIO()
    # 4:4:4: chroma subsampling would halve colour resolution on top of the re-encoding's loss.
    Image.fromarray(pixels.transpose(1, 2, 0)).save(out, "JPEG", quality=params.quality, subsampling=0)
    return out.getvalue()


def _write_all(handle, data: bytes) -> None:
    """Write `data` to an open binary file (one place, so that tests can make the disk run full here)."""
    handle.write(data)


class OutOfSpace(Exception):
    """The file system of the store filled up while a shard was written (ENOSPC or a full quota)."""


def is_out_of_space(err: OSError) -> bool:
    """True for "no space left on device" and "disk quota exceeded"."""
    return err.errno in (errno.ENOSPC, errno.EDQUOT)


class ShardWriter:
    """Appends encoded entries to new shard files under `shards/`, each closed and renamed whole at SHARD_BYTES."""

    def __init__(self, directory: Path, params: StoreParams, shard_bytes: int = SHARD_BYTES):
        self.directory = directory
        self.params = params
        self.shard_bytes = shard_bytes
        self.written: dict[bytes, tuple[str, int, int]] = {}  # key -> (shard name, offset, length), closed shards
        self.new_shards: list[str] = []
        self.bytes_written = 0  # this run's entries, in closed shards and the open one
        self.closed_bytes = 0  # in closed shards only: what stays on disk if the run fails
        self._keys: set[bytes] = set()
        self._handle = None
        self._tmp: Path | None = None
        self._pending: list[tuple[bytes, int, int]] = []
        self._hash = hashlib.sha256()
        self._size = 0

    def add(self, key: bytes, data: bytes) -> None:
        """Append one entry; a full shard is closed and a new one started."""
        if key in self._keys:
            return
        if self._handle is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=".shard.", suffix=".tmp", dir=self.directory)
            self._handle, self._tmp = os.fdopen(fd, "wb"), Path(name)
            self._pending, self._hash, self._size = [], hashlib.sha256(), 0
        try:
            _write_all(self._handle, data)
        except OSError as err:
            if is_out_of_space(err):
                raise OutOfSpace(str(err)) from None
            raise
        self._keys.add(key)
        self._hash.update(data)
        self._pending.append((key, self._size, len(data)))
        self._size += len(data)
        self.bytes_written += len(data)
        if self._size >= self.shard_bytes:
            self.close_shard()

    def close_shard(self) -> None:
        """fsync the open shard, rename it to its content name, write its keys file; then it is part of the store."""
        if self._handle is None:
            return
        handle, tmp, self._handle = self._handle, self._tmp, None
        name = f"{self.params.tag}-{self._hash.hexdigest()[:32]}"
        try:
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            self._write_keys(name)
        except OSError as err:
            handle.close()
            tmp.unlink(missing_ok=True)
            if is_out_of_space(err):
                raise OutOfSpace(str(err)) from None
            raise
        # The keys file first, then the data under its final name: a .bin is never without its keys.
        for path in (tmp, self.directory / f"{name}.keys.npy"):
            os.chmod(path, 0o644)  # mkstemp makes 0600; shards are ordinary outputs
        os.replace(tmp, self.directory / f"{name}.bin")
        for key, offset, length in self._pending:
            self.written[key] = (name, offset, length)
        self.new_shards.append(name)
        self.closed_bytes += self._size

    def _write_keys(self, name: str) -> None:
        """The open shard's keys file, fsynced, under its final name."""
        keys = np.zeros(len(self._pending), dtype=KEY_DTYPE)
        keys["key"] = np.frombuffer(b"".join(k for k, _, _ in self._pending), np.uint8).reshape(-1, 32)
        keys["offset"] = [offset for _, offset, _ in self._pending]
        keys["length"] = [length for _, _, length in self._pending]
        with atomic_path(self.directory / f"{name}.keys.npy") as keys_tmp:
            with open(keys_tmp, "wb") as out:
                np.save(out, keys)
                out.flush()
                os.fsync(out.fileno())

    @property
    def entries(self) -> int:
        """Entries added by this writer so far."""
        return len(self._keys)

    def abort(self) -> None:
        """Remove the shard being written (closed shards stay: they are whole, and the next run reuses them)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
            self._tmp.unlink(missing_ok=True)


class Store:
    """A store folder opened for writing: its shards of these params (its own and the pool's), looked up by content.

    `pool_dir` (store.pool.find_pool) holds a hard link to every shard the store used, where the next
    run finds them after DVC has deleted the output.
    """

    def __init__(self, directory: str | os.PathLike, params: StoreParams, pool_dir: str | os.PathLike | None = None):
        self.directory = Path(directory)
        self.params = params
        self.shards_dir = self.directory / "shards"
        self.pool_dir = Path(pool_dir) if pool_dir else None
        self._catalog: dict[bytes, tuple[str, int, int]] = {}
        self._shard_counts: dict[str, int] = {}
        self._shard_paths: dict[str, Path] = {}  # where each known shard's .bin is (the output or the pool)
        self.previous = self._read_previous_meta()
        for folder in (self.shards_dir, self.pool_dir):
            if folder is not None and folder.is_dir():
                self._scan(folder)

    def _scan(self, folder: Path) -> None:
        """Catalogue the shards of these params in `folder`; remove what a killed run left there."""
        for stale in folder.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        for keys_file in sorted(folder.glob(f"{self.params.tag}-*.keys.npy")):
            name = keys_file.name[:-len(".keys.npy")]
            if name in self._shard_paths or not (folder / f"{name}.bin").is_file():
                continue
            try:
                keys = read_keys(keys_file)
            except (OSError, ValueError):
                continue  # unreadable: its entries are decoded again, and it is removed at commit
            self._shard_paths[name] = folder / f"{name}.bin"
            self._shard_counts[name] = len(keys)
            for key, offset, length in zip(map(bytes, keys["key"]), keys["offset"].tolist(), keys["length"].tolist()):
                self._catalog.setdefault(key, (name, offset, length))

    def _read_previous_meta(self) -> dict | None:
        """The folder's meta.json if any (of any format), else None."""
        try:
            meta = json.loads((self.directory / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def notice(self) -> str:
        """One line for the user when the previous content cannot be reused, else ""."""
        if self.previous is None:
            return ""
        fmt = self.previous.get("format")
        if fmt in OLD_FORMATS:
            return (f"note: {self.directory} was written by an earlier version of this pipeline (format {fmt}): "
                    f"every image is decoded once more into the incremental store; later runs decode only new images")
        if fmt == FORMAT and self.previous.get("params") != asdict(self.params) and not self._catalog:
            return f"note: decode params changed since {self.directory} was written: every image is decoded again"
        return ""

    def plan(self, keys: Iterable[bytes]) -> tuple[list[bytes], list[bytes]]:
        """(keys to decode, keys to copy out of sparse shards) for a store that must hold exactly `keys`."""
        wanted = set(keys)
        missing = sorted(k for k in wanted if k not in self._catalog)
        live: dict[str, int] = {}
        for key in wanted:
            if key in self._catalog:
                name = self._catalog[key][0]
                live[name] = live.get(name, 0) + 1
        sparse = {name for name, count in live.items() if count < MIN_LIVE * self._shard_counts[name]}
        copies = sorted(k for k in wanted if k in self._catalog and self._catalog[k][0] in sparse)
        return missing, copies

    def read_entry(self, key: bytes) -> bytes:
        """The stored bytes of one entry."""
        name, offset, length = self._catalog[key]
        with open(self._shard_paths[name], "rb") as handle:
            handle.seek(offset)
            return handle.read(length)

    def entry_bytes(self, keys: Iterable[bytes]) -> int:
        """Stored bytes of the entries `keys` (all of them stored)."""
        return sum(self._catalog[k][2] for k in keys)

    def mean_entry_bytes(self) -> float:
        """Average stored bytes per entry so far (for space estimates); raw size if nothing is stored yet."""
        if not self._catalog:
            return self.params.raw_bytes if self.params.storage == "raw" else self.params.raw_bytes / 4
        return sum(length for _, _, length in self._catalog.values()) / len(self._catalog)

    def writer(self, shard_bytes: int = SHARD_BYTES) -> ShardWriter:
        """A writer of new shards into this store."""
        return ShardWriter(self.shards_dir, self.params, shard_bytes)

    def commit(self, writer: ShardWriter, splits: dict[str, tuple[Sequence[str], Sequence[bytes], str]]) -> dict:
        """Link the used shards into the output and the pool, write each split's index and meta.json (last),
        then delete what no split uses.

        `splits`: name -> (paths, their content keys, digest of the paths). Returns the new meta.
        """
        self._catalog.update(writer.written)
        for name in writer.new_shards:
            self._shard_paths[name] = self.shards_dir / f"{name}.bin"
        used = sorted({self._catalog[k][0] for _, keys, _ in splits.values() for k in keys})
        for name in used:
            for suffix in (".bin", ".keys.npy"):
                source = self._shard_paths[name].with_name(name + suffix)
                link(source, self.shards_dir / (name + suffix))
                if self.pool_dir is not None:
                    link(source, self.pool_dir / (name + suffix), required=False)
        number = {name: i for i, name in enumerate(used)}
        meta = {"format": FORMAT, "params": asdict(self.params), **asdict(self.params),
                "shards": used, "splits": {}}
        for split, (paths, keys, paths_digest) in splits.items():
            index = np.array([(number[self._catalog[k][0]],) + self._catalog[k][1:] for k in keys],
                             dtype=np.int64).reshape(-1, 3)
            digest = hashlib.sha256(index.tobytes()).hexdigest()
            # Named by content, beside the previous index: meta.json alone switches from one store to the next.
            name = f"{split}-{digest[:16]}.index.npy"
            with atomic_path(self.directory / name) as tmp:
                with open(tmp, "wb") as out:
                    np.save(out, index)
            meta["splits"][split] = {"count": len(keys), "paths_sha256": paths_digest, "index": name,
                                     "index_sha256": digest, "distinct": len(set(keys))}
        write_json(self.directory / "meta.json", meta)
        self._remove_unused(set(used), {info["index"] for info in meta["splits"].values()})
        return meta

    def _remove_unused(self, used: set[str], indexes: set[str]) -> None:
        """Delete shards no split refers to (any params), index files meta.json does not name, the old format's arrays.

        In the pool, a shard that is not used now stays while another name still holds it (DVC's cache,
        for an earlier data version: free on disk, and found again if that version comes back); once
        `dvc gc` has dropped it, the pool's link is the last one and goes.
        """
        if self.shards_dir.is_dir():
            for path in self.shards_dir.iterdir():
                name = path.name.removesuffix(".keys.npy").removesuffix(".bin")
                if name not in used and path.suffix in (".bin", ".npy"):
                    path.unlink(missing_ok=True)
        if self.pool_dir is not None and self.pool_dir.is_dir():
            for path in self.pool_dir.glob("*.bin"):
                name = path.name.removesuffix(".bin")
                with contextlib.suppress(OSError):
                    if name not in used and path.stat().st_nlink <= 1:
                        path.unlink()
                        (self.pool_dir / f"{name}.keys.npy").unlink(missing_ok=True)
        for path in self.directory.glob("*.index.npy"):
            if path.name not in indexes:
                path.unlink(missing_ok=True)
        for old in ("train.npy", "val.npy"):  # imgclf.decoded/1
            (self.directory / old).unlink(missing_ok=True)


def free_bytes(directory: Path) -> int:
    """Free bytes for an unprivileged writer on the file system that holds `directory` (or its nearest parent)."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def space_message(directory: Path, needed: float, free: int, count: int) -> str:
    """One line: how much more the store needs, where, and how much is free."""
    return (f"{directory}: not enough disk space to decode {count} new images: the store needs about "
            f"{_size(needed)} more in {directory.resolve()} and the file system has {_size(free)} free; "
            f"free some space (`dvc gc -w` drops cache entries no commit uses) and rerun, nothing was changed")


def _size(n: float) -> str:
    """Bytes in binary units, e.g. 1.4 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def store_bytes(directory: str | os.PathLike) -> int:
    """Bytes of every file in a store folder (what one copy of it costs on disk)."""
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())


@contextlib.contextmanager
def no_partial_shard(writer: ShardWriter) -> Iterator[ShardWriter]:
    """Remove the shard being written if the block fails; shards already closed are whole and stay."""
    try:
        yield writer
    except BaseException:
        writer.abort()
        raise
