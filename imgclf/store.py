"""The decoded-image store: images decoded once per (content, decode params), kept in immutable shards, read in batches.

Layout of a store folder (the decode stage's DVC output):

    meta.json                     format, decode params, shard list, per split: count, paths and index digests
    <split>-<sha>.index.npy       int64 N x 3 per split row: (shard number in meta's list, offset, length)
    shards/<params>-<sha>.bin     encoded images, back to back; named by the SHA-256 of their bytes
    shards/<params>-<sha>.keys.npy  per entry: SHA-256 of the source file's bytes, offset, length

A shard is never modified once written: adding images writes a new shard beside the old ones, so
DVC (a directory output is cached file by file) finds the old shards unchanged and stores nothing
new for them; with `cache.type: hardlink` the workspace file is the cache's file. Entries
are looked up by the source file's content hash, so a renamed, moved or re-added image is found
again. Every shard also has a hard link in a pool beside DVC's cache (`find_pool`), where the next
run finds it after DVC has deleted the stage's output. A shard whose live entries fall below half is
rewritten (bytes copied, not decoded again); a shard with none left is deleted. meta.json is written
last: until then the previous store is whole. Mechanism and measurements: docs/data.md.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import mmap
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from imgclf.artifacts import atomic_path, write_json
from imgclf.errors import DataError
from imgclf.images import center_crop, describe_error, legacy_reducing_gap

FORMAT = "imgclf.decoded/2"
OLD_FORMATS = ("imgclf.decoded/1",)  # one N x 3 x S x S .npy per split, rewritten whole by every decode
SHARD_BYTES = 64 * 2**20  # big enough that DVC tracks few files (~300 at 1.28M images), small enough to rewrite
# The key as 32 raw bytes, not NumPy's "S32": that type drops trailing zero bytes, and 1 digest in 256 ends in one.
KEY_DTYPE = np.dtype([("key", "u1", (32,)), ("offset", "<i8"), ("length", "<i8")])
# Below this share of live entries, a shard's live entries are copied into a new shard and it is deleted.
MIN_LIVE = 0.5


@dataclass(frozen=True)
class StoreParams:
    """What an entry's pixels depend on besides the file's bytes: side, geometry, storage and its quality."""

    image_size: int
    resize: str
    storage: str  # raw: uint8 3 x S x S as is; jpeg: re-encoded at the stored size (FFCV's choice for large sets)
    quality: int
    reducing_gap: float | None = None  # absent from stores written before it (read back only to compare)

    @property
    def tag(self) -> str:
        """A short digest of the params, prefixed to shard names: shards of other params are never read."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def raw_bytes(self) -> int:
        """Bytes of one image as uint8 3 x S x S."""
        return 3 * self.image_size * self.image_size


def paths_digest(paths: Sequence[str]) -> str:
    """SHA-256 of the newline-joined path list: ties a split's index to the split CSV it was decoded from."""
    return hashlib.sha256("\n".join(paths).encode("utf-8")).hexdigest()


def encode(pixels: np.ndarray, params: StoreParams) -> bytes:
    """One uint8 3 x S x S image as stored: its raw bytes, or a JPEG (4:4:4, params.quality)."""
    if params.storage == "raw":
        return np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    out = io.BytesIO()
    # 4:4:4: chroma subsampling would halve colour resolution on top of the re-encoding's loss.
    Image.fromarray(pixels.transpose(1, 2, 0)).save(out, "JPEG", quality=params.quality, subsampling=0)
    return out.getvalue()


def decode_into(data: bytes | memoryview, params: StoreParams, out: np.ndarray) -> None:
    """Decode one stored entry into `out` (a uint8 3 x S x S view)."""
    if params.storage == "raw":
        out[...] = np.frombuffer(data, dtype=np.uint8).reshape(out.shape)
        return
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        out[...] = np.asarray(image).transpose(2, 0, 1)


