"""Stage `train`: fine-tune a torchvision or timm model on the decoded split, early-stopped; write models/model.pt."""

import argparse
import os
import sys
from pathlib import Path

from imgclf.config import load_section
from imgclf.distributed import World, launch
from imgclf.entry import stage_main
from imgclf.live import DeferredLive
from imgclf.split_files import read_classes
from imgclf.startup import preload
from imgclf.store.pool import dvc_cache_dir
from imgclf.train import TrainConfig, train_model, training_device
from imgclf.weights_file import read_weights


def build_parser() -> argparse.ArgumentParser:
    """The stage's flags: the params file and its input and output paths (defaults match dvc.yaml)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (section `train`)")
    parser.add_argument("--split", default="data/split", help="input: train.csv, val.csv, classes.json")
    parser.add_argument("--decoded", default="data/decoded", help="input: the decode stage's images")
    parser.add_argument("--weights", default="data/weights.json", help="input: class weights")
    parser.add_argument("--model", default="models/model.pt", help="output: best model checkpoint")
    parser.add_argument("--live", default="dvclive", help="output: DVCLive metrics and plots folder")
    parser.add_argument("--state", default=".cache/train_state.pt",
                        help="the training state, saved every train.state_every seconds (at most every epoch), to "
                             "resume an interrupted run from (not a DVC output: DVC deletes those before a stage "
                             "runs; removed when done)")
    parser.add_argument("--features", default=None,
                        help="where the frozen backbone's features are kept between runs (default: imgclf-features "
                             "in the DVC cache, where a queued experiment finds them too; none outside a DVC project)")
    return parser


def features_dir(given: str | None) -> Path | None:
    """--features, else imgclf-features/ in the DVC cache of the project the stage runs in (None outside one)."""
    if given:
        return Path(given)
    cache = dvc_cache_dir(os.environ.get("DVC_ROOT", "."))
    return None if cache is None else cache / "imgclf-features"


@stage_main(interrupted="its progress is saved every train.state_every seconds (at most after every epoch): "
                        "rerun `dvc repro` to resume")
def main() -> None:
    """Parse paths, load params.yaml's `train` section, train, log epochs with DVCLive, save the best model."""
    args = build_parser().parse_args()
    cfg = load_section(args.params, "train", TrainConfig)
    split = Path(args.split)
    classes = read_classes(split / "classes.json")
    class_weights = read_weights(args.weights, classes)
    world = World.from_env()
    if cfg.nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:
        # A device set-up the processes cannot have is refused here, in one line, before any starts.
        training_device(cfg, World(0, cfg.nproc_per_node, 0, cfg.nproc_per_node))
        # This process becomes torchrun (torch's elastic launcher) for nproc_per_node copies of itself.
        sys.exit(launch(cfg.nproc_per_node, "stages.train", sys.argv[1:], root=Path(__file__).resolve().parents[1]))
    # What only the first epoch's end needs (validation F1, DVCLive) is imported while training starts.
    preload("sklearn.metrics", *(("dvclive", "scmrepo.exceptions") if world.is_main else ()))
    if not world.is_main:  # only rank 0 logs (and writes); the others train and validate their shards
        train_model(cfg, split / "train.csv", split / "val.csv", args.decoded, classes, class_weights, args.model,
                    state_path=args.state, features_dir=features_dir(args.features))
        return

    # dvc.yaml is written by hand and declares these metrics and plots itself. DVCLive is set up
    # when the first epoch is logged, not before training.
    with DeferredLive(args.live) as live:
        def log_epoch(metrics: dict) -> None:
            for name in ("train_loss", "val_loss", "val_f1", "lr"):
                live.log_metric(name, metrics[name])
            live.next_step()

        result = train_model(cfg, split / "train.csv", split / "val.csv", args.decoded, classes, class_weights,
                             args.model, on_epoch=log_epoch, state_path=args.state,
                             features_dir=features_dir(args.features))
        best = result.history[result.best_epoch - 1]
        # The summary describes the model that was saved (the best epoch), not the last one.
        live.summary.update({"best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                             "train_loss": best["train_loss"], "val_loss": best["val_loss"],
                             "val_f1": best["val_f1"], "lr": best["lr"], "temperature": result.calibration.temperature,
                             # The fitted temperature too: when it raised validation ECE, 1 was shipped instead.
                             "temperature_fitted": result.calibration.fitted,
                             "val_ece_uncalibrated": result.calibration.ece_uncalibrated,
                             "val_ece": result.calibration.ece})


if __name__ == "__main__":
    main()
