"""BatchRandomResizedCrop against torchvision's RandomResizedCrop: the box rule, its distribution, the resize."""

import math

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from imgclf.augment.crop import ATTEMPTS, BatchRandomResizedCrop
from tests.unit.augment_helpers import ks_same, one_thread, photos  # noqa: F401 (autouse fixture)

RATIO = (3 / 4, 4 / 3)


def reference_params(fraction, log_ratio, u, height, width, ratio):
    """torchvision's RandomResizedCrop.make_params loop, written out, fed the given uniform draws."""
    area = height * width
    for k in range(ATTEMPTS):
        target_area = area * float(fraction[k])
        aspect_ratio = math.exp(float(log_ratio[k]))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            return [int(u[0] * (height - h + 1)), int(u[1] * (width - w + 1)), h, w]
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return [(height - h) // 2, (width - w) // 2, h, w]


@pytest.mark.parametrize("height, width, scale", [(32, 32, (0.08, 1.0)), (24, 40, (0.08, 1.0)),
                                                  (40, 12, (0.6, 1.0)), (8, 30, (0.9, 1.0))])
def test_params_follow_torchvision_rule_draw_for_draw(height, width, scale):
    # (40, 12) and (8, 30) make most attempts fail: the fallback centre crops with the ratio clamped.
    n = 400
    crop = BatchRandomResizedCrop(16, scale, RATIO, torch.Generator().manual_seed(3))
    boxes = crop.params(n, height, width)
    # The same draws again, in params' order, for the written-out loop.
    g = torch.Generator().manual_seed(3)
    fraction = scale[0] + (scale[1] - scale[0]) * torch.rand(n, ATTEMPTS, generator=g, dtype=torch.float64)
    low, high = math.log(RATIO[0]), math.log(RATIO[1])
    log_ratio = low + (high - low) * torch.rand(n, ATTEMPTS, generator=g, dtype=torch.float64)
    u = torch.rand(n, 2, generator=g, dtype=torch.float64)
    expected = [reference_params(fraction[i], log_ratio[i], u[i], height, width, RATIO) for i in range(n)]
    assert boxes.dtype == torch.long and boxes.shape == (n, 4)
    assert boxes.tolist() == expected
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()


def test_box_distribution_matches_torchvision():
    # Two-sample KS tests on 1500 boxes each: area fraction, aspect and position against torchvision's own draws.
    height, width, n = 48, 64, 1500
    torch.manual_seed(0)
    ours = BatchRandomResizedCrop(32, (0.08, 1.0), RATIO, torch.Generator().manual_seed(0)).params(n, height, width)
    tv = v2.RandomResizedCrop(32, scale=(0.08, 1.0), ratio=RATIO)
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    theirs = torch.tensor([[p["top"], p["left"], p["height"], p["width"]]
                           for p in (tv.make_params([image]) for _ in range(n))])
    for name, f in {"area": lambda b: b[:, 2] * b[:, 3], "aspect": lambda b: b[:, 3] / b[:, 2],
                    "top": lambda b: b[:, 0], "left": lambda b: b[:, 1]}.items():
        assert ks_same(f(ours), f(theirs)), name
    # The test can fail: boxes of a wider scale range are told apart.
    wider = BatchRandomResizedCrop(32, (0.3, 1.0), RATIO, torch.Generator().manual_seed(0)).params(n, height, width)
    assert not ks_same(wider[:, 2] * wider[:, 3], theirs[:, 2] * theirs[:, 3])


@pytest.mark.parametrize("height, width, size", [(64, 64, 32), (72, 96, 48), (48, 40, 64), (20, 36, 24)])
def test_resize_matches_torchvision_resized_crop(height, width, size):
    # Measured: max |difference| 4.6e-5, mean 3e-6 grey levels (float32 rounding) at these sizes,
    # downscaling (antialiased) and upscaling; the bound leaves room for other summation orders (CUDA).
    images = photos(6, height, width)
    boxes = BatchRandomResizedCrop(size, (0.08, 1.0), RATIO, torch.Generator().manual_seed(5)).params(6, height, width)
    out = BatchRandomResizedCrop(size, (0.08, 1.0), RATIO, torch.Generator().manual_seed(5))(images)
    expected = torch.stack([TF.resized_crop(images[i], *boxes[i].tolist(), [size, size], antialias=True)
                            for i in range(6)])
    assert out.shape == (6, 3, size, size)
    assert (out - expected).abs().max() < 1e-3


def test_channels_last_in_channels_last_out_same_values():
    images = photos(4, 40, 40)
    plain = BatchRandomResizedCrop(24, (0.08, 1.0), RATIO, torch.Generator().manual_seed(1))(images)
    last = BatchRandomResizedCrop(24, (0.08, 1.0), RATIO, torch.Generator().manual_seed(1))(
        images.contiguous(memory_format=torch.channels_last))
    assert last.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(plain, last, atol=1e-3)


def test_off_returns_the_input_and_draws_nothing():
    g = torch.Generator().manual_seed(7)
    state = g.get_state()
    images = photos(2, 16, 16)
    assert BatchRandomResizedCrop(16, (1.0, 1.0), RATIO, g)(images) is images
    assert torch.equal(g.get_state(), state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_draws_same_crops_on_cuda():
    images = photos(8, 48, 40)
    cpu = BatchRandomResizedCrop(32, (0.08, 1.0), RATIO, torch.Generator().manual_seed(2))(images)
    cuda = BatchRandomResizedCrop(32, (0.08, 1.0), RATIO, torch.Generator().manual_seed(2))(images.cuda())
    assert (cuda.cpu() - cpu).abs().max() < 1e-2
