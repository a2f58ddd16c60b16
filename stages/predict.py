"""Stage `predict`: classify every image under a folder; write path, prediction, confidence, probabilities."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # import the package beside stages/

from imgclf.config import PredictConfig, load_section  # noqa: E402
from imgclf.errors import stage_main  # noqa: E402
from imgclf.inference import predict_folder  # noqa: E402


@stage_main
def main() -> None:
    """Parse paths, load params.yaml's `predict` section, predict, stream rows to the output CSV."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (section `predict`)")
    parser.add_argument("--model", default="models/model.pt", help="input: model checkpoint")
    parser.add_argument("--input", default="data/predict", help="input: folder of images (searched recursively)")
    parser.add_argument("--output", default="reports/predictions.csv", help="output: one row per file")
    args = parser.parse_args()
    cfg = load_section(args.params, "predict", PredictConfig)
    counts = predict_folder(args.model, args.input, args.output, cfg)
    if counts["ok"] + counts["error"] == 0:
        print(f"no files found under {args.input}; wrote {args.output} with its header only")
    else:
        print(f"predicted {counts['ok'] + counts['uncertain']} images ({counts['uncertain']} uncertain, below "
              f"min_confidence {cfg.min_confidence}; {counts['error']} unreadable; see the status column); "
              f"wrote {args.output}")


if __name__ == "__main__":
    main()
