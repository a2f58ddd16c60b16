"""Imbalance study: does WeightedRandomSampler help? balance=sampler vs loss vs none, and the weight schemes.

Trains the demo's model (params.yaml's train section) on the demo digits at two imbalance levels,
for several seeds each, and prints macro F1 and the test recall of the rarest class as mean ± std.
    python -m benchmarks.imbalance                     # about 10 minutes on 2 CPU cores
    python -m benchmarks.imbalance --imbalances 5 --seeds 1
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import prepare_demo
from imgclf.compute_weights import class_weights
from imgclf.config import load_section
from imgclf.evaluate import EvaluateConfig, evaluate_model
from imgclf.split_files import read_split
from imgclf.template import PARAMS
from imgclf.train import TrainConfig, train_model

CONFIGS = [("none", "none"), ("sampler", "inverse"), ("sampler", "sqrt_inverse"), ("loss", "inverse"),
           ("loss", "sqrt_inverse")]


def main(argv: list[str] | None = None) -> list[tuple]:
    """Run every balance/scheme configuration for every seed and imbalance level; print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--imbalances", default="5,20", help="largest/smallest class ratios to try")
    parser.add_argument("--seeds", type=int, default=3, help="train seeds per configuration")
    parser.add_argument("--configs", type=int, default=len(CONFIGS), help="how many of CONFIGS to run (tests)")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs (tests)")
    parser.add_argument("--max-per-class", type=int, default=None, help="shrink the demo (tests)")
    args = parser.parse_args(argv)
    base = dataclasses.replace(load_section(PARAMS, "train", TrainConfig), device="cpu")
    if args.epochs:
        base = dataclasses.replace(base, epochs=args.epochs)
    rows = []
    for imbalance in map(float, args.imbalances.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            shrink = {"max_per_class": args.max_per_class} if args.max_per_class else {}
            classes, counts = prepare_demo(work, imbalance=imbalance, **shrink)
            rarest = classes[counts.index(min(counts))]
            test = read_split(work / "split/test.csv", classes)
            print(f"imbalance {imbalance:g}: train counts {dict(zip(classes, counts))}; rarest class '{rarest}' "
                  f"has {int((test['label'] == rarest).sum())} test images", flush=True)
            for balance, scheme in CONFIGS[:args.configs]:
                weights = class_weights(counts, scheme)
                f1s, recalls = [], []
                for seed in range(args.seeds):
                    cfg = dataclasses.replace(base, balance=balance, seed=seed)
                    train_model(cfg, work / "split/train.csv", work / "split/val.csv", work / "decoded", classes,
                                weights, work / "model.pt")
                    evaluation = EvaluateConfig(batch_size=256, num_workers=0, device="cpu", precision="fp32",
                                                tta="none")
                    metrics = evaluate_model(work / "model.pt", work / "split/test.csv", work / "split/classes.json",
                                             evaluation).metrics
                    f1s.append(metrics["f1_macro"])
                    recalls.append(metrics["classes"][rarest]["recall"])
                rows.append((imbalance, balance, scheme, f1s, recalls))
                print(f"  {balance:8} {scheme:13} f1_macro {fmt(f1s)}  rarest recall {fmt(recalls)}", flush=True)

    print("\n| imbalance | balance | scheme | test f1_macro | recall of the rarest class |\n|---|---|---|---|---|")
    for imbalance, balance, scheme, f1s, recalls in rows:
        print(f"| {imbalance:g}:1 | {balance} | {scheme if balance != 'none' else '—'} | {fmt(f1s)} | {fmt(recalls)} |")
    return rows


def fmt(values: list[float]) -> str:
    """mean ± standard deviation over seeds."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f}"


if __name__ == "__main__":
    main()
