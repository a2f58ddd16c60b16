"""The predict stage's images/s and peak memory at two folder sizes: memory must not grow with the images.

    python -m benchmarks.predict --images 10000 --small 1000
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from benchmarks.common import Table, machine_line, params_file, run_stage, write_photos


def untrained_model(path: Path, arch: str, image_size: int) -> Path:
    """A model.pt of an untrained `arch` for 4 classes: predict's speed does not depend on the weights."""
    from imgclf.checkpoint import save_checkpoint
    from imgclf.model import build_model
    from imgclf.transforms import IMAGENET_MEAN, IMAGENET_STD

    save_checkpoint(path, build_model(arch, 4, 0.2), arch=arch, classes=[f"class{k}" for k in range(4)],
                    image_size=image_size, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), dropout=0.2,
                    params={}, best_epoch=1, epochs_run=1, temperature=1.0)
    return path


def bench_predict(table: Table, root: Path, model: Path, work: Path, small: int, device: str = "cpu") -> None:
    """The predict stage on `small` images and on all of them: images/s and the process's peak memory."""
    paths = sorted(root.rglob("*.jpg"))
    subset = work / f"predict_{small}"
    subset.mkdir(exist_ok=True)
    for path in paths[:small]:
        if not (subset / path.name).exists():
            os.link(path, subset / path.name)
    params = params_file(work, device)
    for folder, count in ((subset, min(small, len(paths))), (root, len(paths))):
        seconds, peak, _ = run_stage("predict", ["--params", str(params), "--model", str(model), "--input",
                                                 str(folder), "--output", str(work / f"predictions_{count}.csv")])
        table.add("predict", f"predict stage, {count} imgs (incl. start-up)",
                  f"{count / seconds:8.1f} img/s, {seconds:.1f} s, peak {peak} MiB")


def main(argv: list[str] | None = None) -> Table:
    """Generate the images and an untrained model, measure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    print(machine_line(args.device), flush=True)
    table = Table()
    with tempfile.TemporaryDirectory(prefix="imgclf-bench-") as tmp:
        work = Path(tmp)
        write_photos(work / "images", args.images, 320, 240)
        model = untrained_model(work / "model.pt", args.arch, args.image_size)
        bench_predict(table, work / "images", model, work, args.small, args.device)
    print("\n" + table.markdown())
    return table


if __name__ == "__main__":
    main()
