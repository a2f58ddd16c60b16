"""Train throughput: the classic hand-written loop vs the train stage's data path and loop vs synthetic tensors.

The train stage's side is what the stages run: the decode stage's store (decode_split), read by a
StoredSplit, drawn by the stage's sampler and augmented by its TrainInput.

Everything runs side by side in this one process, round-robin over full epochs, with the same model,
image size, batch size and torch threads. Loader efficiency = real-data images/s / synthetic images/s.

    python -m benchmarks.train                                   # the demo digits and 1,000 1024x768 photos
    python -m benchmarks.train --datasets photos --photos 256    # one data set, smaller
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import Table, image_folder_files, machine_line, write_photos
from imgclf.augment.config import AugmentConfig
from imgclf.augment.input import TrainInput
from imgclf.config import load_section
from imgclf.decode import DecodeConfig, decode_split
from imgclf.demo import DemoConfig, write_demo
from imgclf.fit import TrainingRun, train_one_epoch
from imgclf.model import build_model
from imgclf.store.reader import StoredSplit
from imgclf.template import PARAMS
from imgclf.train import set_speed_options
from imgclf.train_data import make_train_batches
from imgclf.transforms import IMAGENET_MEAN, IMAGENET_STD, ModelInput, memory_format

AUGMENT = AugmentConfig(hflip=False, rotation=10, translate=0.1, scale=0.1,  # the demo's augmentation
                        crop_scale=1.0, crop_ratio=4 / 3, policy="none", erasing=0.0)


def classic_loader(root: Path, image_size: int, batch_size: int, workers: int = 0, pin_memory: bool = False):
    """What users write: ImageFolder + PIL transforms, a WeightedRandomSampler, DataLoader with `workers` processes."""
    from torch.utils.data import DataLoader, WeightedRandomSampler
    from torchvision import datasets
    from torchvision import transforms as T

    dataset = datasets.ImageFolder(str(root), transform=T.Compose([
        T.Resize((image_size, image_size)),
        T.RandomAffine(AUGMENT.rotation, translate=(AUGMENT.translate,) * 2,
                       scale=(1 - AUGMENT.scale, 1 + AUGMENT.scale), fill=255),
        T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]))
    counts = np.bincount(dataset.targets)
    weights = [1.0 / counts[t] for t in dataset.targets]  # from .targets: iterating is timed in `weights`
    sampler = WeightedRandomSampler(weights, num_samples=len(dataset), replacement=True)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory)


def classic_epoch(model, loader, criterion, optimizer, device) -> None:
    """The classic training loop body, as tutorials write it."""
    model.train()
    running = 0.0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = criterion(model(images), labels)
        loss.backward()
        optimizer.step()
        running += loss.item() * images.size(0)


def timed_epochs(runners: dict, images_per_epoch: int, epochs: int, device: torch.device) -> dict[str, float]:
    """Images/s per variant over full epochs, run round-robin so that all see the same machine load.

    The first round is a warm-up (allocator, cuDNN autotuning) and not counted; the median of the
    remaining epochs is reported.
    """
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for round_ in range(epochs + 1):
        for name, run_epoch in runners.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            run_epoch()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if round_:
                rates[name].append(images_per_epoch / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def bench_train(table: Table, name: str, root: Path, work: Path, *, device: torch.device, arch: str,
                image_size: int, batch_size: int, epochs: int, precision: str, classic_workers: int = 0) -> None:
    """Classic loop vs the train stage's data path and loop vs synthetic tensors, on one image folder."""
    set_speed_options(device)  # what the train stage switches on (cuDNN autotuning on CUDA), for every variant
    paths, targets, classes = image_folder_files(root)
    n, criterion = len(paths), torch.nn.CrossEntropyLoss()

    def fresh_model(channels_last: bool):
        torch.manual_seed(0)
        model = build_model(arch, len(classes), 0.2).to(device)
        if channels_last:
            model = model.to(memory_format=memory_format(device))
        return model, torch.optim.Adam(model.parameters(), lr=5e-4)

    def run(model, optimizer, batches, prepare, train_input) -> TrainingRun:
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1000)
        return TrainingRun(model=model, train_batches=batches, val_batches=[], prepare=prepare, criterion=criterion,
                           optimizer=optimizer, scheduler=scheduler, device=device, precision=precision,
                           train_input=train_input)

    # 1. The classic loop: fp32, contiguous, decode + resize + augment every image every epoch.
    classic_model, classic_optimizer = fresh_model(False)
    loader = classic_loader(root, image_size, batch_size, classic_workers, pin_memory=device.type == "cuda")

    # 2. The train stage: decoded once by the decode stage into its store, then read, sampled and augmented on the
    # device by the stage's own code.
    start = time.perf_counter()
    split = work / f"{name}-split"
    split.mkdir(parents=True, exist_ok=True)
    (split / "train.csv").write_text("path,label\n" + "".join(f"{p},{classes[t]}\n" for p, t in zip(paths, targets)))
    (split / "val.csv").write_text("path,label\n")
    # squash, as the classic loop's Resize((S, S)); JPEGs reduced as params.yaml's decode.reducing_gap says
    decode = DecodeConfig(image_size, "squash", "raw", 90, load_section(PARAMS, "decode", DecodeConfig).reducing_gap)
    decode_split(split, work / f"{name}-decoded", decode, say=lambda line: None)
    decode_seconds = time.perf_counter() - start
    images = StoredSplit(work / f"{name}-decoded", "train", paths)
    weights = [len(targets) / c for c in np.bincount(targets)]
    generator = torch.Generator().manual_seed(0)
    batches = make_train_batches(images, targets, "sampler", batch_size, weights, generator, device)
    prepare = ModelInput(IMAGENET_MEAN, IMAGENET_STD, device)
    train_input = TrainInput(AUGMENT, prepare, image_size, generator)
    ours = run(*fresh_model(True), batches, prepare, train_input)

    # 3. The compute limit: the same model step on one batch already on the device and normalised,
    # reused for every step (as timm's synthetic benchmark); with the train stage's settings and
    # with the classic loop's (fp32, contiguous). Same number of steps and images per epoch.
    one = prepare(torch.from_numpy(images[np.arange(min(batch_size, n))]))
    labels = torch.as_tensor(targets[:batch_size], device=device)
    synthetic = [(one[:len(t)], labels[:len(t)]) for _, t in batches]
    limit = run(*fresh_model(True), synthetic, lambda x: x, lambda x: x)
    classic_limit_model, classic_limit_optimizer = fresh_model(False)
    synthetic_fp32 = [(x.contiguous(), t) for x, t in synthetic]

    rates = timed_epochs({
        "classic": lambda: classic_epoch(classic_model, loader, criterion, classic_optimizer, device),
        "ours": lambda: train_one_epoch(ours, desc=f"{name} train"),
        "limit": lambda: train_one_epoch(limit, desc=f"{name} synthetic"),
        "classic_limit": lambda: classic_epoch(classic_limit_model, synthetic_fp32, criterion,
                                               classic_limit_optimizer, device),
    }, n, epochs, device)
    classic, ours_rate, limit_rate, limit_classic = (rates[k] for k in ("classic", "ours", "limit", "classic_limit"))
    # The train stage's data path alone (gather, normalise, augment; no model): what it adds per image.
    data_only = timed_epochs({"data": lambda: [train_input(x) for x, _ in batches]}, n, epochs,
                             device)["data"]

    label = f"{name} ({n} imgs, {image_size} px, {arch}, batch {batch_size})"
    table.add("train", f"{label}: classic loop", f"{classic:8.1f} img/s  ({classic_workers} loader workers)")
    table.add("train", f"{label}: train stage", f"{ours_rate:8.1f} img/s  ({ours_rate / classic:.2f}x classic)")
    table.add("train", f"{label}: synthetic tensors (limit)", f"{limit_rate:8.1f} img/s")
    table.add("train", f"{label}: loader efficiency, train stage", f"{ours_rate / limit_rate:8.3f}")
    table.add("train", f"{label}: train stage data path alone", f"{data_only:8.0f} img/s  "
              f"({1 / data_only / (1 / data_only + 1 / limit_rate):.1%} of a step's time)")
    table.add("train", f"{label}: loader efficiency, classic loop", f"{classic / limit_classic:8.3f}")
    table.add("train", f"{label}: decode stage, once", f"{decode_seconds:8.1f} s ({n / decode_seconds:.0f} img/s)")


