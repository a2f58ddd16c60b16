"""Stage `decode`: decode every train and val image once, at training resolution, into data/decoded."""

import argparse

from imgclf.config import load_section
from imgclf.decode import DecodeConfig, decode_split
from imgclf.errors import stage_main


def build_parser() -> argparse.ArgumentParser:
    """The stage's flags: the params file and its input and output paths (defaults match dvc.yaml)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (section `decode`)")
    parser.add_argument("--split", default="data/split", help="input: train.csv and val.csv")
    parser.add_argument("--out", default="data/decoded", help="output: train.npy, val.npy, meta.json")
    return parser


@stage_main
def main() -> None:
    """Parse paths, load params.yaml's `decode` section, decode the train and val images on all cores."""
    args = build_parser().parse_args()
    cfg = load_section(args.params, "decode", DecodeConfig)
    counts = decode_split(args.split, args.out, cfg.image_size)
    print(f"decoded {counts['train']} train and {counts['val']} val images at {cfg.image_size} px "
          f"into {args.out}")


if __name__ == "__main__":
    main()
