"""The split stage on a folder of photos: first run, then after adding 1% new images (the validation cache).

    python -m benchmarks.split --images 10000
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from pathlib import Path

from benchmarks.common import Table, machine_line, params_file, run_stage, write_photos


def bench_split(table: Table, root: Path, work: Path) -> None:
    """Time the split stage from scratch, then after adding 1% new images (only those are decoded)."""
    cache = work / "validation.json"
    args = ["--params", str(params_file(work)), "--raw", str(root), "--out", str(work / "split"),
            "--counts", str(work / "counts"), "--validation-cache", str(cache)]
    cache.unlink(missing_ok=True)
    count = sum(1 for _ in root.rglob("*.jpg"))
    seconds, _, _ = run_stage("split", args)
    table.add("split", f"split stage, {count} imgs, first run ({os.cpu_count()} processes)", f"{seconds:8.1f} s")
    added = write_photos(root, max(count // 100, 1), 320, 240, start=10_000_000)
    seconds, _, out = run_stage("split", args)
    decoded = re.search(r"(\d+) new or changed", out).group(1)
    table.add("split", f"split stage after adding {len(added)} imgs (1%)", f"{seconds:8.1f} s, decoded {decoded}")
    for path in added:
        path.unlink()


def main(argv: list[str] | None = None) -> Table:
    """Generate `--images` 320x240 JPEGs, measure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    args = parser.parse_args(argv)
    print(machine_line(), flush=True)
    table = Table()
    with tempfile.TemporaryDirectory(prefix="imgclf-bench-") as tmp:
        write_photos(Path(tmp) / "images", args.images, 320, 240)
        bench_split(table, Path(tmp) / "images", Path(tmp))
    print("\n" + table.markdown())
    return table


if __name__ == "__main__":
    main()
