"""A no-op `dvc repro` of the whole pipeline over a folder of many small images, set up as the README says.

    python -m benchmarks.noop --sizes 1000,100000
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from benchmarks.common import Project, Table, machine_line, write_tiny_pngs


def bench_noop(table: Table, count: int, work: Path) -> None:
    """Time `dvc add`, the first `dvc repro`, a no-op repro, `dvc status` and each target's status alone."""
    project = Project(work / f"noop_{count}", {"decode": {"image_size": 8}, "train": {"epochs": 1, "batch_size": 256}})
    write_tiny_pngs(project.repo / "data/raw", count)
    write_tiny_pngs(project.repo / "data/predict", 100, classes=1)
    add = project.dvc_run("add", "data/raw", "data/predict")
    first = project.dvc_run("repro")
    noop = min(project.dvc_run("repro") for _ in range(3))
    status = min(project.dvc_run("status") for _ in range(2))
    table.add("noop", f"{count} imgs: dvc add data/raw, then first dvc repro", f"{add:8.1f} s, {first:.1f} s")
    table.add("noop", f"{count} imgs: no-op dvc repro (best of 3)", f"{noop:8.2f} s")
    table.add("noop", f"{count} imgs: dvc status (what a no-op repro checks)", f"{status:8.2f} s")
    # What dominates: each target alone (data/raw is checked twice: as data/raw.dvc and as split's dep).
    for target in ("data/raw.dvc", "split", "train"):
        alone = min(project.dvc_run("status", target) for _ in range(2))
        table.add("noop", f"{count} imgs: dvc status {target} alone", f"{alone:8.2f} s")
    shutil.rmtree(project.repo, ignore_errors=True)


def main(argv: list[str] | None = None) -> Table:
    """Measure at each size, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,100000")
    args = parser.parse_args(argv)
    print(machine_line(), flush=True)
    table = Table()
    with tempfile.TemporaryDirectory(prefix="imgclf-bench-") as work:
        for count in map(int, args.sizes.split(",")):
            bench_noop(table, count, Path(work))
    print("\n" + table.markdown())
    return table


if __name__ == "__main__":
    main()
