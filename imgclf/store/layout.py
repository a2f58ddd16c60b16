"""The store's format, shared by its writer and its reader: the params an entry depends on, its content key,
meta.json, digests."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from imgclf.errors import DataError
from imgclf.images import describe_error

FORMAT = "imgclf.decoded/2"
OLD_FORMATS = ("imgclf.decoded/1",)  # one N x 3 x S x S .npy per split, rewritten whole by every decode
# The key as 32 raw bytes, not NumPy's "S32": that type drops trailing zero bytes, and 1 digest in 256 ends in one.
KEY_DTYPE = np.dtype([("key", "u1", (32,)), ("offset", "<i8"), ("length", "<i8")])


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


def file_key(path: str) -> tuple[bytes | None, str]:
    """(SHA-256 of the file's bytes, "") or (None, why it could not be read): a worker task of the decode stage."""
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").digest(), ""
    except OSError as err:
        return None, describe_error(err)


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


def read_keys(path: str | os.PathLike) -> np.ndarray:
    """A shard's keys file: per entry its content key (32 bytes), offset and length (KEY_DTYPE)."""
    return np.load(path)
