"""Stage `compute_weights`: class counts and weights from train.csv alone (no image is decoded)."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # import the package beside stages/

from imgclf.artifacts import write_json  # noqa: E402
from imgclf.config import ComputeWeightsConfig, load_section  # noqa: E402
from imgclf.data import read_classes, read_split  # noqa: E402
from imgclf.errors import stage_main  # noqa: E402
from imgclf.weights import count_labels, weights_document  # noqa: E402


@stage_main
def main() -> None:
    """Parse paths, load params.yaml's `compute_weights` section, write weights.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (section `compute_weights`)")
    parser.add_argument("--train", default="data/split/train.csv", help="input: training split CSV")
    parser.add_argument("--classes", default="data/split/classes.json", help="input: class order")
    parser.add_argument("--out", default="data/weights.json", help="output: per-class count and weight")
    args = parser.parse_args()
    cfg = load_section(args.params, "compute_weights", ComputeWeightsConfig)
    classes = read_classes(args.classes)
    counts = count_labels(read_split(args.train, classes)["label"], classes)
    document = weights_document(classes, counts, cfg.scheme, cfg.beta)
    write_json(args.out, document)
    print(f"{cfg.scheme} weights for {len(classes)} classes: " + ", ".join(
        f"{name}={entry['weight']:.3g} (n={entry['count']})" for name, entry in document["classes"].items()))


if __name__ == "__main__":
    main()
