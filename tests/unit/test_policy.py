"""BatchAugmentPolicy against torchvision: every op on the same uint8 images, and each policy's draws."""

from collections import Counter

import pytest
import torch
from torchvision.transforms import v2

from imgclf.augment.policy import CHOSEN, INDEX, OPS, BatchAugmentPolicy, magnitude_table
from tests.unit.augment_helpers import chi_square_fits, one_thread, photos  # noqa: F401 (autouse fixture)

TORCHVISION = {"trivial_wide": v2.TrivialAugmentWide, "randaugment": v2.RandAugment, "autoaugment": v2.AutoAugment}
BINS = {"trivial_wide": 31, "randaugment": 31, "autoaugment": 10}


def forced_magnitudes(name: str, height: int, width: int) -> list[float]:
    """Six magnitudes of an op: TrivialAugmentWide's bins 5, 12, 20 (90 degrees for Rotate), 30 and
    RandAugment's bin 9, half of them negated (the signed ops only, as torchvision negates only those)."""
    wide, rand = magnitude_table("trivial_wide", 31, height, width), magnitude_table("randaugment", 31, height, width)
    k = INDEX[name]
    values = [wide[k, 5], wide[k, 12], wide[k, 20], wide[k, 30], rand[k, 9], rand[k, 9]]
    signed = TORCHVISION["trivial_wide"]._AUGMENTATION_SPACE.get(name, (None, False))[1]
    return [float(v) * (-1 if signed and i % 2 else 1) for i, v in enumerate(values)]


@pytest.mark.parametrize("height, width, fill", [(32, 32, [124.0, 116.0, 104.0]), (24, 40, [0.0, 0.0, 0.0])])
def test_every_op_matches_torchvision_on_uint8_images(height, width, fill):
    # One apply() call with every op at six magnitudes (both signs), images grouped by op inside, against
    # torchvision's own _apply_image_or_video_transform (what its three policies call) image by image.
    # Measured: every op is exact (geometric ones included: the same float32 grid, so nearest sampling
    # picks the same pixels, and fill) except Color, where ~0.05% of pixels are 1 grey level off:
    # torch's add_(other, alpha) is a fused multiply-add, the per-image blend multiplies and adds apart.
    ops, magnitudes = [], []
    for name in OPS:
        ops += [name] * 6
        magnitudes += forced_magnitudes(name, height, width)
    images = photos(len(ops), height, width)
    images[ops.index("AutoContrast")] = 77.0  # flat channels: autocontrast and equalize leave them
    images[ops.index("Equalize")] = 77.0
    policy = BatchAugmentPolicy("trivial_wide", fill, torch.Generator())
    ours = policy.apply(images, ops, torch.tensor(magnitudes, dtype=torch.float64))
    reference = v2.TrivialAugmentWide(fill=fill)
    uint8 = images.to(torch.uint8)
    for i, (name, magnitude) in enumerate(zip(ops, magnitudes)):
        expected = reference._apply_image_or_video_transform(uint8[i], name, magnitude, interpolation="nearest",
                                                             fill=reference._fill)
        difference = (ours[i] - expected.float()).abs()
        if name == "Color":
            assert difference.max() <= 1 and (difference > 0).float().mean() < 0.005, (name, magnitude)
        else:
            assert difference.max() == 0, (name, magnitude, difference.max())
    assert ours.shape == images.shape and torch.equal(ours, ours.round()) and ours.min() >= 0 and ours.max() <= 255
    # The tests can fail: a geometric op with the other sense, and a shear about the centre, differ.
    rotated = policy.apply(images[:1], ["Rotate"], torch.tensor([-30.0]))
    assert not torch.equal(rotated[0], v2.functional.rotate(uint8[0], 30.0).float())


