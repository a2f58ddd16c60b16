"""The distributed samplers, with explicit world size and rank (no process group needed)."""

import pytest
import torch

from imgclf.distributed import DistributedWeightedSampler, World, shard

WEIGHTS = [5.0] * 6 + [1.0] * 25 + [0.5] * 10  # three "classes" with different per-sample weights


def shards(world_size, epoch, weights=WEIGHTS, n=41, seed=7):
    """Each rank's indices for one epoch."""
    out = []
    for rank in range(world_size):
        sampler = DistributedWeightedSampler(weights, n, world_size=world_size, rank=rank, seed=seed)
        sampler.set_epoch(epoch)
        out.append(list(sampler))
    return out


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("weights", [WEIGHTS, None], ids=["weighted", "shuffle"])
def test_shards_are_disjoint_equal_and_together_the_one_process_draw(world_size, weights):
    for epoch in range(4):
        parts = shards(world_size, epoch, weights)
        reference = shards(1, epoch, weights)[0]  # world size 1: exactly the whole draw, no padding
        assert len(reference) == 41 and len({len(p) for p in parts}) == 1  # as many batches on every rank
        interleaved = [parts[k % world_size][k // world_size] for k in range(len(parts[0]) * world_size)]
        padding = -41 % world_size
        assert interleaved == reference + reference[:padding]  # the draw, then at most world_size - 1 repeats
        if weights is None:
            assert sorted(reference) == list(range(41))  # a plain shuffle: every image once


def test_epochs_draw_differently_and_the_seed_decides():
    assert shards(2, 0) != shards(2, 1)
    assert shards(2, 3) == shards(2, 3)
    assert shards(2, 0, seed=8) != shards(2, 0, seed=7)


def test_drawn_class_frequencies_follow_the_weights():
    """Over 300 epochs x 41 draws, each class's share is its weight share, within 4 standard errors."""
    classes = [0] * 6 + [1] * 25 + [2] * 10
    mass = torch.tensor([sum(w for w, c in zip(WEIGHTS, classes) if c == k) for k in range(3)])
    expected = mass / mass.sum()
    counts = torch.zeros(3)
    for epoch in range(300):
        for part in shards(3, epoch):
            for index in part:
                counts[classes[index]] += 1
    shares = counts / counts.sum()
    error = (expected * (1 - expected) / counts.sum()).sqrt()
    assert ((shares - expected).abs() <= 4 * error + 0.003).all(), (shares, expected)


def test_validation_shards_cover_every_sample_once():
    for world_size in range(1, 5):
        positions = [shard(10, World(rank, world_size)) for rank in range(world_size)]
        assert sorted(p for part in positions for p in part) == list(range(10))


def test_a_rank_outside_the_world_is_an_error():
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        DistributedWeightedSampler(WEIGHTS, 41, world_size=2, rank=2)
