"""The photo recipe, measured: each training technique's effect on test accuracy, at equal epochs and equal time.

    python -m benchmarks.recipe --set arch=shufflenet_v2_x0_5 --set lr=0.003 --threads 1 --jobs 2
                                        # as measured in docs/experiments.md ("Photo recipe"), ~25 min on 2 cores
    python -m benchmarks.recipe --seeds 1 --epochs 2 --variants baseline,mixup --per-class 12   # a smoke run

The data set ("regions") is built from scikit-learn's two sample photos (china.jpg, flower.jpg,
CC BY 2.0, shipped inside scikit-learn: no download). Each photo is cut into a 3 x 2 grid of
regions; every region is a class (12 classes). An image of a class is a random crop centred
inside its region, of 6-40% of the region's area and aspect 3:4..4:3, so it may reach into the
neighbouring regions, mirrored half the time, with brightness, contrast and colour jitter, sensor
noise and JPEG quality 75-95, saved as a `--file-size` px square JPEG in ImageFolder layout
(raw/<class>/*.jpg). Small crops of sky, foliage or petals look alike across regions: the task
has ambiguity no model removes, unlike the digits, and it is deterministic from `--data-seed`.

The pipeline's own functions run once on it (split, decode at `--image-size`, class weights),
then train_model (the train stage's code) trains every variant for every seed from the shipped
params (imgclf/template/params.yaml, never the workspace's), and evaluate_model (the evaluate
stage's code) scores the saved model on the test split. Early stopping is off (patience = epochs,
monitor val_f1): every run trains all its epochs and, as the stage does, keeps its best
validation epoch.

Two budgets: equal epochs (every variant `--epochs`), and equal time: a variant whose epoch costs
more than the baseline's (CPU seconds of its process per epoch, median over its runs, so that other
work on a shared machine counts less than in wall time) gets the epochs that fit the baseline's
budget, round(epochs x baseline cost / its cost); within 15% of the baseline's cost it is the same
run.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from benchmarks.common import _sample_photos, machine_line
from imgclf.compute_weights import ComputeWeightsConfig, class_weights, count_labels
from imgclf.config import load_section
from imgclf.decode import DecodeConfig, decode_split
from imgclf.errors import TrainingError
from imgclf.evaluate import EvaluateConfig, evaluate_model
from imgclf.split import SplitConfig, split_image_folder, write_split
from imgclf.template import PARAMS
from imgclf.train import TrainConfig, train_model

GRID = (3, 2)  # columns x rows of regions per photo
PHOTO_NAMES = ("china", "flower")
CROP_AREA = (0.06, 0.4)  # of the region's area
# Within 15% of the baseline's CPU s per epoch counts as the same cost: on the loaded 2-core machine,
# baseline and classic (one flip apart) measured 11% apart.
SAME_COST = 0.15

# Each variant: changes to the baseline's train params ("augment.x" for the augmentation section).
# The baseline is the shipped train section with hflip on (photos, unlike digits, may be mirrored).
# Techniques are measured one at a time on top of it, at torchvision's reference values where it
# has one; `modern` is torchvision's reference recipe as this pipeline's params; `classic` is the
# shipped section unchanged (hflip off).
EMA = "ema"  # its decay is set from the steps per epoch (an average over about one epoch)
VARIANTS: dict[str, dict] = {
    "baseline": {},
    "classic": {"augment.hflip": False},
    "crop": {"augment.crop_scale": 0.08},
    "trivial_wide": {"augment.policy": "trivial_wide"},
    "erasing": {"augment.erasing": 0.1},
    "mixup": {"mixup_alpha": 0.2},
    "cutmix": {"cutmix_alpha": 1.0},
    "label_smoothing": {"label_smoothing": 0.1},
    EMA: {"ema_decay": EMA},
    "cosine": {"scheduler": "cosine", "warmup_epochs": 1},
    "no_affine": {"augment.rotation": 0.0, "augment.translate": 0.0, "augment.scale": 0.0},
    "modern": {"augment.rotation": 0.0, "augment.translate": 0.0, "augment.scale": 0.0,
               "augment.crop_scale": 0.08, "augment.policy": "trivial_wide", "augment.erasing": 0.1,
               "mixup_alpha": 0.2, "cutmix_alpha": 1.0, "label_smoothing": 0.1, "ema_decay": EMA,
               "scheduler": "cosine", "warmup_epochs": 1, "norm_weight_decay": 0.0},
}
DEFAULT_VARIANTS = ("baseline,classic,crop,trivial_wide,erasing,mixup,cutmix,label_smoothing,ema,cosine,"
                    "no_affine,modern")


def region_classes() -> list[tuple[str, int, tuple[int, int, int, int]]]:
    """(class name, photo index, (left, top, right, bottom)) of every region of the two photos."""
    regions = []
    for index, name in enumerate(PHOTO_NAMES):
        height, width = _sample_photos()[index].shape[:2]
        columns, rows = GRID
        for row in range(rows):
            for column in range(columns):
                box = (column * width // columns, row * height // rows,
                       (column + 1) * width // columns, (row + 1) * height // rows)
                regions.append((f"{name}_r{row}c{column}", index, box))
    return regions


def region_image(rng: np.random.Generator, photo: np.ndarray, box: tuple[int, int, int, int],
                 size: int) -> Image.Image:
    """One sample of a region: a random crop centred in `box`, mirrored or not, jittered, at size x size."""
    height, width = photo.shape[:2]
    left, top, right, bottom = box
    area = (right - left) * (bottom - top) * rng.uniform(*CROP_AREA)
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    crop_w = min(width, round(math.sqrt(area * aspect)))
    crop_h = min(height, round(math.sqrt(area / aspect)))
    centre_x, centre_y = rng.uniform(left, right), rng.uniform(top, bottom)
    # The crop is centred in its region but may reach over its edge; it stays inside the photo.
    x0 = int(np.clip(round(centre_x - crop_w / 2), 0, width - crop_w))
    y0 = int(np.clip(round(centre_y - crop_h / 2), 0, height - crop_h))
    image = Image.fromarray(photo).crop((x0, y0, x0 + crop_w, y0 + crop_h))
    image = image.resize((size, size), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.asarray(image, dtype=np.float32)
    mean = pixels.mean()
    pixels = (pixels - mean) * rng.uniform(0.8, 1.2) + mean * rng.uniform(0.8, 1.2)  # contrast, brightness
    pixels = pixels * rng.uniform(0.93, 1.07, size=3)  # colour cast
    # Sensor noise after clipping: a crop of blown-out sky still differs from every other one.
    pixels = np.clip(pixels, 0, 255) + rng.normal(0, 3, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_regions(root: Path, per_class: int, size: int, seed: int = 0) -> list[str]:
    """The regions data set in ImageFolder layout: root/<region>/<n>.jpg, `per_class` per region; its classes."""
    photos = _sample_photos()
    regions = region_classes()
    for number, (name, photo, box) in enumerate(regions):
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            rng = np.random.default_rng([seed, number, index])
            image = region_image(rng, photos[photo], box, size)
            image.save(root / name / f"{index:04d}.jpg", "JPEG", quality=int(rng.integers(75, 96)))
    return [name for name, _, _ in regions]


@dataclasses.dataclass
class Prepared:
    """The data set as the pipeline's stages leave it: split CSVs, decoded store, class weights."""

    work: Path
    classes: list[str]
    weights: list[float]
    counts: dict[str, int]  # images per split