def options(policy: str, name: str, index: int | None, height: int, width: int) -> list[tuple[tuple, float]]:
    """[((op, signed magnitude), probability)] of one op of torchvision's policy at a magnitude bin (None: uniform)."""
    fn, signed = TORCHVISION[policy]._AUGMENTATION_SPACE[name]
    values = fn(BINS[policy], height, width)
    if values is None:
        return [((name, 0.0), 1.0)]
    chosen = range(BINS[policy]) if index is None else [index]
    out = []
    for b in chosen:
        magnitude = float(values[b])
        for sign in (1, -1) if signed else (1,):
            out.append(((name, sign * magnitude + 0.0), 1 / len(chosen) / (2 if signed else 1)))  # -0.0 -> 0.0
    return out


def expected_steps(policy: str, height: int, width: int) -> Counter:
    """{(op, magnitude, ...) per step: probability} from torchvision's definitions (AutoAugment: both steps)."""
    out = Counter()
    if policy == "autoaugment":
        subs = TORCHVISION[policy]()._policies
        for sub in subs:
            steps = [[(("Identity", 0.0), 1 - p)] + [(key, p * q) for key, q in options(policy, name, index,
                                                                                         height, width)]
                     for name, p, index in sub]
            for first, p_first in steps[0]:
                for second, p_second in steps[1]:
                    out[first + second] += p_first * p_second / len(subs)
        return out
    space = TORCHVISION[policy]._AUGMENTATION_SPACE
    for name in space:
        for key, q in options(policy, name, 9 if policy == "randaugment" else None, height, width):
            out[key] += q / len(space)
    return out


def observed(steps: list[tuple[torch.Tensor, torch.Tensor]], which: list[int]) -> Counter:
    """Counts of (op, magnitude, ...) over the chosen steps of draw()'s output."""
    columns = []
    for k in which:
        ops, magnitudes = steps[k]
        columns.append(list(zip([OPS[o] for o in ops.tolist()], [m + 0.0 for m in magnitudes.tolist()])))
    return Counter(sum(row, ()) for row in zip(*columns))


def fits(counts: Counter, expected: Counter, n: int) -> bool:
    """Chi-square of observed counts against expected probabilities (every observed key must be expected)."""
    assert set(counts) <= {k for k, p in expected.items() if p > 0}, set(counts) - set(expected)
    keys = [k for k, p in expected.items() if p > 0]
    return chi_square_fits(torch.tensor([counts[k] for k in keys]), torch.tensor([expected[k] * n for k in keys]))


@pytest.mark.parametrize("policy", ["trivial_wide", "randaugment", "autoaugment"])
def test_magnitude_tables_are_torchvisions(policy):
    height, width = 24, 40
    table = magnitude_table(policy, BINS[policy], height, width)
    space = TORCHVISION[policy]._AUGMENTATION_SPACE
    if policy != "autoaugment":
        assert tuple(space) == OPS[:CHOSEN]  # the ops chosen from, in torchvision's order
    for name, (fn, _) in space.items():
        values = fn(BINS[policy], height, width)
        expected = torch.zeros(BINS[policy], dtype=torch.float64) if values is None else values.double()
        assert torch.equal(table[INDEX[name]], expected), name


def test_trivial_wide_draws_one_op_of_14_and_a_uniform_bin_with_a_random_sign():
    # 28,000 images: each (op, signed magnitude) has 1/14 (magnitude-free ops), 1/14/31 (unsigned) or
    # 1/14/62 (signed) of them, 15 or more each.
    n, height, width = 28000, 32, 32
    steps = BatchAugmentPolicy("trivial_wide", [0, 0, 0], torch.Generator().manual_seed(0)).draw(n, height, width)
    assert len(steps) == 1
    expected = expected_steps("trivial_wide", height, width)
    assert fits(observed(steps, [0]), expected, n)
    # The test can fail: op counts against one op twice as likely.
    ops = Counter(OPS[o] for o in steps[0][0].tolist())
    skewed = Counter({name: (2 if name == "Rotate" else 1) / 15 for name in OPS[:CHOSEN]})
    assert not fits(ops, skewed, n)


