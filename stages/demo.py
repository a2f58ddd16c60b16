"""Stage `demo`: write scikit-learn's handwritten digits as an imbalanced image folder plus unlabeled images."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # import the package beside stages/

from imgclf.config import DemoConfig, load_section  # noqa: E402
from imgclf.demo import write_demo  # noqa: E402
from imgclf.errors import stage_main  # noqa: E402


@stage_main
def main() -> None:
    """Parse paths, load params.yaml's `demo` section, write the demo images."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (section `demo`)")
    parser.add_argument("--raw", default="data/raw", help="output: labeled images, one folder per class")
    parser.add_argument("--predict", default="data/predict", help="output: unlabeled images")
    args = parser.parse_args()
    cfg = load_section(args.params, "demo", DemoConfig)
    counts = write_demo(cfg, Path(args.raw), Path(args.predict))
    held_back = counts.pop("predict")
    print(f"wrote {sum(counts.values())} labeled images in {len(counts)} classes to {args.raw} "
          f"(per class: {', '.join(f'{k}={v}' for k, v in counts.items())}) "
          f"and {held_back} unlabeled images to {args.predict}")


if __name__ == "__main__":
    main()