def prepare(work: Path, per_class: int, file_size: int, image_size: int, data_seed: int) -> Prepared:
    """Write the regions set and run split, decode and compute_weights on it, with the shipped params."""
    write_regions(work / "raw", per_class, file_size, data_seed)
    split = load_section(PARAMS, "split", SplitConfig)
    result = split_image_folder(work / "raw", split.val, split.test, split.seed)
    if result.rejected:
        raise RuntimeError(f"the split stage rejected generated images: {result.rejected[:3]}")
    write_split(work / "split", result.parts, result.classes)
    decode = dataclasses.replace(load_section(PARAMS, "decode", DecodeConfig), image_size=image_size)
    decode_split(work / "split", work / "decoded", decode, say=lambda *a: None)
    scheme = load_section(PARAMS, "compute_weights", ComputeWeightsConfig)
    counts = count_labels([label for _, label in result.parts["train"]], result.classes)
    weights = class_weights(counts, scheme.scheme, scheme.beta)
    return Prepared(work, result.classes, weights, {name: len(rows) for name, rows in result.parts.items()})


def variant_config(base: TrainConfig, changes: dict, steps_per_epoch: int) -> TrainConfig:
    """`base` with a variant's changes; the EMA decay is 1 - 1/steps per epoch (an average over about an epoch)."""
    ema = round(1 - 1 / max(steps_per_epoch, 2), 4)
    top, augment = {}, {}
    for key, value in changes.items():
        value = ema if value == EMA else value
        if key.startswith("augment."):
            augment[key.removeprefix("augment.")] = value
        else:
            top[key] = value
    return dataclasses.replace(base, augment=dataclasses.replace(base.augment, **augment), **top)


