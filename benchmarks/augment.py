"""Batched on-device augmentations against torchvision v2's per-image transforms, on the CPU, side by side.

    python -m benchmarks.augment [--sizes 64,224] [--batch 64] [--repeats 5] [--threads N]

Per-image cost (µs per image) of BatchRandomResizedCrop, BatchAugmentPolicy (each policy) and
BatchRandomErasing on a batch, next to the torchvision v2 transform applied image by image to the same
images (uint8 for the crop and the policies, as a loader would hold them; normalised floats for erasing).
The two are timed interleaved, repeat by repeat, and the median of the repeats is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torchvision.transforms import v2

from benchmarks.common import Table, machine_line
from imgclf.augment.crop import BatchRandomResizedCrop
from imgclf.augment.erasing import BatchRandomErasing
from imgclf.augment.policy import BatchAugmentPolicy

FILL = [124.0, 116.0, 104.0]  # ImageNet's mean colour in pixel units


def photos(n: int, size: int) -> torch.Tensor:
    """Photo-like float images in pixel units (integer values): colour gradients, waves and noise."""
    g = torch.Generator().manual_seed(0)
    y, x = torch.linspace(0, 1, size)[:, None], torch.linspace(0, 1, size)[None]
    base = torch.stack([120 + 100 * torch.sin(6 * x + 3 * y), 128 + 90 * torch.cos(5 * y - 2 * x), 60 + 150 * x * y])
    waves = 40 * torch.sin(torch.rand(n, 3, 1, 1, generator=g) * 20 * x + torch.rand(n, 3, 1, 1, generator=g) * 15 * y)
    return (base + waves + 8 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 255).round()


def seconds(work: Callable[[], object]) -> float:
    """Wall time of one call."""
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def cases(size: int) -> list[tuple[str, Callable, Callable, str]]:
    """(name, batched augmentation, torchvision transform, input kind) for one image size."""
    g = torch.Generator().manual_seed(0)
    return [
        ("random resized crop", BatchRandomResizedCrop(size, (0.08, 1.0), (3 / 4, 4 / 3), g),
         v2.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), antialias=True), "uint8"),
        ("TrivialAugmentWide", BatchAugmentPolicy("trivial_wide", FILL, g), v2.TrivialAugmentWide(fill=FILL), "uint8"),
        ("RandAugment", BatchAugmentPolicy("randaugment", FILL, g), v2.RandAugment(fill=FILL), "uint8"),
        ("AutoAugment (ImageNet)", BatchAugmentPolicy("autoaugment", FILL, g), v2.AutoAugment(fill=FILL), "uint8"),
        ("random erasing p=0.5", BatchRandomErasing(0.5, generator=g), v2.RandomErasing(p=0.5, value=0), "normalised"),
    ]


def bench_size(table: Table, size: int, batch: int, repeats: int) -> None:
    """Time every case at one image size: batched call vs. the per-image loop, interleaved, median of repeats."""
    images = photos(batch, size)
    inputs = {"uint8": (images, list(images.to(torch.uint8))),
              "normalised": ((images - 128) / 64, list((images - 128) / 64))}
    for name, batched, torchvision, kind in cases(size):
        batch_input, per_image = inputs[kind]
        batched(batch_input), [torchvision(image) for image in per_image]  # warm-up
        ours, theirs = [], []
        for _ in range(repeats):
            ours.append(seconds(lambda: batched(batch_input)))
            theirs.append(seconds(lambda: [torchvision(image) for image in per_image]))
        ours_us = statistics.median(ours) / batch * 1e6
        theirs_us = statistics.median(theirs) / batch * 1e6
        table.add("augment", f"{name}, {size} px, batch {batch}: batched vs torchvision v2 per image",
                  f"{ours_us:7.0f} vs {theirs_us:.0f} µs/image (speed-up {theirs_us / ours_us:.2f}x)")


def main(argv: list[str] | None = None) -> Table:
    """Measure at each size, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64,224")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line(), flush=True)
    table = Table()
    for size in map(int, args.sizes.split(",")):
        bench_size(table, size, args.batch, args.repeats)
    print("\n" + table.markdown())
    return table


if __name__ == "__main__":
    main()
