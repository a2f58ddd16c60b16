"""The split stage: validation cost against one plain decode, the validation cache, and split stability.

    python -m benchmarks.split                      # 1,000 1024x768 photos, 10,000 320x240, the demo
    python -m benchmarks.split --photos 200 --images 1000
Target: `dvc repro -s split` on the photos no slower than a plain full Pillow decode of the same files
(on all cores) plus DVC's no-op `dvc repro -s split`, with the same files rejected.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

from PIL import Image

from benchmarks.common import Project, Table, machine_line, params_file, run_stage, write_photos
from imgclf.template import PARAMS


def _plain_decode(path: str) -> None:
    """What validation cannot do with less: open the file and decode every pixel."""
    with Image.open(path) as image:
        image.load()


def bench_validation(table: Table, photos: Path, work: Path) -> None:
    """`dvc repro -s split` (no validation cache) vs a plain full decode on all cores + a no-op repro."""
    paths = sorted(str(p) for p in photos.rglob("*.jpg"))
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool() as pool:
        pool.map(_plain_decode, paths, chunksize=16)
    plain = time.perf_counter() - start
    project = Project(work / "validation")
    shutil.copytree(photos, project.repo / "data/raw")
    project.dvc_run("add", "data/raw")
    stage = project.dvc_run("repro", "-s", "split")
    (project.repo / ".cache/split_validation.json").unlink()
    stage = min(stage, project.dvc_run("repro", "-s", "-f", "split"))
    noop = min(project.dvc_run("repro", "-s", "split") for _ in range(2))
    label = f"{len(paths)} photos of {Image.open(paths[0]).size[0]}x{Image.open(paths[0]).size[1]}"
    table.add("split", f"{label}: plain full decode, {os.cpu_count()} processes", f"{plain:8.2f} s")
    table.add("split", f"{label}: no-op dvc repro -s split", f"{noop:8.2f} s")
    table.add("split", f"{label}: dvc repro -s split, no validation cache (best of 2)",
              f"{stage:8.2f} s  ({stage / (plain + noop):.2f}x decode + no-op)")
    shutil.rmtree(project.repo, ignore_errors=True)


def bench_cache(table: Table, root: Path, work: Path) -> None:
    """Time the split stage from scratch, then after adding 1% new images (only those are decoded)."""
    cache = work / "validation.json"
    args = ["--params", str(params_file(work)), "--raw", str(root), "--out", str(work / "split"),
            "--counts", str(work / "counts"), "--validation-cache", str(cache)]
    cache.unlink(missing_ok=True)
    count = sum(1 for _ in root.rglob("*.jpg"))
    seconds, _, _ = run_stage("split", args, work)
    table.add("split", f"split stage, {count} imgs, first run ({os.cpu_count()} processes)", f"{seconds:8.1f} s")
    added = write_photos(root, max(count // 100, 1), 320, 240, start=10_000_000)
    seconds, _, out = run_stage("split", args, work)
    decoded = re.search(r"(\d+) new or changed", out).group(1)
    table.add("split", f"split stage after adding {len(added)} imgs (1%)", f"{seconds:8.1f} s, decoded {decoded}")
    for path in added:
        path.unlink()


def bench_stability(table: Table, work: Path, max_per_class: int | None = None) -> None:
    """On the demo digits: hold 10% of each class back, split; add them, split; remove 10%, split.

    Reports how many earlier images changed split each time (the target is 0), whether the earlier
    test set is inside the later one, and the worst per-class gap between a split's share and its fraction.
    """
    import dataclasses

    from imgclf.config import load_section
    from imgclf.demo import DemoConfig, write_demo
    from imgclf.split import SplitConfig, split_image_folder

    cfg = load_section(PARAMS, "split", SplitConfig)
    demo = load_section(PARAMS, "demo", DemoConfig)
    if max_per_class:
        demo = dataclasses.replace(demo, max_per_class=max_per_class)
    full = work / "demo"
    write_demo(demo, full, work / "demo_predict")
    every = sorted(full.rglob("*.png"))
    tenth = {p for k, p in enumerate(every) if k % 10 == 3}

    def split_with(files: set[Path]) -> dict[str, str]:
        raw = work / "raw"
        shutil.rmtree(raw, ignore_errors=True)
        for path in files:  # hard links: the same names and bytes as the full folder
            (raw / path.parent.name).mkdir(parents=True, exist_ok=True)
            os.link(path, raw / path.parent.name / path.name)
        result = split_image_folder(raw, cfg.val, cfg.test, cfg.seed)
        return {Path(p).name: name for name, rows in result.parts.items() for p, _ in rows}, result

    base, _ = split_with(set(every) - tenth)
    grown, result = split_with(set(every))
    shrunk, _ = split_with(set(every) - {p for k, p in enumerate(every) if k % 10 == 7})
    for label, before, after in (("+10%", base, grown), ("-10%", grown, shrunk)):
        moved = sum(after[name] != split for name, split in before.items() if name in after)
        old_test = {n for n, s in before.items() if s == "test" and n in after}
        kept = all(after[n] == "test" for n in old_test)
        table.add("split", f"demo {label}: earlier images that changed split",
                  f"{moved:8d} of {sum(n in after for n in before)}; earlier test set inside the new one: {kept}")
    fractions = {"train": cfg.train, "val": cfg.val, "test": cfg.test}
    counts = {name: Counter(label for _, label in rows) for name, rows in result.parts.items()}
    gaps = []
    for label in result.classes:
        n = sum(counts[name][label] for name in counts)
        gaps += [(abs(counts[name][label] / n - fractions[name]), label, name, counts[name][label], n)
                 for name in counts]
    gap, label, name, count, n = max(gaps)
    table.add("split", "demo: worst per-class gap between a split's share and its fraction",
              f"{gap:8.3f} (class {label}, {name}: {count} of {n})")


def main(argv: list[str] | None = None) -> Table:
    """Generate the images, measure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=1000, help="1024x768 JPEGs for the validation cost")
    parser.add_argument("--images", type=int, default=10_000, help="320x240 JPEGs for the validation cache")
    parser.add_argument("--demo-per-class", type=int, default=None, help="shrink the demo (tests)")
    args = parser.parse_args(argv)
    print(machine_line(), flush=True)
    table = Table()
    with tempfile.TemporaryDirectory(prefix="imgclf-bench-") as tmp:
        work = Path(tmp)
        write_photos(work / "photos", args.photos, 1024, 768)
        bench_validation(table, work / "photos", work)
        write_photos(work / "images", args.images, 320, 240)
        bench_cache(table, work / "images", work)
        bench_stability(table, work, args.demo_per_class)
    print("\n" + table.markdown())
    return table


if __name__ == "__main__":
    main()