def base_config(epochs: int) -> TrainConfig:
    """The shipped train section on the CPU, hflip on, no early stopping (patience = epochs, monitor val_f1)."""
    cfg = load_section(PARAMS, "train", TrainConfig)
    return dataclasses.replace(cfg, epochs=epochs, patience=epochs, monitor="val_f1", device="cpu",
                               augment=dataclasses.replace(cfg.augment, hflip=True))


@dataclasses.dataclass
class Run:
    """One trained and scored run."""

    variant: str
    seed: int
    epochs: int
    accuracy: float
    f1_macro: float
    f1_weighted: float
    best_epoch: int
    wall_per_epoch: float  # seconds, median over the epochs
    cpu_per_epoch: float  # CPU seconds of this process, median over the epochs


def train_and_score(data: Prepared, cfg: TrainConfig, variant: str) -> Run:
    """Train `cfg` with the train stage's code, score the saved model with the evaluate stage's code."""
    work = data.work
    model = work / f"model-{variant}-{cfg.seed}-{cfg.epochs}.pt"
    marks = [(time.perf_counter(), time.process_time())]
    try:
        result = train_model(cfg, work / "split/train.csv", work / "split/val.csv", work / "decoded", data.classes,
                             data.weights, model,
                             on_epoch=lambda metrics: marks.append((time.perf_counter(), time.process_time())))
    except TrainingError:  # the train stage refused a model that learned nothing: it scores as chance
        nan = float("nan")
        return Run(variant, cfg.seed, cfg.epochs, nan, nan, nan, 0, nan, nan)
    evaluation = dataclasses.replace(load_section(PARAMS, "evaluate", EvaluateConfig), device="cpu")
    metrics = evaluate_model(model, work / "split/test.csv", work / "split/classes.json", evaluation).metrics
    model.unlink()
    # The first epoch's interval also holds the model's set-up: left out when there are others.
    steps = list(zip(marks, marks[1:]))[1:] or list(zip(marks, marks[1:]))
    wall = statistics.median(b[0] - a[0] for a, b in steps)
    cpu = statistics.median(b[1] - a[1] for a, b in steps)
    return Run(variant, cfg.seed, cfg.epochs, metrics["accuracy"], metrics["f1_macro"], metrics["f1_weighted"],
               result.best_epoch, wall, cpu)


def print_run(start: float):
    """A function that prints one finished run on one line, with the time since `start`."""
    def say(r: Run) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {r.variant:16} seed {r.seed}: acc {r.accuracy:.4f} "
              f"f1_macro {r.f1_macro:.4f} best epoch {r.best_epoch}/{r.epochs} "
              f"{r.wall_per_epoch:.1f} s/epoch ({r.cpu_per_epoch:.1f} CPU s)", flush=True)
    return say


def _quiet_worker(threads: int | None) -> None:
    """A worker process: its torch threads, and the training's progress output silenced."""
    import os
    import sys

    if threads:
        torch.set_num_threads(threads)
    sys.stdout = sys.stderr = open(os.devnull, "w")


def run_all(data: Prepared, tasks: list[tuple[str, TrainConfig]], jobs: int, threads: int | None, say) -> list[Run]:
    """Train and score every (variant, config), in this process (jobs 1) or in `jobs` worker processes."""
    if jobs <= 1:
        runs = []
        for name, cfg in tasks:
            runs.append(train_and_score(data, cfg, name))
            say(runs[-1])
        return runs
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(jobs, multiprocessing.get_context("spawn"),
                                                initializer=_quiet_worker, initargs=(threads,)) as pool:
        futures = [pool.submit(train_and_score, data, cfg, name) for name, cfg in tasks]
        for future in concurrent.futures.as_completed(futures):
            say(future.result())
        return [future.result() for future in futures]


