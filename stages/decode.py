"""Stage `decode`: decode every train and val image once, at training resolution, into data/decoded."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # import the package beside stages/

from imgclf.config import DecodeConfig, load_section  # noqa: E402
from imgclf.decode import decode_split  # noqa: E402
from imgclf.errors import stage_main  # noqa: E402


@stage_main
def main() -> None:
    """Parse paths, load params.yaml's `decode` section, decode the train and val images on all cores."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (section `decode`)")
    parser.add_argument("--split", default="data/split", help="input: train.csv and val.csv")
    parser.add_argument("--out", default="data/decoded", help="output: train.npy, val.npy, meta.json")
    args = parser.parse_args()
    cfg = load_section(args.params, "decode", DecodeConfig)
    counts = decode_split(args.split, args.out, cfg.image_size)
    print(f"decoded {counts['train']} train and {counts['val']} val images at {cfg.image_size} px "
          f"into {args.out}")


if __name__ == "__main__":
    main()
