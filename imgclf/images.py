"""Image files to pixels, defined once for split, decode, evaluate and predict (no torch: Pillow and NumPy).

Every image takes one path into a model: `load_image` (any file -> 8-bit RGB, EXIF orientation
applied), then `load_resized` (-> uint8 3 x S x S array at the stored resolution, by the `crop` or
`squash` geometry), then `center_crop` to the model's input side. The decode stage stores
`load_resized`'s output for training; evaluate, export and predict (PyTorch or ONNX Runtime) call
`Geometry.load` on their files, the same two steps, so a model always sees its images prepared one way.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Mapping, Sequence

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


def load_image(path: str | os.PathLike,
               draft: Callable[[tuple[int, int]], tuple[int, int]] | None = None) -> Image.Image:
    """Fully decode an image file to RGB with its EXIF orientation applied (first frame if animated).

    With `draft`, a JPEG may be decoded at a reduced scale (libjpeg's DCT scaling), never below
    draft(its stored width and height) on either side.
    """
    with warnings.catch_warnings():
        # A header that declares a huge image is refused before its pixels are allocated.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            img.seek(0)
            if draft is not None:
                img.draft(None, draft(img.size))  # a no-op for formats other than JPEG
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


RESIZE_MODES = ("crop", "squash")


def resized_size(width: int, height: int, size: int, resize: str) -> tuple[int, int]:
    """(width, height) after the first step of `resize`: crop scales the shorter side to `size`, squash
    makes both sides `size`.

    crop is torchvision's `Resize(size)` with an int size: the longer side is int(size * long / short)
    (truncated, as torchvision's `_compute_resized_output_size`).
    """
    if resize == "squash":
        return size, size
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def crop_offset(length: int, size: int) -> int:
    """Where a centred crop of `size` starts in `length`: torchvision's CenterCrop rounding, int(round(d / 2))."""
    return int(round((length - size) / 2.0))


def legacy_reducing_gap(resize: str) -> float | None:
    """The reduced JPEG decode of models and stores from before decode.reducing_gap: squash at 1x, crop none."""
    return 1.0 if resize == "squash" else None


def load_resized(path: str | os.PathLike, image_size: int, resize: str = "squash",
                 reducing_gap: float | None = None) -> np.ndarray:
    """Decode an image file to a uint8 RGB array of 3 x image_size x image_size (channels first).

    crop: the shorter side scaled to image_size, then the centre image_size x image_size, which is
    torchvision's `Resize(image_size)` + `CenterCrop(image_size)` on the decoded image (its eval
    geometry; tests/unit/test_images.py checks it on JPEGs of several aspect ratios). squash: both
    sides scaled to image_size, the pipeline's first geometry, kept bit for bit for models trained with it.

    `reducing_gap` (JPEG only; Pillow's `thumbnail` name and rule): the decoder may work at 1/2, 1/4
    or 1/8 scale (DCT scaling), never below reducing_gap x the resized size, before the resize.
    None decodes fully: torchvision's pixels exactly. 2.0 (Pillow's default) is several times
    faster from large photos at a mean difference of ~0.4 grey levels (docs/data.md).
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")

    def draft(size: tuple[int, int]) -> tuple[int, int]:
        width, height = resized_size(*size, image_size, resize)
        return math.ceil(width * reducing_gap), math.ceil(height * reducing_gap)

    image = load_image(path, draft=draft if reducing_gap else None)
    target = resized_size(*image.size, image_size, resize)
    if image.size != target:
        # Pillow's bilinear filter widens with the downscale factor (antialiased): torchvision's
        # Resize on a PIL image calls exactly this; on a tensor (antialias=True) it is within one level.
        image = image.resize(target, Image.Resampling.BILINEAR)
    if target != (image_size, image_size):
        left, top = crop_offset(target[0], image_size), crop_offset(target[1], image_size)
        image = image.crop((left, top, left + image_size, top + image_size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def center_crop(images: Any, size: int) -> Any:
    """The centred size x size window of a (..., S, S) array or tensor (a view: no copy); itself when S == size."""
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images
    top, left = crop_offset(height, size), crop_offset(width, size)
    return images[..., top:top + size, left:left + size]


@dataclass(frozen=True)
class Geometry:
    """How an image file becomes model input: resized to `stored_size` by `resize`, then centre-cropped
    to `input_size`.

    One definition for every stage: the decode stage stores the first step, train crops its batches
    with `center_crop`, and evaluate, export and predict call `load` on files.
    """

    stored_size: int
    input_size: int
    resize: str = "squash"
    reducing_gap: float | None = None

    def load(self, path: str | os.PathLike) -> np.ndarray:
        """uint8 3 x input_size x input_size model input of an image file."""
        pixels = load_resized(path, self.stored_size, self.resize, self.reducing_gap)
        return np.ascontiguousarray(center_crop(pixels, self.input_size))

    def metadata(self) -> dict[str, Any]:
        """The keys a model file carries: image_size (its input side), stored_size, resize and reducing_gap."""
        return {"image_size": self.input_size, "stored_size": self.stored_size, "resize": self.resize,
                "reducing_gap": self.reducing_gap}

    @classmethod
    def of(cls, metadata: Mapping[str, Any]) -> "Geometry":
        """The geometry recorded in a model's metadata (a dict, or ONNX's strings).

        Files written before stored_size and resize had only image_size (squash); before reducing_gap,
        its legacy_reducing_gap.
        """
        input_size = int(metadata["image_size"])
        resize = str(metadata.get("resize", "squash"))
        gap = metadata.get("reducing_gap", legacy_reducing_gap(resize))
        return cls(stored_size=int(metadata.get("stored_size", input_size)), input_size=input_size,
                   resize=resize, reducing_gap=None if gap in (None, "None") else float(gap))


def load_input_or_error(task: tuple[str, Geometry]) -> tuple[np.ndarray | None, str]:
    """(geometry.load(path), "") or (None, why it failed in one line): a worker task of predict."""
    path, geometry = task
    try:
        return geometry.load(path), ""
    except Exception as err:  # reported by the caller, with the file's name
        return None, describe_error(err)


def load_resized_or_error(task: tuple[str, int, str, float | None]) -> tuple[np.ndarray | None, str]:
    """(load_resized(*task), "") or (None, why it failed in one line): a worker task of decode."""
    try:
        return load_resized(*task), ""
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