def file_key(path: str) -> tuple[bytes | None, str]:
    """(SHA-256 of the file's bytes, "") or (None, why it could not be read): a worker task of the decode stage."""
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").digest(), ""
    except OSError as err:
        return None, describe_error(err)


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
        try:
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            name = f"{self.params.tag}-{self._hash.hexdigest()[:32]}"
            keys = np.zeros(len(self._pending), dtype=KEY_DTYPE)
            keys["key"] = np.frombuffer(b"".join(k for k, _, _ in self._pending), np.uint8).reshape(-1, 32)
            keys["offset"] = [offset for _, offset, _ in self._pending]
            keys["length"] = [length for _, _, length in self._pending]
            with atomic_path(self.directory / f"{name}.keys.npy") as keys_tmp:
                with open(keys_tmp, "wb") as out:
                    np.save(out, keys)
                    out.flush()
                    os.fsync(out.fileno())
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

    The pool (`pool_dir`, beside DVC's cache: see `find_pool`) holds a hard link to every shard the
    store used: DVC deletes a stage's outputs before it runs the stage, and the pool is where the
    stage finds its earlier shards again, in this workspace or a queued experiment's copy of it. A
    link is a name, not a copy: with `cache.type: hardlink` the workspace file, DVC's cache object and
    the pool's link are one file on disk.
    """

    def __init__(self, directory: str | os.PathLike, params: StoreParams, pool_dir: str | os.PathLike | None = None):
        self.directory = Path(directory)
        self.params = params
        self.shards_dir = self.directory / "shards"
        self.pool_dir = Path(pool_dir) if pool_dir else None
        self.catalog: dict[bytes, tuple[str, int, int]] = {}
        self.shard_counts: dict[str, int] = {}
        self.shard_paths: dict[str, Path] = {}  # where each known shard's .bin is (the output or the pool)
        self.previous = self._read_previous_meta()
        for folder in (self.shards_dir, self.pool_dir):
            if folder is None or not folder.is_dir():
                continue
            for stale in folder.glob(".*.tmp"):  # left by a killed run
                stale.unlink(missing_ok=True)
            for keys_file in sorted(folder.glob(f"{params.tag}-*.keys.npy")):
                name = keys_file.name[:-len(".keys.npy")]
                if name in self.shard_paths or not (folder / f"{name}.bin").is_file():
                    continue
                try:
                    keys = np.load(keys_file)
                except (OSError, ValueError):
                    continue  # unreadable: its entries are decoded again, and it is removed at commit
                self.shard_paths[name] = folder / f"{name}.bin"
                self.shard_counts[name] = len(keys)
                for key, offset, length in zip(map(bytes, keys["key"]), keys["offset"].tolist(),
                                               keys["length"].tolist()):
                    self.catalog.setdefault(key, (name, offset, length))

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
        if fmt == FORMAT and self.previous.get("params") != asdict(self.params) and not self.catalog:
            return f"note: decode params changed since {self.directory} was written: every image is decoded again"
        return ""

    def plan(self, keys: Iterable[bytes]) -> tuple[list[bytes], list[bytes]]:
        """(keys to decode, keys to copy out of sparse shards) for a store that must hold exactly `keys`."""
        wanted = set(keys)
        missing = sorted(k for k in wanted if k not in self.catalog)
        live: dict[str, int] = {}
        for key in wanted:
            if key in self.catalog:
                name = self.catalog[key][0]
                live[name] = live.get(name, 0) + 1
        sparse = {name for name, count in live.items() if count < MIN_LIVE * self.shard_counts[name]}
        copies = sorted(k for k in wanted if k in self.catalog and self.catalog[k][0] in sparse)
        return missing, copies

    def read_entry(self, key: bytes) -> bytes:
        """The stored bytes of one entry."""
        name, offset, length = self.catalog[key]
        with open(self.shard_paths[name], "rb") as handle:
            handle.seek(offset)
            return handle.read(length)

    def mean_entry_bytes(self) -> float:
        """Average stored bytes per entry so far (for space estimates); raw size if nothing is stored yet."""
        if not self.catalog:
            return self.params.raw_bytes if self.params.storage == "raw" else self.params.raw_bytes / 4
        return sum(length for _, _, length in self.catalog.values()) / len(self.catalog)

    def writer(self, shard_bytes: int = SHARD_BYTES) -> ShardWriter:
        """A writer of new shards into this store."""
        return ShardWriter(self.shards_dir, self.params, shard_bytes)

    def commit(self, writer: ShardWriter, splits: dict[str, tuple[Sequence[str], Sequence[bytes], str]]) -> dict:
        """Link the used shards into the output and the pool, write each split's index and meta.json (last),
        then delete what no split uses.

        `splits`: name -> (paths, their content keys, digest of the paths). Returns the new meta.
        """
        self.catalog.update(writer.written)
        for name in writer.new_shards:
            self.shard_paths[name] = self.shards_dir / f"{name}.bin"
        used = sorted({self.catalog[k][0] for _, keys, _ in splits.values() for k in keys})
        for name in used:
            for suffix in (".bin", ".keys.npy"):
                source = self.shard_paths[name].with_name(name + suffix)
                _link(source, self.shards_dir / (name + suffix))
                if self.pool_dir is not None:
                    _link(source, self.pool_dir / (name + suffix), required=False)
        number = {name: i for i, name in enumerate(used)}
        meta = {"format": FORMAT, "params": asdict(self.params), **asdict(self.params),
                "shards": used, "splits": {}}
        for split, (paths, keys, paths_digest) in splits.items():
            index = np.array([(number[self.catalog[k][0]],) + self.catalog[k][1:] for k in keys],
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


def _link(source: Path, target: Path, required: bool = True) -> None:
    """Give `source` a second name `target` (a hard link, no bytes copied); a copy across file systems.

    Without `required` (the pool) a failure only costs reuse later, so it is ignored.
    """
    if target.exists() or source == target:
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(source, target)
    except OSError:
        if not required:
            return
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)


def find_pool(root: str | os.PathLike = ".") -> Path | None:
    """The shard pool of the DVC project at `root`: `imgclf-decoded/` inside its DVC cache directory, else None.

    The cache directory is `cache.dir` of .dvc/config.local or .dvc/config (relative to .dvc/), else
    .dvc/cache. A queued experiment's temporary workspace has config.local pointing at the project's
    cache, so it finds the same pool.
    """
    import configparser

    dvc_dir = Path(root) / ".dvc"
    if not dvc_dir.is_dir():
        return None
    cache = dvc_dir / "cache"
    for name in ("config", "config.local"):  # config.local wins, as in DVC
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        try:
            parser.read(dvc_dir / name, encoding="utf-8")
        except configparser.Error:
            continue
        value = parser.get("cache", "dir", fallback=None)
        if value:
            cache = dvc_dir / value.strip().strip("'\"")
    return cache / "imgclf-decoded"


def seed_pool(root: str | os.PathLike, pool: Path, output: str = "data/decoded") -> int:
    """Link the shards of the store recorded in `root`/dvc.lock from DVC's cache into the pool; returns how many.

    For a workspace whose pool lacks them (a fresh clone after `dvc pull`, a pool removed by hand):
    DVC deletes `output` before the decode stage runs, but its cache still holds the last store. Reads
    dvc.lock's md5 of `output` and that directory's manifest in the cache (files/md5/xx/rest.dir, DVC 3's
    layout); anything unexpected only means fewer shards to reuse.
    """
    import yaml

    cache = pool.parent
    try:
        lock = yaml.safe_load((Path(root) / "dvc.lock").read_text(encoding="utf-8"))
        outs = lock["stages"]["decode"]["outs"]
        digest = next(out["md5"] for out in outs if out["path"] == output)
        manifest = json.loads((cache / "files/md5" / digest[:2] / digest[2:]).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError, StopIteration, yaml.YAMLError):
        return 0
    linked = 0
    for entry in manifest if isinstance(manifest, list) else []:
        relpath, md5 = entry.get("relpath", ""), entry.get("md5", "")
        if relpath.startswith("shards/") and len(md5) == 32 and not (pool / relpath[7:]).exists():
            source = cache / "files/md5" / md5[:2] / md5[2:]
            if source.is_file():
                _link(source, pool / relpath[7:], required=False)
                linked += 1
    return linked


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


def read_meta(directory: str | os.PathLike) -> dict:
    """Read and check meta.json of a store folder; an old format or another file is one clear line."""
    path = Path(directory) / "meta.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: not found (run the decode stage first)") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt in OLD_FORMATS:
        raise DataError(f"{path}: written by an earlier version of this pipeline (format {fmt}); run the decode "
                        f"stage (`dvc repro`) to decode it once into the new store")
    if fmt != FORMAT:
        raise DataError(f"{path}: not a decoded-images index of format {FORMAT}")
    return meta


class StoredSplit:
    """One split of a store as training reads it: len(), .shape, and split[indices] -> uint8 n x 3 x I x I.

    Rows follow the split CSV; each batch is centre-cropped to `input_size` (images.center_crop, as
    evaluate and predict crop). JPEG entries are decoded by a pool of threads (Pillow's decoder
    releases the GIL), raw entries are copied out of memory maps.
    """

    def __init__(self, directory: str | os.PathLike, split: str, paths_digest: str, input_size: int | None = None,
                 threads: int | None = None):
        self.directory = Path(directory)
        meta = read_meta(directory)
        info = meta["splits"].get(split, {})
        if info.get("paths_sha256") != paths_digest:
            raise DataError(f"{self.directory / 'meta.json'}: decoded from another {split} split than the "
                            f"current one; run `dvc repro` (the decode stage) again")
        # A store written before reducing_gap decoded JPEGs as its legacy value.
        self.params = StoreParams(**{"reducing_gap": legacy_reducing_gap(meta["params"]["resize"]), **meta["params"]})
        index_path = self.directory / str(info.get("index", f"{split}.index.npy"))
        try:
            self.index = np.load(index_path)
            self._maps = [self._map(self.directory / "shards" / f"{name}.bin") for name in meta["shards"]]
        except (OSError, ValueError) as err:
            raise DataError(f"{index_path.parent}: cannot read decoded images ({describe_error(err)}); "
                            f"run the decode stage again") from None
        size = self.params.image_size
        if self.index.shape != (info["count"], 3) or \
                hashlib.sha256(self.index.tobytes()).hexdigest() != info.get("index_sha256"):
            raise DataError(f"{index_path}: does not match meta.json; run the decode stage again")
        self.stored_size = size
        self.input_size = input_size or size
        self.shape = (len(self.index), 3, self.input_size, self.input_size)
        self.threads = threads or os.cpu_count() or 1
        self._pool: ThreadPoolExecutor | None = None
        self._decode_jpegs = _torchvision_decoder() if self.params.storage == "jpeg" else None

    def cropped(self, input_size: int) -> "StoredSplit":
        """This split with its batches centre-cropped to `input_size` (at most the stored size)."""
        if not 0 < input_size <= self.stored_size:
            raise ValueError(f"input size {input_size} must be in 1..{self.stored_size}")
        self.input_size = input_size
        self.shape = (len(self.index), 3, input_size, input_size)
        return self

    @staticmethod
    def _map(path: Path) -> mmap.mmap | bytes:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                return b""
            return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The images at `indices` (split rows), as one contiguous uint8 n x 3 x I x I array."""
        rows = self.index[np.asarray(indices, dtype=np.int64)]
        size = self.stored_size
        out = np.empty((len(rows), 3, size, size), dtype=np.uint8)
        if self.params.storage == "raw" or len(rows) < 8 or self.threads == 1:
            self._decode_chunk(rows, out, range(len(rows)))
        else:
            chunks = np.array_split(np.arange(len(rows)), min(self.threads, len(rows)))
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads)
            list(self._pool.map(lambda chunk: self._decode_chunk(rows, out, chunk), chunks))
        return np.ascontiguousarray(center_crop(out, self.input_size))

    def _entry(self, row: np.ndarray) -> memoryview:
        shard, offset, length = (int(v) for v in row)
        return memoryview(self._maps[shard])[offset:offset + length]

    def _decode_chunk(self, rows: np.ndarray, out: np.ndarray, positions) -> None:
        """Decode rows[positions] into out[positions]: torchvision's decoder for JPEG entries where it is
        installed (libjpeg-turbo too, ~1.5x the images per CPU-second of Pillow's, which spends the rest on
        building an Image per file: docs/benchmarks.md), else Pillow."""
        if self._decode_jpegs is not None and len(positions):
            for i, pixels in zip(positions, self._decode_jpegs([bytearray(self._entry(rows[i])) for i in positions])):
                out[i] = pixels
            return
        for i in positions:
            decode_into(self._entry(rows[i]), self.params, out[i])

    def __getstate__(self):  # memory maps and thread pools do not travel to another process
        raise TypeError("StoredSplit is opened in each process, not pickled")


def _torchvision_decoder():
    """A function decoding a list of JPEG byte arrays to uint8 3 x H x W arrays with torchvision, or None.

    Imported here, not at the top: the decode stage writes the store and must not import torch.
    """
    import warnings

    try:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None
    # torchvision 0.29 announces (on every call) that its image codecs move to TorchCodec; until they go they
    # are the fastest decoder installed here, and without them the reader falls back to Pillow.
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                            category=DeprecationWarning)

    def decode(buffers: list[bytearray]) -> list[np.ndarray]:
        tensors = [torch.frombuffer(buffer, dtype=torch.uint8) for buffer in buffers]
        return [image.numpy() for image in decode_jpeg(tensors, mode=ImageReadMode.RGB)]

    return decode


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
