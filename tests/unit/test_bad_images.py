"""Adversarial images: each bad kind is built here and must get its specific outcome."""

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from imgclf.batches import ImageListDataset
from imgclf.decode import DecodeConfig, decode_split
from imgclf.errors import DataError
from imgclf.images import Geometry, load_image
from imgclf.predict import image_batches
from imgclf.split import image_problem, split_image_folder
from imgclf.store.reader import StoredSplit
from imgclf.template import PARAMS
from tests.conftest import write_png

ROOT = Path(__file__).resolve().parents[2]


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height pixels but holds one row: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * (1 + 3 * width))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def photo(size=(64, 48), seed=0) -> Image.Image:
    """A random RGB picture."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    """The bytes of `image` saved in `fmt`."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


# --- files that must be rejected, each with its reason ---

def test_zero_byte_file(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    assert image_problem(tmp_path / "a.jpg") == "empty file"


def test_html_saved_as_jpg(tmp_path):
    (tmp_path / "a.jpg").write_text("<!doctype html><html><body>404</body></html>")
    assert image_problem(tmp_path / "a.jpg").startswith("UnidentifiedImageError: cannot identify image file")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_halfway(tmp_path, fmt):
    data = encoded(photo((256, 256)), fmt)
    path = tmp_path / f"half.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    if fmt == "JPEG":
        with Image.open(path) as img:
            img.verify()  # the check most tutorials use passes on a truncated JPEG ...
    assert "truncated" in image_problem(path).lower()  # ... a full decode does not


@pytest.mark.parametrize("progressive", [False, True])
def test_validation_catches_every_truncation_a_full_decode_catches(tmp_path, progressive):
    """Validation decodes JPEGs at 1/8 scale; cut anywhere, it must fail exactly where a full decode fails."""
    data = encoded(photo((320, 240)), "JPEG", progressive=progressive)
    for cut in [len(data) * k // 30 for k in range(1, 30)] + [len(data) - 10, len(data) - 2]:
        path = tmp_path / f"cut{cut}.jpg"
        path.write_bytes(data[:cut])
        try:
            load_image(path)
            full_fails = False
        except Exception:
            full_fails = True
        assert (image_problem(path) is not None) == full_fails, cut
        assert full_fails  # every cut here truncates the entropy-coded data


def test_decompression_bomb_over_twice_the_limit(tmp_path):
    path = png_header_only(tmp_path / "bomb.png", 100_000, 100_000)  # 30 GB if it were decoded
    assert path.stat().st_size < 1_000
    assert image_problem(path).startswith("DecompressionBombError")


def test_decompression_bomb_warning_is_an_error(tmp_path):
    path = png_header_only(tmp_path / "big.png", 10_000, 10_000)  # 1e8 pixels: over 1x, under 2x
    assert image_problem(path).startswith("DecompressionBombWarning")


def test_split_peak_memory_on_bombs_stays_bounded(tmp_path, image_folder):
    for i in range(4):
        png_header_only(image_folder / "a" / f"bomb{i}.png", 100_000, 100_000)
        png_header_only(image_folder / "b" / f"big{i}.png", 10_000, 10_000)
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, sys.executable, str(ROOT / "stages/split.py"),
                          "--params", str(PARAMS), "--raw", str(image_folder),
                          "--out", str(tmp_path / "split")], capture_output=True, text=True, check=True,
                         cwd=tmp_path)  # its other outputs (counts, validation cache) go to their default paths
    peak_mib = int(out.stdout) / 1024
    print(f"split peak RSS with 8 bomb headers: {peak_mib:.0f} MiB")
    assert peak_mib < 512  # one bomb decoded would need 28,610 MiB; measured here: 76 MiB
    rejected = pd.read_csv(tmp_path / "split" / "rejected.csv")
    assert len(rejected) == 8 and rejected["reason"].str.startswith("DecompressionBomb").all()


# --- files that must be accepted and decoded the same way everywhere ---

def mode_images():
    """(name, file bytes) for every mode the pipeline must turn into RGB."""
    rgb = photo((40, 30), seed=1)
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    grey16 = Image.fromarray((np.arange(30 * 40).reshape(30, 40) * 50).astype(np.uint16))
    return [
        ("cmyk.jpg", encoded(rgb.convert("CMYK"), "JPEG")),
        ("palette_transparent.png", encoded(palette, "PNG", transparency=0)),
        ("la.png", encoded(rgb.convert("LA"), "PNG")),
        ("rgba.png", encoded(rgb.convert("RGBA"), "PNG")),
        ("grey16.png", encoded(grey16, "PNG")),
        ("bilevel.png", encoded(rgb.convert("1"), "PNG")),
        ("png_named.jpg", encoded(rgb, "PNG")),  # the format comes from the content, not the name
        ("tall.png", encoded(photo((1, 5000), seed=2), "PNG")),
        ("wide.jpg", encoded(photo((5000, 1), seed=3), "JPEG")),
    ]


