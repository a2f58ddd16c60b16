"""Decoding to RGB and the shared transforms: every mode gives the same 3-channel tensors."""

import numpy as np
import torch
from PIL import Image

from imgclf.config import AugmentConfig
from imgclf.data import load_image, to_rgb
from imgclf.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform


def test_modes_become_rgb():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white background
    grey16 = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    assert to_rgb(grey16).getpixel((0, 0)) == (128, 128, 128)  # scaled, not clipped to white
    for mode in ("L", "1", "CMYK", "P", "LA"):
        assert to_rgb(Image.new(mode, (4, 4))).mode == "RGB"


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").size == (20, 40)


def test_eval_transform_shape_and_normalisation():
    tensor = eval_transform(24, IMAGENET_MEAN, IMAGENET_STD)(Image.new("RGB", (50, 30), (255, 255, 255)))
    assert tensor.shape == (3, 24, 24) and tensor.dtype == torch.float32
    expected = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert torch.allclose(tensor[:, 0, 0], torch.tensor(expected), atol=1e-5)


def test_train_transform_without_augmentation_equals_eval():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8))
    off = AugmentConfig(hflip=False, rotation=0, translate=0, scale=0)
    assert torch.equal(train_transform(16, IMAGENET_MEAN, IMAGENET_STD, off)(image),
                       eval_transform(16, IMAGENET_MEAN, IMAGENET_STD)(image))