def test_randaugment_applies_two_ops_at_bin_9_with_random_signs():
    n, height, width = 12000, 24, 40
    steps = BatchAugmentPolicy("randaugment", [0, 0, 0], torch.Generator().manual_seed(1)).draw(n, height, width)
    assert len(steps) == 2
    expected = expected_steps("randaugment", height, width)  # TranslateX/Y at bin 9 depend on width/height
    for step in range(2):
        assert fits(observed(steps, [step]), expected, n)
    # The two steps are drawn independently: their joint counts fit the product.
    joint = Counter({a + b: p * q for a, p in expected.items() for b, q in expected.items()})
    pairs = observed(steps, [0, 1])
    by_op = Counter()
    for key, count in pairs.items():
        by_op[key[0], key[2]] += count
    ops = Counter()
    for key, p in joint.items():
        ops[key[0], key[2]] += p
    assert fits(by_op, ops, n)


def test_autoaugment_draws_imagenet_sub_policies_with_their_probabilities():
    # Joint (first op, magnitude, second op, magnitude) against torchvision's 25 ImageNet sub-policies:
    # 24,000 images, the rarest outcome expected 0.24% (about 58 times).
    n, height, width = 24000, 32, 32
    steps = BatchAugmentPolicy("autoaugment", [0, 0, 0], torch.Generator().manual_seed(2)).draw(n, height, width)
    assert len(steps) == 2
    expected = expected_steps("autoaugment", height, width)
    counts = observed(steps, [0, 1])
    assert fits(counts, expected, n)
    # The test can fail: every step applied with probability 0.5 instead of its own.
    flat = Counter()
    for sub in TORCHVISION["autoaugment"]()._policies:
        for first in [("Identity", 0.0)] + [k for k, _ in options("autoaugment", sub[0][0], sub[0][2], 32, 32)]:
            for second in [("Identity", 0.0)] + [k for k, _ in options("autoaugment", sub[1][0], sub[1][2], 32, 32)]:
                flat[first + second] += 1
    total = sum(flat.values())
    assert not fits(counts, Counter({k: v / total for k, v in flat.items()}), n)


def test_call_applies_the_drawn_steps_in_turn():
    images = photos(12, 20, 20)
    policy = BatchAugmentPolicy("randaugment", [10, 20, 30], torch.Generator().manual_seed(3))
    out = policy(images)
    again = BatchAugmentPolicy("randaugment", [10, 20, 30], torch.Generator().manual_seed(3))
    steps = again.draw(12, 20, 20)
    expected = again.apply(again.apply(images, *steps[0]), *steps[1])
    assert torch.equal(out, expected) and not torch.equal(out, images)


def test_channels_last_in_channels_last_out_same_values():
    images = photos(16, 20, 20)
    plain = BatchAugmentPolicy("trivial_wide", [0, 0, 0], torch.Generator().manual_seed(4))(images)
    last = BatchAugmentPolicy("trivial_wide", [0, 0, 0], torch.Generator().manual_seed(4))(
        images.contiguous(memory_format=torch.channels_last))
    assert last.is_contiguous(memory_format=torch.channels_last)
    assert (plain - last).abs().max() <= 1


def test_none_returns_the_input_and_draws_nothing():
    g = torch.Generator().manual_seed(7)
    state = g.get_state()
    images = photos(2, 8, 8)
    assert BatchAugmentPolicy("none", [0, 0, 0], g)(images) is images
    assert torch.equal(g.get_state(), state)
    with pytest.raises(ValueError, match="policy must be one of"):
        BatchAugmentPolicy("augmix", [0, 0, 0], g)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("policy", ["trivial_wide", "randaugment", "autoaugment"])
def test_same_draws_same_result_on_cuda(policy):
    images = photos(64, 32, 32)
    cpu = BatchAugmentPolicy(policy, [124, 116, 104], torch.Generator().manual_seed(5))(images)
    cuda = BatchAugmentPolicy(policy, [124, 116, 104], torch.Generator().manual_seed(5))(images.cuda())
    assert (cuda.cpu() - cpu).abs().max() <= 1