def fmt(values: list[float]) -> str:
    """mean ± sample standard deviation over seeds, in percent."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * spread:.1f}"


def summary(runs: list[Run], variants: list[str]) -> list[dict]:
    """One row per variant: accuracy and macro F1 as mean ± std, epochs, seconds per epoch."""
    rows = []
    for name in variants:
        mine = [r for r in runs if r.variant == name and not math.isnan(r.accuracy)]
        refused = sum(r.variant == name and math.isnan(r.accuracy) for r in runs)
        if not mine:
            continue
        rows.append({"variant": name, "accuracy": fmt([r.accuracy for r in mine]),
                     "f1_macro": fmt([r.f1_macro for r in mine]),
                     "epochs": "/".join(sorted({str(r.epochs) for r in mine}))
                     + (f" ({refused} run(s) refused: learned nothing)" if refused else ""),
                     "best_epoch": f"{statistics.mean(r.best_epoch for r in mine):.1f}",
                     "wall": statistics.median(r.wall_per_epoch for r in mine),
                     "cpu": statistics.median(r.cpu_per_epoch for r in mine),
                     "accuracy_mean": statistics.mean(r.accuracy for r in mine)})
    return rows


def markdown(rows: list[dict], baseline: float | None) -> str:
    """The summary rows as a markdown table, with each variant's accuracy change against the baseline."""
    lines = ["| variant | test accuracy % | Δ vs baseline | test macro F1 % | epochs | mean best epoch | "
             "s/epoch (wall) | CPU s/epoch |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        delta = f"{100 * (row['accuracy_mean'] - baseline):+.1f}" if baseline is not None else ""
        lines.append(f"| {row['variant']} | {row['accuracy']} | {delta} | {row['f1_macro']} | {row['epochs']} | "
                     f"{row['best_epoch']} | {row['wall']:.1f} | {row['cpu']:.1f} |")
    return "\n".join(lines)


def equal_time_epochs(rows: dict[str, dict], epochs: int) -> dict[str, int]:
    """Per variant, the epochs that fit the baseline's budget at its own CPU cost per epoch (see the docstring)."""
    base = rows["baseline"]["cpu"]
    chosen = {}
    for name, row in rows.items():
        ratio = row["cpu"] / base
        chosen[name] = epochs if abs(ratio - 1) <= SAME_COST else max(2, round(epochs / ratio))
    return chosen


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    """Build the data set, run every variant for every seed at both budgets, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="train seeds per variant (0, 1, ...)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of every variant at equal epochs")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--per-class", type=int, default=100, help="images per class (12 classes)")
    parser.add_argument("--file-size", type=int, default=48, help="side of the generated JPEGs")
    parser.add_argument("--image-size", type=int, default=32, help="decode.image_size (the model's input side)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a change to the baseline's train params for every variant, e.g. arch=resnet18 or "
                             "augment.rotation=0 (YAML value)")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process")
    parser.add_argument("--no-equal-time", action="store_true", help="equal epochs only")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or "baseline" not in variants:
        parser.error(f"unknown variants {unknown}" if unknown else "the variants must include baseline")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line("cpu"), flush=True)
    start = time.perf_counter()
    base = base_config(args.epochs)
    base = variant_config(base, {key: yaml.safe_load(value) for key, value in
                                 (item.split("=", 1) for item in args.set)}, 1)
    tables: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="imgclf-recipe-") as tmp:
        data = prepare(Path(tmp), args.per_class, args.file_size, args.image_size, args.data_seed)
        steps = math.ceil(data.counts["train"] / base.batch_size)
        print(f"regions: {len(data.classes)} classes, {data.counts} images, {args.image_size} px; "
              f"{steps} steps per epoch; {base.arch}", flush=True)
        say = print_run(start)
        # Seeds outside, variants inside: a change of the machine's load falls on every variant alike.
        tasks = [(name, dataclasses.replace(variant_config(base, VARIANTS[name], steps), seed=seed))
                 for seed in range(args.seeds) for name in variants]
        runs = run_all(data, tasks, args.jobs, args.threads, say)
        rows = summary(runs, variants)
        by_name = {row["variant"]: row for row in rows}
        tables["equal_epochs"] = rows
        print(f"\nEqual epochs ({args.epochs}):\n" + markdown(rows, by_name["baseline"]["accuracy_mean"]), flush=True)
        if not args.no_equal_time:
            chosen = equal_time_epochs(by_name, args.epochs)
            print("equal time: epochs per variant " + ", ".join(f"{k} {v}" for k, v in chosen.items()), flush=True)
            tasks = []
            for seed in range(args.seeds):
                for name in variants:
                    if chosen[name] != args.epochs:
                        cfg = variant_config(base, VARIANTS[name], steps)
                        tasks.append((name, dataclasses.replace(
                            cfg, seed=seed, epochs=chosen[name], patience=chosen[name],
                            warmup_epochs=min(cfg.warmup_epochs, chosen[name] - 1))))
            timed = [r for r in runs if chosen[r.variant] == args.epochs] + run_all(data, tasks, args.jobs,
                                                                                    args.threads, say)
            rows = summary(timed, variants)
            tables["equal_time"] = rows
            budget = args.epochs * by_name["baseline"]["cpu"]
            print(f"\nEqual time (the baseline's {args.epochs} epochs x {by_name['baseline']['cpu']:.1f} CPU s = "
                  f"{budget:.0f} CPU s of training per run):\n" + markdown(rows, by_name["baseline"]["accuracy_mean"]))
    print(f"\ntotal {time.perf_counter() - start:.0f} s", flush=True)
    return tables


if __name__ == "__main__":
    main()
