"""Stage `demo`: write scikit-learn's handwritten digits as an imbalanced image folder plus unlabeled images."""

import argparse
from pathlib import Path

from imgclf.config import load_section
from imgclf.demo import DemoConfig, write_demo
from imgclf.entry import stage_main


def build_parser() -> argparse.ArgumentParser:
    """The stage's flags: the params file and its input and output paths (defaults match dvc.yaml)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (section `demo`)")
    parser.add_argument("--raw", default="data/raw", help="output: labeled images, one folder per class")
    parser.add_argument("--predict", default="data/predict", help="output: unlabeled images")
    return parser


@stage_main
def main() -> None:
    """Parse paths, load params.yaml's `demo` section, write the demo images."""
    args = build_parser().parse_args()
    cfg = load_section(args.params, "demo", DemoConfig)
    counts = write_demo(cfg, Path(args.raw), Path(args.predict))
    held_back = counts.pop("predict")
    print(f"wrote {sum(counts.values())} labeled images in {len(counts)} classes to {args.raw} "
          f"(per class: {', '.join(f'{k}={v}' for k, v in counts.items())}) "
          f"and {held_back} unlabeled images to {args.predict}")


if __name__ == "__main__":
    main()
