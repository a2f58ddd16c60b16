"""Stage `compute_weights`: class counts and weights from train.csv alone (no image is decoded)."""

import argparse

from imgclf.artifacts import write_json
from imgclf.compute_weights import ComputeWeightsConfig, count_labels, weights_document
from imgclf.config import load_section
from imgclf.entry import stage_main
from imgclf.split_files import read_classes, read_split


def build_parser() -> argparse.ArgumentParser:
    """The stage's flags: the params file and its input and output paths (defaults match dvc.yaml)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (section `compute_weights`)")
    parser.add_argument("--train", default="data/split/train.csv", help="input: training split CSV")
    parser.add_argument("--classes", default="data/split/classes.json", help="input: class order")
    parser.add_argument("--out", default="data/weights.json", help="output: per-class count and weight")
    return parser


@stage_main
def main() -> None:
    """Parse paths, load params.yaml's `compute_weights` section, write weights.json."""
    args = build_parser().parse_args()
    cfg = load_section(args.params, "compute_weights", ComputeWeightsConfig)
    classes = read_classes(args.classes)
    counts = count_labels(read_split(args.train, classes)["label"], classes)
    document = weights_document(classes, counts, cfg.scheme, cfg.beta)
    write_json(args.out, document)
    print(f"{cfg.scheme} weights for {len(classes)} classes: " + ", ".join(
        f"{name}={entry['weight']:.3g} (n={entry['count']})" for name, entry in document["classes"].items()))


if __name__ == "__main__":
    main()
