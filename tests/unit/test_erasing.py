"""BatchRandomErasing against torchvision's RandomErasing: the box rule, its distribution, p, the value."""

import math

import pytest
import torch
from torchvision.transforms import v2

from imgclf.augment.erasing import ATTEMPTS, BatchRandomErasing
from tests.unit.augment_helpers import ks_same, one_thread, photos  # noqa: F401 (autouse fixture)

SCALE, RATIO = (0.02, 0.33), (0.3, 3.3)


def normalised(n, height, width, seed=0):
    """Images as the training step sees them before erasing: normalised, about zero mean and unit spread."""
    return (photos(n, height, width, seed) - 128) / 64


def reference_params(coin, fraction, log_ratio, u, height, width, p):
    """torchvision's RandomErasing (coin, then make_params' loop), written out, fed the given uniform draws."""
    if not coin < p:
        return [None, None, 0, 0]
    area = height * width
    for k in range(ATTEMPTS):
        erase_area = area * float(fraction[k])
        aspect_ratio = math.exp(float(log_ratio[k]))
        h = int(round(math.sqrt(erase_area * aspect_ratio)))
        w = int(round(math.sqrt(erase_area / aspect_ratio)))
        if h < height and w < width:
            return [int(u[0] * (height - h + 1)), int(u[1] * (width - w + 1)), h, w]
    return [None, None, 0, 0]


@pytest.mark.parametrize("height, width", [(32, 32), (12, 40), (5, 6)])
def test_params_follow_torchvision_rule_draw_for_draw(height, width):
    # (5, 6) makes many attempts fail (boxes too tall or wide): those images are left as they are.
    n, p = 400, 0.7
    boxes = BatchRandomErasing(p, SCALE, RATIO, generator=torch.Generator().manual_seed(4)).params(n, height, width)
    g = torch.Generator().manual_seed(4)
    coin = torch.rand(n, generator=g)
    fraction = SCALE[0] + (SCALE[1] - SCALE[0]) * torch.rand(n, ATTEMPTS, generator=g, dtype=torch.float64)
    low, high = math.log(RATIO[0]), math.log(RATIO[1])
    log_ratio = low + (high - low) * torch.rand(n, ATTEMPTS, generator=g, dtype=torch.float64)
    u = torch.rand(n, 2, generator=g, dtype=torch.float64)
    expected = [reference_params(coin[i], fraction[i], log_ratio[i], u[i], height, width, p) for i in range(n)]
    erased = [e[2] > 0 or e[3] > 0 for e in expected]
    assert boxes[:, 2:].tolist() == [e[2:] for e in expected]
    assert [b[:2] for b, e in zip(boxes.tolist(), erased) if e] == [e[:2] for e, x in zip(expected, erased) if x]
    assert 0 < sum(erased) < n


def test_box_distribution_and_erased_fraction_match_torchvision():
    height, width, n, p = 40, 48, 2000, 0.4
    boxes = BatchRandomErasing(p, SCALE, RATIO, generator=torch.Generator().manual_seed(0)).params(n, height, width)
    erased = boxes[:, 2] > 0
    # Binomial(2000, 0.4): 800 +- 22 (sd); 4 sd either side. (No attempt fails at this size.)
    assert abs(int(erased.sum()) - n * p) < 4 * math.sqrt(n * p * (1 - p))
    torch.manual_seed(0)
    tv = v2.RandomErasing(p=1.0, scale=SCALE, ratio=RATIO, value=0)
    image = torch.zeros(3, height, width)
    theirs = torch.tensor([[q["i"], q["j"], q["h"], q["w"]] for q in (tv.make_params([image]) for _ in range(1000))])
    ours = boxes[erased]
    for column, name in enumerate(["top", "left", "h", "w"]):
        assert ks_same(ours[:, column], theirs[:, column]), name
    assert ks_same(ours[:, 2] * ours[:, 3], theirs[:, 2] * theirs[:, 3])
    # The test can fail: boxes of a narrower scale range are told apart.
    narrower = BatchRandomErasing(1.0, (0.06, 0.33), RATIO, generator=torch.Generator().manual_seed(0))
    other = narrower.params(n, height, width)
    assert not ks_same(other[:, 2] * other[:, 3], theirs[:, 2] * theirs[:, 3])


def test_erases_exactly_the_drawn_boxes_with_the_value():
    images = normalised(16, 20, 24)
    value = [0.5, -1.0, 2.0]
    boxes = BatchRandomErasing(0.5, generator=torch.Generator().manual_seed(1)).params(16, 20, 24)
    out = BatchRandomErasing(0.5, value=value, generator=torch.Generator().manual_seed(1))(images)
    expected = images.clone()
    for i, (top, left, h, w) in enumerate(boxes.tolist()):
        expected[i, :, top:top + h, left:left + w] = torch.tensor(value)[:, None, None]
    assert torch.equal(out, expected)
    assert 0 < (boxes[:, 2] > 0).sum() < 16
    # The same box through torchvision's erase kernel: same result.
    i = int((boxes[:, 2] > 0).nonzero()[0])
    top, left, h, w = boxes[i].tolist()
    assert torch.equal(out[i], v2.functional.erase(images[i], top, left, h, w, torch.tensor(value)[:, None, None]))


def test_default_value_is_zero_and_channels_last_stays():
    images = normalised(8, 16, 16).contiguous(memory_format=torch.channels_last)
    out = BatchRandomErasing(1.0, generator=torch.Generator().manual_seed(2))(images)
    assert out.is_contiguous(memory_format=torch.channels_last)
    changed = out != images
    assert changed.any() and (out[changed] == 0).all()


def test_p_zero_returns_the_input_and_draws_nothing():
    g = torch.Generator().manual_seed(7)
    state = g.get_state()
    images = normalised(2, 8, 8)
    assert BatchRandomErasing(0.0, generator=g)(images) is images
    assert torch.equal(g.get_state(), state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_draws_same_result_on_cuda():
    images = normalised(8, 24, 24)
    cpu = BatchRandomErasing(0.5, generator=torch.Generator().manual_seed(3))(images)
    cuda = BatchRandomErasing(0.5, generator=torch.Generator().manual_seed(3))(images.cuda())
    assert torch.equal(cuda.cpu(), cpu)
