"""Stage `predict`: classify every image under a folder; write path, prediction, confidence, probabilities."""

import argparse

from imgclf.config import load_section
from imgclf.errors import stage_main
from imgclf.predict import PredictConfig, predict_files


def build_parser() -> argparse.ArgumentParser:
    """The stage's flags: the params file and its input and output paths (defaults match dvc.yaml)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (section `predict`)")
    parser.add_argument("--model", default="models/model.pt",
                        help="input: model.pt (PyTorch) or model.onnx (ONNX Runtime, without torch)")
    parser.add_argument("--input", nargs="+", default=["data/predict"],
                        help="input: image files and folders (searched recursively), one or several")
    parser.add_argument("--output", default="reports/predictions.csv", help="output: one row per file")
    return parser


@stage_main
def main() -> None:
    """Parse paths, load params.yaml's `predict` section, predict, stream rows to the output CSV."""
    args = build_parser().parse_args()
    cfg = load_section(args.params, "predict", PredictConfig)
    counts = predict_files(args.model, args.input, args.output, cfg)
    if counts["ok"] + counts["uncertain"] + counts["error"] == 0:
        print(f"no files found in {' '.join(args.input)}; wrote {args.output} with its header only")
    else:
        print(f"predicted {counts['ok'] + counts['uncertain']} images ({counts['uncertain']} uncertain, below "
              f"min_confidence {cfg.min_confidence}; {counts['error']} unreadable; see the status column); "
              f"wrote {args.output}")


if __name__ == "__main__":
    main()
