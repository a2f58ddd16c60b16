"""Photos at scale: the decode store and DVC at 2k, 8k, 32k images (and the data-only part at 128k).

    python -m benchmarks.scale                                  # 2k, 8k, 32k; data only at 128k
    python -m benchmarks.scale --sizes 2000 --data-only 0 --work /tmp/scale

Each size is a fresh git + DVC project of this pipeline (the README's own-data setup, this
repository's .dvc/config, so `cache.type` as shipped), with `decode` at 224 px, crop, JPEG storage:
first `dvc repro -s split` and `-s decode`, then +1% images, then -1%, each timed as the whole
command and the stage's own part (DVC's part is the rest); the disk that decoded data takes in the
workspace and DVC's cache together (hard links counted once); peak RSS; `dvc status`; and the train
stage's data path (StoredSplit batches of 256, centre-cropped, on one thread). The photos are 500x375
JPEGs (q85, ~45 KiB): 2,000 distinct pictures; beyond that, copies made distinct by bytes after the
JPEG's end marker (every decoder ignores them), so each file is decoded and hashed as a new one.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import ROOT, Project, Table, _sample_photos, machine_line

CLASSES = 100
DISTINCT = 2000
# The stage's own wall time, CPU time (its worker processes included) and peak RSS, from GNU time.
TIMED = "/usr/bin/time -f 'STAGE_SECONDS %e STAGE_CPU %U %S STAGE_PEAK_KIB %M' "


def _base_photo(index: int) -> bytes:
    """One distinct photo-like 500x375 JPEG (q85): a jittered crop of a sample photo."""
    rng = np.random.default_rng(index)
    image = Image.fromarray(_sample_photos()[index % 2])
    w, h = image.size
    crop_w = int(w * rng.uniform(0.5, 1.0))
    crop_h = int(min(h, crop_w * 375 / 500))
    left, top = int(rng.integers(0, w - crop_w + 1)), int(rng.integers(0, h - crop_h + 1))
    image = image.crop((left, top, left + crop_w, top + crop_h)).resize((500, 375), Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.float32) * rng.uniform(0.8, 1.2) + rng.normal(0, 3, (375, 500, 3))
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=85)
    return out.getvalue()


def base_photos(cache: Path, count: int = DISTINCT) -> list[bytes]:
    """`count` distinct base JPEGs, generated once on all cores and kept in `cache`."""
    cache.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(count) if not (cache / f"{i:05d}.jpg").exists()]
    if missing:
        with multiprocessing.get_context("fork").Pool() as pool:
            for i, data in zip(missing, pool.imap(_base_photo, missing, chunksize=32)):
                (cache / f"{i:05d}.jpg").write_bytes(data)
    return [(cache / f"{i:05d}.jpg").read_bytes() for i in range(count)]


def classes_for(n: int) -> int:
    """100 classes, fewer for tiny test runs (every class needs images in train, val and test)."""
    return max(3, min(CLASSES, n // 50))


def image_path(raw: Path, i: int, classes: int) -> Path:
    """Where image i lives: raw/c<i mod classes>/<i>.jpg."""
    return raw / f"c{i % classes:03d}" / f"{i:07d}.jpg"


def write_images(raw: Path, bases: list[bytes], start: int, stop: int, classes: int) -> None:
    """Images start..stop-1 under raw/c<k>/: a base photo (i mod their number) plus a trailer naming i."""
    for k in range(classes):
        (raw / f"c{k:03d}").mkdir(parents=True, exist_ok=True)
    for i in range(start, stop):
        image_path(raw, i, classes).write_bytes(bases[i % len(bases)] + f"#{i}".encode())


def run(project: Project, *args: str) -> tuple[float, str]:
    """`dvc args...` in the project: (wall seconds, output)."""
    start = time.perf_counter()
    done = subprocess.run([project.dvc, *args], cwd=project.repo, capture_output=True, text=True, env=project.env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout + done.stderr


def stage_part(output: str) -> tuple[float, int, float]:
    """(the stage's own seconds, its peak RSS in MiB, its CPU seconds) from GNU time's line in `dvc repro`'s output."""
    match = re.search(r"STAGE_SECONDS ([\d.]+) STAGE_CPU ([\d.]+) ([\d.]+) STAGE_PEAK_KIB (\d+)", output)
    if not match:
        return float("nan"), 0, float("nan")
    return float(match.group(1)), int(match.group(4)) // 1024, float(match.group(2)) + float(match.group(3))


def decode_line(output: str) -> str:
    """The decode stage's summary: how many images it decoded and reused."""
    match = re.search(r"decode: (\d+) new images decoded, (\d+) reused, (\d+) moved", output)
    return f"decoded {match.group(1)}, reused {match.group(2)}, moved {match.group(3)}" if match else "?"


def decoded_disk(repo: Path) -> tuple[int, int]:
    """(bytes of one copy of data/decoded, bytes on disk of every decoded version: workspace + DVC cache).

    The cache's share is every object listed by a .dir manifest of a store (entries under shards/),
    plus those manifests; a file hard-linked into the workspace is counted once (by inode).
    """
    workspace = [p for p in (repo / "data/decoded").rglob("*") if p.is_file()]
    one_copy = sum(p.stat().st_size for p in workspace)
    cache = repo / ".dvc/cache/files/md5"
    files = set(workspace)
    for manifest in cache.rglob("*.dir"):
        entries = json.loads(manifest.read_text())
        if any(entry["relpath"].startswith("shards/") for entry in entries):
            files.add(manifest)
            files.update(cache / e["md5"][:2] / e["md5"][2:] for e in entries)
    inodes = {}
    for path in files:
        if path.exists():
            stat = path.stat()
            inodes[(stat.st_dev, stat.st_ino)] = stat.st_size
    return one_copy, sum(inodes.values())


def folder_bytes(folder: Path) -> int:
    """Apparent bytes of every file under `folder`."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def loader_rate(repo: Path, input_size: int = 224, batch: int = 256) -> tuple[float, float]:
    """The train stage's data path on random batches, cropped: (images per CPU-second on one thread, images per
    wall second on all cores). Per CPU-second is what one core delivers, whatever else the machine runs."""
    from imgclf.split_files import read_split_paths
    from imgclf.store.reader import StoredSplit

    paths = read_split_paths(repo / "data/split/train.csv")["path"].tolist()
    rates = []
    for threads in (1, os.cpu_count() or 1):
        images = StoredSplit(repo / "data/decoded", "train", paths, input_size, threads=threads)
        rng = np.random.default_rng(0)
        images[rng.integers(0, len(images), batch)]  # warm-up: page cache, thread pool
        count, start, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < 5.0:
            images[rng.integers(0, len(images), batch)]
            count += batch
        clock = time.process_time() - cpu if threads == 1 else time.perf_counter() - start
        rates.append(count / clock)
    return rates[0], rates[1]


def new_project(work: Path, name: str) -> Project:
    """A project of this pipeline (no demo) with 224 px crop JPEG storage, this repository's DVC config,
    and each stage's command timed by /usr/bin/time."""
    project = Project(work / name, {"decode": {"image_size": 224, "resize": "crop", "storage": "jpeg"}})
    shutil.copy(ROOT / ".dvc/config", project.repo / ".dvc/config")  # cache.type as shipped
    dvc_yaml = project.repo / "dvc.yaml"
    text = dvc_yaml.read_text()
    for stage in ("split", "decode"):
        text = text.replace(f"cmd: python -m stages.{stage} ", f"cmd: {TIMED}python -m stages.{stage} ")
    dvc_yaml.write_text(text)
    project.sh("git", "add", "-A")
    project.sh("git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "pipeline")
    return project


def commit(project: Project, message: str) -> None:
    """git add + commit everything (a data version)."""
    project.sh("git", "add", "-A")
    project.sh("git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", message)


def repro_row(table: Table, project, stage: str, when: str) -> None:
    """Time `dvc repro -s stage` and add its row: whole, the stage's own part, DVC's part, CPU, peak memory."""
    seconds, out = run(project, "repro", "-s", stage)
    own, peak, cpu = stage_part(out)
    extra = f"; {decode_line(out)}" if stage == "decode" else ""
    table.add("scale", f"{when} `dvc repro -s {stage}`: whole / stage / DVC (stage CPU)",
              f"{seconds:6.1f} / {own:.1f} / {seconds - own:.1f} s ({cpu:.1f} s), peak {peak} MiB{extra}")


def bench_size(table: Table, work: Path, bases: list[bytes], n: int, full: bool, keep: bool = False) -> None:
    """First run, +1%, -1% at n images; with `full` the decode stage too, else the data part only (add, split)."""
    label = f"{n // 1000}k" if n >= 1000 else str(n)
    project = new_project(work, f"scale_{n}")
    raw = project.repo / "data/raw"
    classes = classes_for(n)
    write_images(raw, bases, 0, n, classes)
    seconds, _ = run(project, "add", "data/raw")
    table.add("scale", f"{label}: data/raw ; `dvc add data/raw`",
              f"{folder_bytes(raw) / 2**20:8.0f} MiB ; {seconds:.1f} s")
    stages = ("split", "decode") if full else ("split",)
    for stage in stages:
        repro_row(table, project, stage, f"{label}: first")
    commit(project, "first data")
    if full:
        one, _ = decoded_disk(project.repo)
        table.add("scale", f"{label}: decoded store (224 px crop, jpeg q90) vs the JPEGs",
                  f"{one / 2**20:8.1f} MiB = {one / folder_bytes(raw):.2f}x data/raw")
    for change, label_change in (("grow", "+1%"), ("shrink", "-1%")):
        step = max(n // 100, 1)
        if change == "grow":
            write_images(raw, bases, n, n + step, classes)
        else:
            for i in range(0, step * 7, 7):  # old images, spread over the classes
                image_path(raw, i, classes).unlink()
        seconds, _ = run(project, "add", "data/raw")
        table.add("scale", f"{label}: {label_change} images: `dvc add data/raw`", f"{seconds:6.1f} s")
        for stage in stages:
            repro_row(table, project, stage, f"{label}: {label_change}:")
        commit(project, f"data {label_change}")
        if full:
            one, disk = decoded_disk(project.repo)
            table.add("scale", f"{label}: after {label_change}: decoded data on disk (workspace + DVC cache, "
                               f"all versions) / one copy", f"{disk / 2**20:8.1f} / {one / 2**20:.1f} MiB = "
                                                           f"{disk / one:.3f}x")
    seconds, _ = run(project, "status")
    table.add("scale", f"{label}: `dvc status` (nothing changed)", f"{seconds:6.2f} s")
    if full:
        one_thread, all_threads = loader_rate(project.repo)
        table.add("scale", f"{label}: train data path, 224 px batches of 256: per CPU-second (1 thread) / "
                           f"wall ({os.cpu_count()} threads)", f"{one_thread:6.0f} / {all_threads:.0f} img/s")
    if not keep:
        shutil.rmtree(project.repo, ignore_errors=True)


def main(argv: list[str] | None = None) -> Table:
    """Run the scale benchmark; returns its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[2000, 8000, 32000],
                        help="image counts for the whole benchmark (split and decode)")
    parser.add_argument("--data-only", type=int, nargs="*", default=[128000],
                        help="image counts for the data part only (dvc add, split, dvc status); 0 for none")
    parser.add_argument("--work", default=None, help="scratch folder, kept afterwards (default: a temporary one)")
    args = parser.parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="imgclf-scale-"))
    print(machine_line(), f"load average {os.getloadavg()[0]:.1f}")
    table = Table()
    bases = base_photos(work / "bases", min(DISTINCT, max(args.sizes + args.data_only + [1])))
    for n in args.sizes:
        bench_size(table, work, bases, n, full=True, keep=bool(args.work))
    for n in args.data_only:
        if n:
            bench_size(table, work, bases, n, full=False, keep=bool(args.work))
    table.add("scale", "load average (1 min) at the end", f"{os.getloadavg()[0]:.1f}")
    print("\n" + table.markdown())
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return table


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
