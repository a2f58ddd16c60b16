"""Stage `split`: validate every image under data/raw and write stratified train/val/test CSVs."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # import the package beside stages/

import pandas as pd  # noqa: E402

from imgclf.artifacts import write_csv, write_json  # noqa: E402
from imgclf.config import SplitConfig, load_section  # noqa: E402
from imgclf.data import find_problems, scan_image_folder, stratified_split  # noqa: E402
from imgclf.errors import DataError, stage_main  # noqa: E402


@stage_main
def main() -> None:
    """Parse paths, load params.yaml's `split` section, scan and validate images, write the split."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (section `split`)")
    parser.add_argument("--raw", default="data/raw", help="input: one sub-folder of images per class")
    parser.add_argument("--out", default="data/split", help="output folder for the CSVs and classes.json")
    args = parser.parse_args()
    cfg = load_section(args.params, "split", SplitConfig)

    scan = scan_image_folder(args.raw)
    problems = find_problems([path for path, _ in scan.candidates])
    valid = [item for item, problem in zip(scan.candidates, problems) if problem is None]
    rejected = scan.rejected + [(path, problem) for (path, _), problem in zip(scan.candidates, problems)
                                if problem is not None]
    found = {label for _, label in valid}
    for name in scan.classes:
        if name not in found:
            raise DataError(f"{Path(args.raw) / name}: class folder has no valid image")
    parts = stratified_split(valid, scan.classes, cfg.val, cfg.test, cfg.seed)

    out = Path(args.out)
    for name, frame in parts.items():
        write_csv(out / f"{name}.csv", frame)
    write_csv(out / "rejected.csv", pd.DataFrame(sorted(rejected), columns=["path", "reason"]))
    write_json(out / "classes.json", scan.classes)
    sizes = ", ".join(f"{name} {len(frame)}" for name, frame in parts.items())
    print(f"{len(scan.classes)} classes; {sizes}; rejected {len(rejected)} (see {out / 'rejected.csv'})")


if __name__ == "__main__":
    main()
