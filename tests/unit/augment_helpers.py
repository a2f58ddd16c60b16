"""What the batched-augmentation tests share: photo-like images, two distribution tests without scipy, one thread."""

import math

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread (autouse where imported): on a loaded 2-core machine every OpenMP region of 2 threads can
    wait ~50 ms."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def photos(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Photo-like float images in pixel units: smooth colour gradients and waves plus noise, integer valued."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.linspace(0, 1, height)[:, None], torch.linspace(0, 1, width)[None]
    base = torch.stack([120 + 100 * torch.sin(6 * x + 3 * y), 128 + 90 * torch.cos(5 * y - 2 * x), 60 + 150 * x * y])
    waves = 40 * torch.sin(torch.rand(n, 3, 1, 1, generator=g) * 20 * x + torch.rand(n, 3, 1, 1, generator=g) * 15 * y)
    noise = 8 * torch.randn(n, 3, height, width, generator=g)
    return (base + waves + noise).clamp(0, 255).round()


def ks_same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Two-sample Kolmogorov-Smirnov test: False when the samples differ at the 0.1% level."""
    values = torch.cat([a, b]).double().unique()
    cdf_a = torch.searchsorted(a.double().sort().values, values, right=True) / len(a)
    cdf_b = torch.searchsorted(b.double().sort().values, values, right=True) / len(b)
    critical = math.sqrt(-math.log(0.001 / 2) / 2) * math.sqrt((len(a) + len(b)) / (len(a) * len(b)))
    return bool((cdf_a - cdf_b).abs().max() < critical)


def chi_square_fits(counts: torch.Tensor, expected: torch.Tensor) -> bool:
    """Pearson's chi-square goodness of fit: False when counts differ from expected at the 0.1% level."""
    keep = expected > 0
    assert counts[~keep].sum() == 0, "counts where none are expected"
    counts, expected = counts[keep].double(), expected[keep].double()
    statistic = float(((counts - expected) ** 2 / expected).sum())
    df = len(counts) - 1
    if df == 0:
        return True
    # Wilson-Hilferty: the chi-square quantile from the normal one (z = 3.09 for 0.1%), good to a few %.
    critical = df * (1 - 2 / (9 * df) + 3.09 * math.sqrt(2 / (9 * df))) ** 3
    return statistic < critical
