"""The predict stage, PyTorch (model.pt) against ONNX Runtime (model.onnx): start-up, throughput, peak memory.

    python -m benchmarks.predict --images 10000 --small 1000
Start-up is a run over an empty folder (interpreter, imports, loading the model); throughput is
images per second of a run over the folder with that start-up subtracted; peak memory is the
process's peak resident set. Both formats of the same untrained model, side by side in one run.
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


def bench_predict(table: Table, root: Path, models: dict[str, Path], work: Path, small: int,
                  device: str = "cpu") -> None:
    """Each model format on an empty folder, on `small` images and on all: start-up, images/s, peak memory."""
    paths = sorted(root.rglob("*.jpg"))
    subset, empty = work / f"predict_{small}", work / "empty"
    subset.mkdir(exist_ok=True)
    empty.mkdir(exist_ok=True)
    for path in paths[:small]:
        if not (subset / path.name).exists():
            os.link(path, subset / path.name)
    params = params_file(work, device)
    for name, model in models.items():
        def run(folder: Path) -> tuple[float, int]:
            seconds, peak, _ = run_stage("predict", ["--params", str(params), "--model", str(model), "--input",
                                                     str(folder), "--output", str(work / "predictions.csv")], work)
            return seconds, peak

        start_up = min(run(empty)[0] for _ in range(2))
        table.add("predict", f"{name}: start-up (empty folder, best of 2)", f"{start_up:8.2f} s")
        for folder, count in ((subset, min(small, len(paths))), (root, len(paths))):
            seconds, peak = run(folder)
            table.add("predict", f"{name}: {count} imgs",
                      f"{count / max(seconds - start_up, 1e-9):8.1f} img/s after start-up, {seconds:.1f} s, "
                      f"peak {peak} MiB")


def main(argv: list[str] | None = None) -> Table:
    """Generate the images and an untrained model in both formats, measure, print the table."""
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
        from imgclf.checkpoint import load_checkpoint
        from imgclf.export import export_onnx

        work = Path(tmp)
        write_photos(work / "images", args.images, 320, 240)
        model = untrained_model(work / "model.pt", args.arch, args.image_size)
        export_onnx(*load_checkpoint(model), work / "model.onnx", 18)
        bench_predict(table, work / "images", {"PyTorch model.pt": model, "ONNX Runtime model.onnx":
                                               work / "model.onnx"}, work, args.small, args.device)
    print("\n" + table.markdown())
    return table


if __name__ == "__main__":
    main()
