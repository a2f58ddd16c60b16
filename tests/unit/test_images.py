"""Decoding to RGB and the shared transforms: every mode gives the same 3-channel tensors."""

import functools

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from imgclf.augment.affine import BatchRandomAffine
from imgclf.augment.config import AugmentConfig
from imgclf.images import Geometry, center_crop, load_image, load_resized, to_rgb
from imgclf.transforms import IMAGENET_MEAN, IMAGENET_STD, ModelInput


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


def test_load_resized_is_uint8_at_the_model_resolution(tmp_path):
    Image.new("RGB", (50, 30), (255, 0, 0)).save(tmp_path / "wide.png")
    pixels = load_resized(tmp_path / "wide.png", 24)
    assert pixels.shape == (3, 24, 24) and pixels.dtype == np.uint8
    assert pixels[:, 5, 5].tolist() == [255, 0, 0]


def test_resize_is_within_one_level_of_torchvisions_antialiased_resize(tmp_path):
    """Pillow's bilinear (no torch, so predict can run on ONNX Runtime) matches torchvision's to 1/255."""
    pixels = np.random.default_rng(0).integers(0, 256, (90, 70, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "noise.png")
    ours = torch.from_numpy(load_resized(tmp_path / "noise.png", 24)).int()
    theirs = v2.functional.resize(torch.from_numpy(pixels).permute(2, 0, 1), [24, 24], antialias=True).int()
    assert (ours - theirs).abs().max() <= 1


@functools.cache
def sample_photos() -> tuple:
    """scikit-learn's two sample photos (shipped with it), read once."""
    from sklearn.datasets import load_sample_images

    return tuple(load_sample_images().images)


def real_jpeg(tmp_path, width: int, height: int, index: int = 0):
    """A real photo (scikit-learn's sample images ship with it) cut to width x height, saved as a q85 JPEG."""
    photo = Image.fromarray(sample_photos()[index % 2])
    scale = max(width / photo.width, height / photo.height)
    photo = photo.resize((max(width, round(photo.width * scale)), max(height, round(photo.height * scale))))
    path = tmp_path / f"photo_{width}x{height}.jpg"
    photo.crop((0, 0, width, height)).save(path, quality=85)
    return path


# 4:3, 3:4, 16:9, square, 1:3 and one too small for the stored side (upscaled), as photos come.
SHAPES = [(500, 375), (375, 500), (640, 360), (300, 300), (200, 600), (150, 100)]


@pytest.mark.parametrize("width,height", SHAPES)
@pytest.mark.parametrize("stored,model_input", [(224, 224), (256, 224), (32, 32)])
def test_crop_geometry_is_torchvisions_resize_and_center_crop(tmp_path, width, height, stored, model_input):
    """Train (the stored image, centre-cropped), evaluate, export and predict (Geometry.load) see torchvision's
    eval pixels: Resize(stored) + CenterCrop(stored) + CenterCrop(input), on the PIL image and on the tensor."""
    path = real_jpeg(tmp_path, width, height, index=width)
    ours = torch.from_numpy(Geometry(stored, model_input, "crop").load(path)).int()
    stored_then_cropped = torch.from_numpy(np.ascontiguousarray(
        center_crop(load_resized(path, stored, "crop"), model_input))).int()
    assert torch.equal(ours, stored_then_cropped)  # train's path and the file path: the same pixels
    with Image.open(path) as image:
        pil = image.convert("RGB")
    pipeline = v2.Compose([v2.Resize(stored), v2.CenterCrop(stored), v2.CenterCrop(model_input)])
    theirs_pil = torch.from_numpy(np.array(pipeline(pil))).permute(2, 0, 1).int()
    theirs_tensor = pipeline(v2.functional.pil_to_tensor(pil)).int()  # antialiased bilinear on a uint8 tensor
    assert ours.shape == (3, model_input, model_input)
    assert (ours - theirs_pil).abs().max() <= 1
    assert (ours - theirs_tensor).abs().max() <= 1
    if (stored, model_input) == (256, 224) and (width, height) != (150, 100):
        # one CenterCrop(224) after Resize(256), the torchvision recipe's own wording: the same window here
        direct = v2.Compose([v2.Resize(stored), v2.CenterCrop(model_input)])(pil)
        assert (ours - torch.from_numpy(np.array(direct)).permute(2, 0, 1).int()).abs().max() <= 1


def test_squash_keeps_the_pipelines_earlier_pixels(tmp_path):
    """squash is today's geometry bit for bit (models trained with it see what they saw), and loses the aspect."""
    path = real_jpeg(tmp_path, 500, 375)
    squashed = load_resized(path, 32, "squash", reducing_gap=1.0)  # what squash always did: drafted to 1x
    assert np.array_equal(Geometry.of({"image_size": 32}).load(path), squashed)  # a model.pt without geometry keys
    assert np.array_equal(Geometry.of({"image_size": 32, "stored_size": 32, "resize": "crop"}).load(path),
                          load_resized(path, 32, "crop"))  # crop from before reducing_gap: a full decode
    assert not np.array_equal(squashed, load_resized(path, 32, "crop"))


def test_reducing_gap_decodes_large_jpegs_smaller_and_stays_close(tmp_path):
    """Pillow's thumbnail rule: the decoder scales down, never below 2x the resized size; pixels stay close."""
    path = real_jpeg(tmp_path, 1024, 768)
    # 64 px crop: resized 85 x 64, so the decoder may go down to 170 x 128: 1/4 scale (256 x 192), not 1/8.
    wanted = []
    assert load_image(path, draft=lambda size: wanted.append(size) or (170, 128)).size == (256, 192)
    assert wanted == [(1024, 768)]
    drafted = load_resized(path, 64, "crop", reducing_gap=2.0).astype(int)
    full = load_resized(path, 64, "crop").astype(int)
    difference = np.abs(drafted - full)
    assert 0 < difference.mean() < 1.0 and difference.max() <= 12  # grey levels, out of 255
    assert np.array_equal(Geometry(64, 64, "crop", 2.0).load(path), drafted.astype(np.uint8))
    # Too small to halve at 2x (768 < 2 x 2 x 224): decoded fully, the same pixels as without the gap.
    assert np.array_equal(load_resized(path, 224, "crop", reducing_gap=2.0), load_resized(path, 224, "crop"))
    # The model's metadata carries it, as a dict (model.pt) and as ONNX's strings.
    for meta in (Geometry(64, 64, "crop", 2.0).metadata(),
                 {k: str(v) for k, v in Geometry(64, 64, "crop", 2.0).metadata().items()}):
        assert Geometry.of(meta) == Geometry(64, 64, "crop", 2.0)
    assert Geometry.of({k: str(v) for k, v in Geometry(64, 64, "crop").metadata().items()}).reducing_gap is None


def test_model_input_normalises_on_the_device():
    white = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    prepare = ModelInput(IMAGENET_MEAN, IMAGENET_STD, torch.device("cpu"))
    out = prepare(white)
    expected = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    assert out.dtype == torch.float32 and torch.allclose(out[0, :, 0, 0], expected, atol=1e-5)
    assert torch.allclose(prepare.fill().flatten(), expected, atol=1e-5)  # the background colour


def affine(generator_seed=0, **changes):
    cfg = AugmentConfig(**{"hflip": False, "rotation": 0, "translate": 0, "scale": 0, "crop_scale": 1.0,
                           "crop_ratio": 4 / 3, "policy": "none", "erasing": 0.0, **changes})
    fill = torch.full((1, 3, 1, 1), 9.0)
    return BatchRandomAffine(cfg, fill, torch.Generator().manual_seed(generator_seed))


def test_batch_affine_off_is_the_identity():
    images = torch.randn(3, 3, 8, 8)
    assert not affine().active and affine()(images) is images
    # Zero-width ranges: the grid hits pixel centres exactly, so the images come back unchanged.
    same = affine(rotation=1e-12)(images)
    assert torch.allclose(same, images, atol=1e-5)


def test_batch_affine_flips_some_images_exactly():
    images = torch.randn(64, 3, 8, 8)
    out = affine(hflip=True)(images)
    flipped = [torch.allclose(o, i.flip(-1), atol=1e-5) for o, i in zip(out, images)]
    unchanged = [torch.allclose(o, i, atol=1e-5) for o, i in zip(out, images)]
    assert all(f or u for f, u in zip(flipped, unchanged)) and 16 < sum(flipped) < 48


def test_batch_affine_draws_per_image_and_pads_with_the_fill():
    images = torch.zeros(32, 3, 16, 16)
    out = affine(rotation=30, translate=0.2, scale=0.2)(images)
    padded = (out > 0.01).flatten(1).sum(1)  # pixels that came (partly) from outside the image
    assert padded.unique().numel() > 10  # every image got its own rotation, shift and zoom
    assert torch.allclose(out.amax(), torch.tensor(9.0))  # fully uncovered pixels are the fill colour
    again = affine(rotation=30, translate=0.2, scale=0.2)(images)
    assert torch.equal(out, again)  # same seed, same draws


def test_batch_affine_matches_torchvision_for_a_pure_shift():
    image = torch.rand(1, 3, 10, 10)
    aug = affine(translate=0.2)
    out = aug(image)
    # Recover the drawn shift from the generator and compare with torchvision's own affine.
    gen = torch.Generator().manual_seed(0)
    torch.rand(1, generator=gen, dtype=torch.float64)  # angle draw
    torch.rand(1, generator=gen, dtype=torch.float64)  # scale draw
    dx = float((-0.2 + 0.4 * torch.rand(1, generator=gen, dtype=torch.float64)) * 10)
    dy = float((-0.2 + 0.4 * torch.rand(1, generator=gen, dtype=torch.float64)) * 10)
    if abs(dx - round(dx)) < 1e-6 and abs(dy - round(dy)) < 1e-6:
        pytest.skip("integer shift")
    expected = v2.functional.affine(image - 9.0, angle=0.0, translate=[dx, dy], scale=1.0, shear=[0.0, 0.0],
                                    interpolation=v2.InterpolationMode.BILINEAR) + 9.0
    assert torch.allclose(out[:, :, 3:7, 3:7], expected[:, :, 3:7, 3:7], atol=1e-4)


def test_batch_affine_keeps_channels_last_and_gives_the_same_values():
    # The CUDA path feeds NHWC batches; the draws and the result must not depend on the layout.
    images = torch.rand(8, 3, 12, 12)
    plain = affine(rotation=20, translate=0.1, scale=0.1, hflip=True)(images)
    channels_last = images.contiguous(memory_format=torch.channels_last)
    nhwc = affine(rotation=20, translate=0.1, scale=0.1, hflip=True)(channels_last)
    assert nhwc.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(plain, nhwc, atol=1e-5)
