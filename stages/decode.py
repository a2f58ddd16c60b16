"""Stage `decode`: decode every new train and val image once, at the stored resolution, into the store data/decoded."""

import argparse
import os

from imgclf.config import load_section
from imgclf.decode import DecodeConfig, decode_split
from imgclf.entry import stage_main
from imgclf.store.pool import find_pool, seed_pool


def build_parser() -> argparse.ArgumentParser:
    """The stage's flags: the params file and its input and output paths (defaults match dvc.yaml)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (section `decode`)")
    parser.add_argument("--split", default="data/split", help="input: train.csv and val.csv")
    parser.add_argument("--out", default="data/decoded", help="output: the store (meta.json, *.index.npy, shards/)")
    return parser


@stage_main
def main() -> None:
    """Parse paths, load params.yaml's `decode` section, decode the new train and val images on all cores."""
    args = build_parser().parse_args()
    cfg = load_section(args.params, "decode", DecodeConfig)
    # Earlier shards are found in a pool beside DVC's cache (DVC deletes the output before the stage runs);
    # the store of the last dvc.lock is linked in from the cache first (a fresh clone has no pool yet).
    root = os.environ.get("DVC_ROOT", ".")
    pool = find_pool(root)
    if pool is not None and args.out == "data/decoded":
        seed_pool(root, pool)
    counts = decode_split(args.split, args.out, cfg, pool=pool)
    storage = f"jpeg q{cfg.quality}" if cfg.storage == "jpeg" else "raw"
    print(f"decode: {counts['decoded']} new images decoded, {counts['reused']} reused, {counts['copied']} moved; "
          f"{counts['train']} train and {counts['val']} val images at {cfg.image_size} px ({cfg.resize}, {storage}) "
          f"in {args.out}, {counts['bytes'] / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
