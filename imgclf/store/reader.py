"""The train stage's side of the store: one split's images as batches, centre-cropped to the model's input."""

from __future__ import annotations

import hashlib
import io
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from imgclf.errors import DataError
from imgclf.images import center_crop, describe_error, legacy_reducing_gap
from imgclf.store.layout import StoreParams, paths_digest, read_keys, read_meta


def decode_into(data: bytes | memoryview, params: StoreParams, out: np.ndarray) -> None:
    """Decode one stored entry into `out` (a uint8 3 x S x S view)."""
    if params.storage == "raw":
        out[...] = np.frombuffer(data, dtype=np.uint8).reshape(out.shape)
        return
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        out[...] = np.asarray(image).transpose(2, 0, 1)


class StoredSplit:
    """One split of a store as training reads it: len(), .shape, and split[indices] -> uint8 n x 3 x I x I.

    Rows follow the split CSV whose paths are given (a store decoded from another CSV is refused);
    each batch is centre-cropped to `input_size` (images.center_crop, as evaluate and predict crop).
    JPEG entries are decoded by a pool of threads (the decoders release the GIL), raw entries are
    copied out of memory maps.
    """

    def __init__(self, directory: str | os.PathLike, split: str, paths: Sequence[str], input_size: int | None = None,
                 threads: int | None = None):
        self.directory = Path(directory)
        meta = read_meta(directory)
        info = meta["splits"].get(split, {})
        if info.get("paths_sha256") != paths_digest(list(paths)):
            raise DataError(f"{self.directory / 'meta.json'}: decoded from another {split} split than the "
                            f"current one; run `dvc repro` (the decode stage) again")
        # A store written before reducing_gap decoded JPEGs as its legacy value.
        self.params = StoreParams(**{"reducing_gap": legacy_reducing_gap(meta["params"]["resize"]), **meta["params"]})
        self.shards = list(meta["shards"])
        index_path = self.directory / str(info.get("index", f"{split}.index.npy"))
        try:
            self.index = np.load(index_path)
            self._maps = [self._map(self.directory / "shards" / f"{name}.bin") for name in self.shards]
        except (OSError, ValueError) as err:
            raise DataError(f"{index_path.parent}: cannot read decoded images ({describe_error(err)}); "
                            f"run the decode stage again") from None
        if self.index.shape != (info["count"], 3) or \
                hashlib.sha256(self.index.tobytes()).hexdigest() != info.get("index_sha256"):
            raise DataError(f"{index_path}: does not match meta.json; run the decode stage again")
        self.stored_size = self.params.image_size
        self.input_size = input_size or self.stored_size
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

    def content_keys(self) -> list[bytes]:
        """Per row, the SHA-256 of its source file's bytes (what the features store is keyed by)."""
        found: dict[tuple[int, int], bytes] = {}
        for number, name in enumerate(self.shards):
            keys = read_keys(self.directory / "shards" / f"{name}.keys.npy")
            found.update({(number, offset): bytes(key) for key, offset in zip(keys["key"], keys["offset"].tolist())})
        return [found[(int(shard), int(offset))] for shard, offset, _ in self.index]

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
    """A function decoding a list of JPEG byte arrays to uint8 3 x H x W arrays with torchvision, or None."""
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