def user_workers(device: torch.device) -> int:
    """The DataLoader workers a user would set for the classic loop: min(8, cores) beside a GPU, 0 on a CPU alone."""
    return min(8, os.cpu_count() or 1) if device.type == "cuda" else 0


def make_dataset(name: str, root: Path, photos: int, demo_per_class: int | None = None) -> None:
    """Write the `demo` digits or `photos` (1024x768 JPEGs) into `root`, unless already there."""
    if root.exists():
        return
    if name == "demo":
        import dataclasses

        cfg = load_section(PARAMS, "demo", DemoConfig)
        if demo_per_class:
            cfg = dataclasses.replace(cfg, max_per_class=demo_per_class)
        write_demo(cfg, root, root.with_name(root.name + "_predict"))
    else:
        write_photos(root, photos, 1024, 768)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The train benchmark's options (shared with benchmarks.gpu)."""
    parser.add_argument("--datasets", default="demo,photos", help="demo and/or photos")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64, help="training side for the photo set (demo: 32)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per variant (plus one warm-up)")
    parser.add_argument("--precision", default="auto", help="the train stage's precision param")
    parser.add_argument("--photos", type=int, default=1000, help="1024x768 JPEGs in the photo set")
    parser.add_argument("--demo-per-class", type=int, default=None, help="shrink the demo (tests)")
    parser.add_argument("--classic-workers", type=int, default=None,
                        help="DataLoader workers of the classic loop (default: as a user would set them, "
                             "min(8, cores) on CUDA; 0 on a CPU, where the loop competes with them for the cores)")


def run(args: argparse.Namespace, table: Table, work: Path) -> None:
    """Run the train benchmark on each chosen data set."""
    for name in args.datasets.split(","):
        root = work / name
        make_dataset(name, root, args.photos, args.demo_per_class)
        device = torch.device(args.device)
        workers = args.classic_workers if args.classic_workers is not None else user_workers(device)
        bench_train(table, name, root, work, device=device, arch=args.arch,
                    image_size=args.image_size if name == "photos" else 32, batch_size=args.batch_size,
                    epochs=args.epochs, precision=args.precision, classic_workers=workers)


def main(argv: list[str] | None = None) -> Table:
    """Parse options, run, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    print(machine_line(args.device) + f", precision {args.precision}", flush=True)
    table = Table()
    with tempfile.TemporaryDirectory(prefix="imgclf-bench-") as work:
        run(args, table, Path(work))
    print("\n" + table.markdown())
    return table


if __name__ == "__main__":
    main()
