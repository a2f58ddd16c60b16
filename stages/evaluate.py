"""Stage `evaluate`: score models/model.pt on the test split; write metrics, per-image results, plots data."""

import argparse
from pathlib import Path

from imgclf.artifacts import write_csv, write_json, write_text
from imgclf.config import load_section
from imgclf.entry import stage_main
from imgclf.evaluate import EvaluateConfig, chance_note, evaluate_model
from imgclf.plots import mistakes_gallery, per_class_frame, save_png
from imgclf.startup import preload


def build_parser() -> argparse.ArgumentParser:
    """The stage's flags: the params file and its input and output paths (defaults match dvc.yaml)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (section `evaluate`)")
    parser.add_argument("--model", default="models/model.pt", help="input: model checkpoint")
    parser.add_argument("--split", default="data/split", help="input: test.csv and classes.json")
    parser.add_argument("--metrics", default="reports/metrics.json", help="output: test metrics")
    parser.add_argument("--samples", default="reports/test_predictions.csv",
                        help="output: path,actual,predicted per test image (confusion plot)")
    parser.add_argument("--report", default="reports/classification_report.txt",
                        help="output: scikit-learn's text classification report")
    parser.add_argument("--per-class", default="reports/per_class.csv",
                        help="output: class,precision,recall,f1,support")
    parser.add_argument("--reliability", default="reports/reliability",
                        help="output folder: uncalibrated.csv and calibrated.csv (reliability diagrams)")
    parser.add_argument("--mistakes", default="reports/mistakes.png", help="output: gallery of the worst mistakes")
    return parser


@stage_main
def main() -> None:
    """Parse paths, load params.yaml's `evaluate` section, evaluate, write the reports."""
    args = build_parser().parse_args()
    cfg = load_section(args.params, "evaluate", EvaluateConfig)
    preload("sklearn.metrics")  # needed once the model has run on the test set: imported meanwhile
    split = Path(args.split)
    result = evaluate_model(args.model, split / "test.csv", split / "classes.json", cfg)
    metrics = result.metrics
    write_json(args.metrics, metrics)
    write_csv(args.samples, result.samples)
    write_text(args.report, result.report)
    write_csv(args.per_class, per_class_frame(metrics))
    for name, table in result.reliability.items():
        write_csv(Path(args.reliability) / f"{name}.csv", table)
    save_png(mistakes_gallery(result.samples), args.mistakes)
    print(result.report)
    print(f"test accuracy {metrics['accuracy']:.4f}  f1_weighted {metrics['f1_weighted']:.4f}  "
          f"f1_macro {metrics['f1_macro']:.4f}  ECE {metrics['ece']:.4f} -> {metrics['ece_calibrated']:.4f} "
          f"(temperature {metrics['temperature']:.3f}); wrote {args.metrics}")
    note = chance_note(metrics, len(result.samples))
    if note:
        print(note)


if __name__ == "__main__":
    main()
