"""Stage `export`: models/model.pt -> models/model.onnx for ONNX Runtime, with a parity check on the test split."""

import argparse

from imgclf.artifacts import write_json
from imgclf.config import load_section
from imgclf.entry import stage_main
from imgclf.export import ExportConfig, export_model
from imgclf.predict import PredictConfig


def build_parser() -> argparse.ArgumentParser:
    """The stage's flags: the params file and its input and output paths (defaults match dvc.yaml)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml",
                        help="params file (section `export`, and predict.tta: model.onnx does predict's TTA)")
    parser.add_argument("--model", default="models/model.pt", help="input: model checkpoint")
    parser.add_argument("--test", default="data/split/test.csv", help="input: the images parity is checked on")
    parser.add_argument("--onnx", default="models/model.onnx", help="output: the ONNX model")
    parser.add_argument("--metrics", default="reports/export.json", help="output: the parity figures")
    return parser


@stage_main
def main() -> None:
    """Parse paths, load params.yaml's `export` section and predict.tta, export, check parity, write the figures."""
    args = build_parser().parse_args()
    cfg = load_section(args.params, "export", ExportConfig)
    # The whole predict section is validated, though only its tta is used (dvc.yaml lists predict.tta).
    tta = load_section(args.params, "predict", PredictConfig).tta
    report = export_model(args.model, args.test, args.onnx, cfg, tta)
    write_json(args.metrics, report)
    print(f"exported {args.onnx} (opset {cfg.opset}, test-time augmentation {tta}); parity on {report['images']} "
          f"test images: same predictions, largest logit difference {report['max_abs_logit_diff']:.2e}, largest "
          f"calibrated probability difference {report['max_abs_probability_diff']:.2e}; wrote {args.metrics}")


if __name__ == "__main__":
    main()