@pytest.mark.parametrize("name,data", mode_images(), ids=[n for n, _ in mode_images()])
def test_every_mode_gives_the_same_rgb_tensor_in_train_evaluate_and_predict(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    assert image_problem(path) is None
    assert load_image(path).mode == "RGB"
    for resize in ("crop", "squash"):
        geometry = Geometry(24, 24, resize)
        evaluate_tensor, _ = ImageListDataset([str(path)], [0], geometry)[0]
        predict_batch, errors = next(image_batches([str(path)], geometry, batch_size=4))  # .pt and .onnx alike
        predict_tensor, error = torch.from_numpy(predict_batch[0]), errors[0]
        (tmp_path / "split").mkdir(exist_ok=True)
        (tmp_path / "split/train.csv").write_text(f"path,label\n{path},a\n")
        (tmp_path / "split/val.csv").write_text("path,label\n")
        decode_split(tmp_path / "split", tmp_path / resize, DecodeConfig(24, resize, "raw", 90, None), workers=1)
        train_tensor = torch.from_numpy(StoredSplit(tmp_path / resize, "train", [str(path)])[[0]][0])  # train reads
        assert error == "" and evaluate_tensor.shape == (3, 24, 24) and evaluate_tensor.dtype == torch.uint8
        assert torch.equal(evaluate_tensor, predict_tensor) and torch.equal(evaluate_tensor, train_tensor)


def test_16bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16)
    (tmp_path / "g.png").write_bytes(encoded(Image.fromarray(values), "PNG"))
    pixels = np.asarray(load_image(tmp_path / "g.png"))[0, :, 0]
    assert pixels.tolist() == [0, 64, 128, 255]


def test_alpha_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (200, 0, 0, 0))
    rgba.putpixel((0, 0), (200, 0, 0, 255))
    (tmp_path / "a.png").write_bytes(encoded(rgba, "PNG"))
    image = load_image(tmp_path / "a.png")
    assert image.getpixel((0, 0)) == (200, 0, 0) and image.getpixel((1, 1)) == (255, 255, 255)


def test_exif_orientation_same_in_train_and_predict(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 270 on display
    (tmp_path / "o.jpg").write_bytes(encoded(photo((60, 20)), "JPEG", exif=exif))
    assert load_image(tmp_path / "o.jpg").size == (20, 60)
    geometry = Geometry(16, 16, "crop")
    predict_batch, _ = next(image_batches([str(tmp_path / "o.jpg")], geometry, batch_size=1))
    assert torch.equal(ImageListDataset([str(tmp_path / "o.jpg")], [0], geometry)[0][0],
                       torch.from_numpy(predict_batch[0]))


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    assert load_image(tmp_path / "anim.gif").getpixel((4, 4)) == (255, 0, 0)


# --- folder-level cases ---

def test_duplicates_stay_in_one_split_and_conflicts_are_reported(tmp_path, image_folder):
    source = image_folder / "a" / "a00.png"
    for i in range(3):
        (image_folder / "a" / f"copy{i}.png").write_bytes(source.read_bytes())
    (image_folder / "b" / "stray.png").write_bytes((image_folder / "c" / "c00.png").read_bytes())
    result = split_image_folder(image_folder, 0.15, 0.15, seed=0)
    where = {path: name for name, rows in result.parts.items() for path, _ in rows}
    copies = [str((image_folder / "a" / n).as_posix()) for n in ("a00.png", "copy0.png", "copy1.png", "copy2.png")]
    assert len({where[p] for p in copies}) == 1  # identical files never straddle train and test
    reasons = dict(result.rejected)
    stray, original = (image_folder / "b" / "stray.png").as_posix(), (image_folder / "c" / "c00.png").as_posix()
    assert reasons[stray] == f"label conflict: identical to {original} in class 'c'"
    assert reasons[original] == f"label conflict: identical to {stray} in class 'b'"
    assert stray not in where and original not in where


def test_system_folders_never_become_classes(tmp_path, image_folder):
    for folder in (".git", ".ipynb_checkpoints", "__MACOSX"):
        write_png(image_folder / folder / "x.png", 7)
    (image_folder / "a" / "scan.tga.bak").write_text("x")
    result = split_image_folder(image_folder, 0.15, 0.15, seed=0)
    assert result.classes == ["a", "b", "c"]
    reasons = [reason for _, reason in result.rejected]
    assert reasons.count("hidden or system folder, skipped") == 3
    assert reasons.count("unsupported file extension") == 1


def test_class_with_too_few_valid_images(tmp_path, image_folder):
    for path in list((image_folder / "c").iterdir())[2:]:
        path.write_bytes(b"")
    with pytest.raises(DataError, match="class 'c' has 2 valid distinct image"):
        split_image_folder(image_folder, 0.15, 0.15, seed=0)
