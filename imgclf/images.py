"""Image files to pixels, defined once for split, decode, evaluate and predict (no torch: Pillow and NumPy).

Every image takes one path into a model: `load_image` (any file -> 8-bit RGB, EXIF orientation
applied), then `load_resized` (-> uint8 3 x S x S array at the model's resolution). The decode
stage stores `load_resized`'s output for training; evaluate and predict (PyTorch or ONNX Runtime)
call the same function on their files, so a model always sees its images prepared one way.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import IO, Sequence

import numpy as np
from PIL import Image, ImageOps

from imgclf.errors import DataError

# torchvision's ImageFolder extensions plus GIF (first frame). Written out rather than imported:
# importing torch would triple the split stage's start-up time and memory. A test keeps them in step.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
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


def load_image(path: str | os.PathLike, draft_size: int | None = None) -> Image.Image:
    """Fully decode an image file to RGB with its EXIF orientation applied (first frame if animated).

    With `draft_size`, a JPEG may be decoded at a reduced scale, never below draft_size on either side.
    """
    with warnings.catch_warnings():
        # A header that declares a huge image is refused before its pixels are allocated.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            img.seek(0)
            if draft_size:
                img.draft(None, (draft_size, draft_size))  # a no-op for formats other than JPEG
            img.load()
            oriented = ImageOps.exif_transpose(img)
            return to_rgb(oriented)


def check_decodes(source: str | os.PathLike | IO[bytes]) -> None:
    """Decode an image's first frame, or raise: the proof that a file is usable, at less than a full decode's cost.

    Validation needs no pixels, only the proof that every byte of the compressed stream decodes. A
    JPEG is therefore decoded at 1/8 scale in YCbCr: libjpeg still entropy-decodes every block of
    every scan (so truncation is caught exactly as by a full decode: tests/unit/test_bad_images.py
    cuts baseline and progressive files at many points), but skips most of the inverse DCT and the
    colour conversion, about 1.8x faster. Other formats decode fully. The EXIF block is parsed too,
    since load_image reads it later.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(source) as img:
            img.seek(0)
            if img.format == "JPEG":
                img.draft("YCbCr" if img.mode == "RGB" else None, (1, 1))
            img.load()
            img.getexif()


def load_resized(path: str | os.PathLike, image_size: int) -> np.ndarray:
    """Decode an image file to a uint8 RGB array of 3 x image_size x image_size (channels first)."""
    # JPEG can decode at 1/2, 1/4 or 1/8 scale inside the decoder (DCT scaling): a 1024x768 photo
    # wanted at 64 px decodes as 128x96, and the resize below starts from a smaller image. The draft
    # never goes below the requested size.
    image = load_image(path, draft_size=image_size)
    if image.size != (image_size, image_size):
        # Pillow's bilinear filter widens with the downscale factor (antialiased), as torchvision's
        # resize(antialias=True) does; the two differ by at most one level per pixel.
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def load_resized_or_error(task: tuple[str, int]) -> tuple[np.ndarray | None, str]:
    """(load_resized(path, size), "") or (None, why it failed in one line): a worker task of decode and predict."""
    path, image_size = task
    try:
        return load_resized(path, image_size), ""
    except Exception as err:  # reported by the caller, with the file's name
        return None, describe_error(err)


def describe_error(err: Exception) -> str:
    """`ErrorType: first line of its message`, for a one-line report of why a file failed."""
    message = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {message}".rstrip(": ")


def list_inputs(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """The files to predict: each input file as given, each folder's files recursively (sorted), no repeats."""
    found: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += list_images(path)
        elif path.is_file():
            found.append(path.as_posix())
        else:
            raise DataError(f"{path}: input not found (expected image files or folders)")
    return list(dict.fromkeys(found))


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
