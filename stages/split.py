"""Stage `split`: validate every image under data/raw and write stratified train/val/test CSVs."""

import argparse
from collections import Counter
from pathlib import Path

from imgclf.artifacts import write_rows
from imgclf.config import load_section
from imgclf.entry import stage_main
from imgclf.split import SplitConfig, class_counts, split_image_folder, write_split


def build_parser() -> argparse.ArgumentParser:
    """The stage's flags: the params file and its input and output paths (defaults match dvc.yaml)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (section `split`)")
    parser.add_argument("--raw", default="data/raw", help="input: one sub-folder of images per class")
    parser.add_argument("--out", default="data/split", help="output folder for the CSVs and classes.json")
    parser.add_argument("--counts", default="reports/class_counts",
                        help="output folder: images per class in train.csv, val.csv, test.csv (a plot)")
    parser.add_argument("--validation-cache", default=".cache/split_validation.json",
                        help="what earlier runs found per file (not a DVC output: a lost cache only costs time)")
    return parser


@stage_main
def main() -> None:
    """Parse paths, load params.yaml's `split` section, scan and validate images, write the split."""
    args = build_parser().parse_args()
    cfg = load_section(args.params, "split", SplitConfig)

    result = split_image_folder(args.raw, cfg.val, cfg.test, cfg.seed, cache_path=args.validation_cache)

    out = Path(args.out)
    write_split(out, result.parts, result.classes)
    write_rows(out / "rejected.csv", ["path", "reason"], result.rejected)
    for name, rows in result.parts.items():
        write_rows(Path(args.counts) / f"{name}.csv", ["class", "count"], class_counts(rows, result.classes))
    sizes = ", ".join(f"{name} {len(rows)}" for name, rows in result.parts.items())
    reasons = Counter(reason.split(":")[0] for _, reason in result.rejected).most_common()
    why = "".join(f"\n  {count} {reason}" for reason, count in reasons)
    print(f"{len(result.classes)} classes; {sizes}; rejected {len(result.rejected)} "
          f"(listed in {out / 'rejected.csv'}){why}")


if __name__ == "__main__":
    main()
