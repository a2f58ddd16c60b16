"""What exact resume costs: the train stage's time per epoch without its state, with it saved every epoch
(`train.state_every: 0`), and with it saved on params.yaml's interval (`train.state_every`, 30 s).

    python -m benchmarks.resume --epochs 6 --rounds 2                  # the demo
    python -m benchmarks.resume --photos 1000 --epochs 4 --rounds 2    # 1,000 1024x768 photos at 64 px
All variants run in this one process, alternating, with the same data and params (the demo's).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import Table, machine_line, prepare_demo, write_photos
from imgclf.config import load_section
from imgclf.template import PARAMS
from imgclf.train import TrainConfig, train_model


def prepare_photos(work: Path, count: int, image_size: int) -> tuple[list[str], list[int]]:
    """`count` 1024x768 photos split and decoded at `image_size` as the pipeline does: (classes, counts)."""
    from imgclf.compute_weights import count_labels
    from imgclf.decode import DecodeConfig, decode_split
    from imgclf.split import SplitConfig, split_image_folder, write_split

    write_photos(work / "raw", count, 1024, 768)
    split = load_section(PARAMS, "split", SplitConfig)
    result = split_image_folder(work / "raw", split.val, split.test, split.seed)
    write_split(work / "split", result.parts, result.classes)
    decode = dataclasses.replace(load_section(PARAMS, "decode", DecodeConfig), image_size=image_size)
    decode_split(work / "split", work / "decoded", decode)
    return result.classes, count_labels([label for _, label in result.parts["train"]], result.classes)


def main(argv: list[str] | None = None) -> Table:
    """Time whole training runs without state, with it every epoch and on the interval; print s/epoch and size."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each variant, alternating")
    parser.add_argument("--demo-per-class", type=int, default=None, help="shrink the demo (tests)")
    parser.add_argument("--photos", type=int, default=0, help="train on this many 1024x768 photos, not the demo")
    parser.add_argument("--image-size", type=int, default=64, help="the photos' decode.image_size")
    parser.add_argument("--batch-size", type=int, default=None, help="train.batch_size (default: params.yaml's)")
    args = parser.parse_args(argv)
    print(machine_line(), flush=True)
    cfg = dataclasses.replace(load_section(PARAMS, "train", TrainConfig), device="cpu",
                              epochs=args.epochs, patience=args.epochs,
                              **({"batch_size": args.batch_size} if args.batch_size else {}))
    table = Table()
    with tempfile.TemporaryDirectory(prefix="imgclf-bench-") as tmp:
        work = Path(tmp)
        if args.photos:
            classes, _ = prepare_photos(work, args.photos, args.image_size)
            data = f"{args.photos} photos at {args.image_size} px"
        else:
            classes, _ = prepare_demo(work, **({"max_per_class": args.demo_per_class} if args.demo_per_class
                                               else {}))
            data = "demo"
        weights = [1.0] * len(classes)
        variants = {"without state": None, "state every epoch (state_every 0)": 0.0,
                    f"state_every {cfg.state_every:g} s": cfg.state_every}
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        sizes = [0]
        state = work / "state.pt"

        def note_size(metrics: dict) -> None:
            """The state file as it stands (the previous epoch's; the run removes it when done)."""
            if state.exists():
                sizes.append(state.stat().st_size)

        for _ in range(args.rounds):
            for variant, every in variants.items():
                start = time.perf_counter()
                train_model(dataclasses.replace(cfg, state_every=every or 0.0), work / "split/train.csv",
                            work / "split/val.csv", work / "decoded", classes, weights, work / "model.pt",
                            on_epoch=note_size if every is not None else lambda metrics: None,
                            state_path=state if every is not None else None)
                seconds[variant].append((time.perf_counter() - start) / args.epochs)
        plain = statistics.median(seconds["without state"])
        table.add("resume", f"{data}, {cfg.arch}, batch {cfg.batch_size}, {args.epochs} epochs: time per epoch "
                  "without state", f"{plain:8.3f} s")
        for variant in list(variants)[1:]:
            saved = statistics.median(seconds[variant])
            table.add("resume", f"time per epoch, {variant}", f"{saved:8.3f} s  ({saved / plain - 1:+.1%})")
        table.add("resume", "state file size (largest)", f"{max(sizes) / 2**20:8.1f} MiB")
    print("\n" + table.markdown())
    return table


if __name__ == "__main__":
    main()
