"""What exact resume costs: the train stage's time per epoch on the demo with and without saving its state.

    python -m benchmarks.resume --epochs 6 --rounds 2
Both variants run in this one process, alternating, with the same data and params (the demo's).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import Table, machine_line, prepare_demo
from imgclf.config import load_section
from imgclf.template import PARAMS
from imgclf.train import TrainConfig, train_model


def main(argv: list[str] | None = None) -> Table:
    """Time whole training runs with and without the per-epoch state; print seconds per epoch and the state size."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each variant, alternating")
    parser.add_argument("--demo-per-class", type=int, default=None, help="shrink the demo (tests)")
    args = parser.parse_args(argv)
    print(machine_line(), flush=True)
    cfg = dataclasses.replace(load_section(PARAMS, "train", TrainConfig), device="cpu",
                              epochs=args.epochs, patience=args.epochs)
    table = Table()
    with tempfile.TemporaryDirectory(prefix="imgclf-bench-") as tmp:
        work = Path(tmp)
        classes, _ = prepare_demo(work, **({"max_per_class": args.demo_per_class} if args.demo_per_class else {}))
        weights = [1.0] * len(classes)
        seconds: dict[str, list[float]] = {"without state": [], "with state": []}
        sizes = [0]
        state = work / "state.pt"

        def note_size(metrics: dict) -> None:
            """The state file as it stands (the previous epoch's; the run removes it when done)."""
            if state.exists():
                sizes.append(state.stat().st_size)

        for _ in range(args.rounds):
            for variant in seconds:
                saving = variant == "with state"
                start = time.perf_counter()
                train_model(cfg, work / "split/train.csv", work / "split/val.csv", work / "decoded", classes,
                            weights, work / "model.pt", on_epoch=note_size if saving else lambda metrics: None,
                            state_path=state if saving else None)
                seconds[variant].append((time.perf_counter() - start) / args.epochs)
        plain, saved = (statistics.median(v) for v in seconds.values())
        table.add("resume", f"demo, {cfg.arch}, {args.epochs} epochs: time per epoch without state", f"{plain:8.3f} s")
        table.add("resume", "time per epoch with the state saved every epoch",
                  f"{saved:8.3f} s  ({saved / plain - 1:+.1%})")
        table.add("resume", "state file size (largest)", f"{max(sizes) / 2**20:8.1f} MiB")
    print("\n" + table.markdown())
    return table


if __name__ == "__main__":
    main()
