"""bf16 autocast on a CPU with native bf16 (AMX or AVX512-BF16): accuracy and speed against fp32, on the demo.

    python -m benchmarks.cpu_bf16                     # 3 seeds x (fp32, bf16), the demo's params
    python -m benchmarks.cpu_bf16 --seeds 0 --epochs 2

Refuses in one line on a CPU without native bf16 (there torch emulates it: slower, and the answer
would say nothing about the CPUs that have it). Until it has been run on one, `precision: auto`
stays fp32 on CPUs (docs/benchmarks.md). Both precisions run in this one process, alternating per
seed, with the same data and params; the test F1 comes from the evaluate stage's code (scikit-learn).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Table, machine_line, prepare_demo
from imgclf.config import load_section
from imgclf.evaluate import EvaluateConfig, evaluate_model
from imgclf.inference import cpu_native_bf16
from imgclf.template import PARAMS
from imgclf.train import TrainConfig, train_model


def main(argv: list[str] | None = None) -> Table | None:
    """Train and evaluate each seed in fp32 and in bf16; print test F1 (mean, spread) and seconds per epoch."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated train.seed values")
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs (default: params.yaml's)")
    parser.add_argument("--demo-per-class", type=int, default=None, help="shrink the demo (tests)")
    args = parser.parse_args(argv)
    native = cpu_native_bf16()
    if native is None:
        sys.exit("cpu_bf16: this CPU has no native bf16 (no AMX-BF16 or AVX512-BF16): nothing to measure here; "
                 "run it on one that has (e.g. Intel Sapphire Rapids or later, AMD Zen 4 or later)")
    print(machine_line() + f", native bf16: {native}", flush=True)
    cfg = dataclasses.replace(load_section(PARAMS, "train", TrainConfig), device="cpu", state_every=0,
                              **({"epochs": args.epochs} if args.epochs else {}))
    evaluate = dataclasses.replace(load_section(PARAMS, "evaluate", EvaluateConfig), device="cpu")
    f1: dict[str, list[float]] = {"fp32": [], "bf16": []}
    per_epoch: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with tempfile.TemporaryDirectory(prefix="imgclf-bench-") as tmp:
        work = Path(tmp)
        classes, counts = prepare_demo(work, **({"max_per_class": args.demo_per_class}
                                                if args.demo_per_class else {}))
        weights = [sum(counts) / c for c in counts]
        for seed in (int(s) for s in args.seeds.split(",")):
            for precision in f1:
                run_cfg = dataclasses.replace(cfg, seed=seed, precision=precision)
                model = work / f"model_{precision}_{seed}.pt"
                start = time.perf_counter()
                result = train_model(run_cfg, work / "split/train.csv", work / "split/val.csv", work / "decoded",
                                     classes, weights, model)
                per_epoch[precision].append((time.perf_counter() - start) / result.epochs_run)
                metrics = evaluate_model(model, work / "split/test.csv", work / "split/classes.json", evaluate).metrics
                f1[precision].append(metrics["f1_weighted"])
    table = Table()
    for precision in f1:
        spread = statistics.stdev(f1[precision]) if len(f1[precision]) > 1 else 0.0
        table.add("cpu_bf16", f"demo, {cfg.arch}, {precision}: test F1 (weighted), mean ± stdev of "
                  f"{len(f1[precision])} seeds", f"{statistics.mean(f1[precision]):.4f} ± {spread:.4f}")
        table.add("cpu_bf16", f"demo, {cfg.arch}, {precision}: seconds per epoch (median)",
                  f"{statistics.median(per_epoch[precision]):.3f} s")
    speedup = statistics.median(per_epoch["fp32"]) / statistics.median(per_epoch["bf16"])
    table.add("cpu_bf16", "bf16 speed-up over fp32", f"{speedup:.2f}x")
    print("\n" + table.markdown())
    return table


if __name__ == "__main__":
    main()
