"""Stage `export`: models/model.pt -> models/model.onnx for ONNX Runtime, with a parity check on the test split."""

import argparse

from imgclf.artifacts import write_json
from imgclf.config import load_section
from imgclf.errors import stage_main
from imgclf.export import ExportConfig, export_model


def build_parser() -> argparse.ArgumentParser:
    """The stage's flags: the params file and its input and output paths (defaults match dvc.yaml)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (section `export`)")
    parser.add_argument("--model", default="models/model.pt", help="input: model checkpoint")
    parser.add_argument("--test", default="data/split/test.csv", help="input: the images parity is checked on")
    parser.add_argument("--onnx", default="models/model.onnx", help="output: the ONNX model")
    parser.add_argument("--metrics", default="reports/export.json", help="output: the parity figures")
    return parser


@stage_main
def main() -> None:
    """Parse paths, load params.yaml's `export` section, export, check parity, write the figures."""
    args = build_parser().parse_args()
    cfg = load_section(args.params, "export", ExportConfig)
    report = export_model(args.model, args.test, args.onnx, cfg)
    write_json(args.metrics, report)
    print(f"exported {args.onnx} (opset {cfg.opset}); parity on {report['images']} test images: "
          f"same predictions, largest logit difference {report['max_abs_logit_diff']:.2e}, largest calibrated "
          f"probability difference {report['max_abs_probability_diff']:.2e}; wrote {args.metrics}")


if __name__ == "__main__":
    main()
