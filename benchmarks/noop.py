"""A no-op `dvc repro` of the whole pipeline over a folder of many small images, set up as the README says.

    python -m benchmarks.noop --sizes 1000,100000
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import ROOT, Table, machine_line, write_tiny_pngs


def bench_noop(table: Table, count: int, work: Path) -> None:
    """Time `dvc add`, the first `dvc repro`, a no-op repro, `dvc status` and each target's status alone."""
    dvc = str(Path(sys.executable).with_name("dvc"))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    repo = work / f"noop_{count}"

    def sh(*cmd: str) -> float:
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
        return time.perf_counter() - start

    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir()
    for name in (".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    for folder in ("stages", "imgclf"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    del pipeline["stages"]["demo"]  # your own images, as in the README
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["decode"]["image_size"] = 8
    params["train"].update(epochs=1, batch_size=256)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_tiny_pngs(repo / "data/raw", count)
    write_tiny_pngs(repo / "data/predict", 100, classes=1)
    sh("git", "init", "-q")
    sh("git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "--allow-empty", "-m", "init")
    sh(dvc, "init", "-q")
    add = sh(dvc, "add", "data/raw", "data/predict")
    first = sh(dvc, "repro")
    noop = min(sh(dvc, "repro") for _ in range(3))
    status = min(sh(dvc, "status") for _ in range(2))
    table.add("noop", f"{count} imgs: dvc add data/raw, then first dvc repro", f"{add:8.1f} s, {first:.1f} s")
    table.add("noop", f"{count} imgs: no-op dvc repro (best of 3)", f"{noop:8.2f} s")
    table.add("noop", f"{count} imgs: dvc status (what a no-op repro checks)", f"{status:8.2f} s")
    # What dominates: each target alone (data/raw is checked twice: as data/raw.dvc and as split's dep).
    for target in ("data/raw.dvc", "split", "train"):
        alone = min(sh(dvc, "status", target) for _ in range(2))
        table.add("noop", f"{count} imgs: dvc status {target} alone", f"{alone:8.2f} s")
    shutil.rmtree(repo, ignore_errors=True)


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
