"""Speed benchmark: the pipeline's data path and stages against the classic hand-written loop.

Prints one table. Everything it measures runs side by side in this one process (or in stage
subprocesses it starts), with the same model, image size, batch size and torch threads:

  train       images/s over full epochs: classic loop, the train stage's loop, synthetic tensors
  weights     compute_weights vs class weights found by iterating an ImageFolder dataset
  predict     the predict stage's images/s and peak memory at 1,000 and at 10,000 images
  split       the split stage at 10,000 images: first run, then after adding 1% new images
  noop        a no-op `dvc repro` at 1,000 and at 100,000 images

Usage (from the repository root, in the project's virtual environment):
    python benchmarks/benchmark.py                      # everything, about 15 minutes on 2 cores
    python benchmarks/benchmark.py --sections train     # one section
All data is generated locally (scikit-learn's sample photos and digits); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imgclf.config import AugmentConfig, DemoConfig, load_section  # noqa: E402
from imgclf.decode import decode_images  # noqa: E402
from imgclf.demo import write_demo  # noqa: E402
from imgclf.engine import autocast_dtype, identity, train_one_epoch  # noqa: E402
from imgclf.model import build_model  # noqa: E402
from imgclf.training import make_train_batches  # noqa: E402
from imgclf.transforms import IMAGENET_MEAN, IMAGENET_STD, BatchRandomAffine, ModelInput, memory_format  # noqa: E402

AUGMENT = AugmentConfig(hflip=False, rotation=10, translate=0.1, scale=0.1)  # params.yaml's defaults
ROWS: list[tuple[str, str, str]] = []


def report(section: str, what: str, value: str) -> None:
    """Record one row of the final table and show it at once."""
    ROWS.append((section, what, value))
    print(f"  {section:8} {what:62} {value}", flush=True)


# --- data ---------------------------------------------------------------------------------------

def _photo(task: tuple[int, int, int, str]) -> None:
    """Write one photo-like JPEG: a random crop of a scikit-learn sample photo, jittered, at width x height."""
    index, width, height, path = task
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(index)
    sources = _photo.sources if hasattr(_photo, "sources") else load_sample_images().images
    _photo.sources = sources
    label = index % 4  # class = which photo x mirrored or not: learnable, and balanced enough
    image = Image.fromarray(sources[label // 2])
    w, h = image.size
    crop_w = int(w * rng.uniform(0.6, 1.0))
    crop_h = int(min(h, crop_w * height / width))
    left, top = int(rng.integers(0, w - crop_w + 1)), int(rng.integers(0, h - crop_h + 1))
    image = image.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.Resampling.BICUBIC)
    if label % 2:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.asarray(image, dtype=np.float32) * rng.uniform(0.8, 1.2) + rng.normal(0, 4, (height, width, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)


def write_photos(root: Path, count: int, width: int, height: int, start: int = 0) -> list[Path]:
    """`count` JPEGs under root/<class>/ (4 classes), generated on all cores."""
    tasks = []
    for index in range(start, start + count):
        path = root / f"class{index % 4}" / f"photo_{index:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        tasks.append((index, width, height, str(path)))
    with multiprocessing.get_context("fork").Pool() as pool:
        pool.map(_photo, tasks, chunksize=32)
    return [Path(t[3]) for t in tasks]


def write_tiny_pngs(root: Path, count: int, classes: int = 10) -> None:
    """`count` distinct 8x8 noise PNGs under root/<class>/, for the file-count benchmarks."""
    rng = np.random.default_rng(0)
    for k in range(classes):
        (root / f"c{k}").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, "PNG", compress_level=1)
        (root / f"c{index % classes}" / f"{index:06d}.png").write_bytes(buffer.getvalue())


def image_folder_files(root: Path) -> tuple[list[str], list[int], list[str]]:
    """(paths, targets, classes) of an ImageFolder tree, in ImageFolder's order."""
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(root))
    return [p for p, _ in folder.samples], [t for _, t in folder.samples], folder.classes


# --- train throughput ---------------------------------------------------------------------------

def classic_loader(root: Path, image_size: int, batch_size: int):
    """What users write: ImageFolder + PIL transforms, weights by iterating the dataset, DataLoader defaults."""
    from torch.utils.data import DataLoader, WeightedRandomSampler
    from torchvision import datasets, transforms as T

    dataset = datasets.ImageFolder(str(root), transform=T.Compose([
        T.Resize((image_size, image_size)),
        T.RandomAffine(AUGMENT.rotation, translate=(AUGMENT.translate,) * 2,
                       scale=(1 - AUGMENT.scale, 1 + AUGMENT.scale), fill=255),
        T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]))
    counts = np.bincount(dataset.targets)
    weights = [1.0 / counts[t] for t in dataset.targets]  # from .targets: iterating is timed in `weights`
    sampler = WeightedRandomSampler(weights, num_samples=len(dataset), replacement=True)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler)


def classic_epoch(model, loader, criterion, optimizer, device) -> None:
    """The classic training loop body, as tutorials write it."""
    model.train()
    running = 0.0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = criterion(model(images), labels)
        loss.backward()
        optimizer.step()
        running += loss.item() * images.size(0)


def timed_epochs(runners: dict, images_per_epoch: int, epochs: int, device: torch.device) -> dict[str, float]:
    """Images/s per variant over full epochs, run round-robin so that all see the same machine load.

    The first round is a warm-up (allocator, cuDNN autotuning) and not counted; the median of the
    remaining epochs is reported.
    """
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for round_ in range(epochs + 1):
        for name, run_epoch in runners.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            run_epoch()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if round_:
                rates[name].append(images_per_epoch / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def bench_train(name: str, root: Path, args, work: Path) -> None:
    """Classic loop vs the train stage's data path and loop vs synthetic tensors, on one image folder."""
    device = torch.device(args.device)
    size, batch = args.image_size if name == "photos" else 32, args.batch_size
    paths, targets, classes = image_folder_files(root)
    n = len(paths)
    criterion = torch.nn.CrossEntropyLoss()

    def fresh_model(channels_last: bool):
        torch.manual_seed(0)
        model = build_model(args.arch, len(classes), 0.2).to(device)
        if channels_last:
            model = model.to(memory_format=memory_format(device))
        return model, torch.optim.Adam(model.parameters(), lr=5e-4)

    # 1. The classic loop: fp32, contiguous, decode + resize + augment every image every epoch.
    classic_model, classic_optimizer = fresh_model(False)
    loader = classic_loader(root, size, batch)

    # 2. The train stage: decoded once by the decode stage's code, then batches, augmentation on the device.
    start = time.perf_counter()
    decode_images(paths, size, work / f"{name}.npy", desc=f"decode {name}")
    decode_seconds = time.perf_counter() - start
    images = np.load(work / f"{name}.npy", mmap_mode="r")
    weights = [len(targets) / c for c in np.bincount(targets)]
    generator = torch.Generator().manual_seed(0)
    cfg = argparse.Namespace(balance="sampler", batch_size=batch)
    batches = make_train_batches(images, targets, cfg, weights, generator, device)
    prepare = ModelInput(IMAGENET_MEAN, IMAGENET_STD, device)
    augment = BatchRandomAffine(AUGMENT, prepare.fill(), generator)
    model, optimizer = fresh_model(True)
    # Loss scaling only for fp16 (GPUs without bf16), as the train stage does.
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype(args.precision, device) == torch.float16)

    # 3. The compute limit: the same model step on one batch already on the device and normalised,
    # reused for every step (as timm's synthetic benchmark); with the train stage's settings and
    # with the classic loop's (fp32, contiguous). Same number of steps and images per epoch.
    limit_model, limit_optimizer = fresh_model(True)
    one = prepare(torch.from_numpy(images[:batch].copy()))
    labels = torch.as_tensor(targets[:batch], device=device)
    synthetic = [(one[:len(t)], labels[:len(t)]) for _, t in batches]
    classic_limit_model, classic_limit_optimizer = fresh_model(False)
    synthetic_fp32 = [(x.contiguous(), t) for x, t in synthetic]

    rates = timed_epochs({
        "classic": lambda: classic_epoch(classic_model, loader, criterion, classic_optimizer, device),
        "ours": lambda: train_one_epoch(model, batches, prepare, criterion, optimizer, device, scaler,
                                        args.precision, augment, desc=f"{name} train"),
        "limit": lambda: train_one_epoch(limit_model, synthetic, identity, criterion, limit_optimizer, device,
                                         scaler, args.precision, identity, desc=f"{name} synthetic"),
        "classic_limit": lambda: classic_epoch(classic_limit_model, synthetic_fp32, criterion,
                                               classic_limit_optimizer, device),
    }, n, args.epochs, device)
    classic, ours, limit, limit_classic = (rates[k] for k in ("classic", "ours", "limit", "classic_limit"))
    # The train stage's data path alone (gather, normalise, augment; no model): what it adds per image.
    data_only = timed_epochs({"data": lambda: [augment(prepare(x)) for x, _ in batches]}, n, args.epochs,
                             device)["data"]

    label = f"{name} ({n} imgs, {size} px, {args.arch}, batch {batch})"
    report("train", f"{label}: classic loop", f"{classic:8.1f} img/s")
    report("train", f"{label}: train stage", f"{ours:8.1f} img/s  ({ours / classic:.2f}x classic)")
    report("train", f"{label}: synthetic tensors (limit)", f"{limit:8.1f} img/s")
    report("train", f"{label}: loader efficiency, train stage", f"{ours / limit:8.3f}")
    report("train", f"{label}: train stage data path alone", f"{data_only:8.0f} img/s  "
           f"({1 / data_only / (1 / data_only + 1 / limit):.1%} of a step's time)")
    report("train", f"{label}: loader efficiency, classic loop", f"{classic / limit_classic:8.3f}")
    report("train", f"{label}: decode stage, once", f"{decode_seconds:8.1f} s ({n / decode_seconds:.0f} img/s)")


# --- stages ----------------------------------------------------------------------------------------

def run_stage(args: list[str], cwd: Path) -> tuple[float, int, str]:
    """Run a stage script (seconds, peak RSS in MiB, output), measuring the child's own peak memory."""
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child of this
    # large process would report at least this process's size.
    probe = ("import re, runpy, sys; sys.argv = sys.argv[1:]\n"
             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "finally:\n    hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
             "    print('PEAK_KIB', hwm, file=sys.stderr)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", probe, *args], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    peak = int(re.search(r"PEAK_KIB (\d+)", done.stderr).group(1)) // 1024
    return seconds, peak, done.stdout + done.stderr


def bench_weights(root: Path, work: Path) -> None:
    """compute_weights (labels from the split CSV) vs weights found by iterating the dataset."""
    from torchvision import datasets, transforms as T

    from imgclf.data import read_split
    from imgclf.weights import count_labels, weights_document

    paths, targets, classes = image_folder_files(root)
    csv = work / "train.csv"
    csv.write_text("path,label\n" + "".join(f"{p},{classes[t]}\n" for p, t in zip(paths, targets)))
    start = time.perf_counter()
    counts = count_labels(read_split(csv, classes)["label"], classes)
    weights_document(classes, counts, "inverse", 0.999)
    ours = time.perf_counter() - start

    dataset = datasets.ImageFolder(str(root), transform=T.Compose([T.Resize((64, 64)), T.ToTensor()]))
    start = time.perf_counter()
    labels = [label for _, label in dataset]  # the classic recipe: every image decoded to read its label
    iterated = np.bincount(labels)
    classic = time.perf_counter() - start
    assert iterated.tolist() == counts, "both ways must find the same counts"
    report("weights", f"compute_weights from the split CSV ({len(paths)} imgs)", f"{ours * 1000:8.1f} ms")
    report("weights", "class counts by iterating the dataset (classic)",
           f"{classic * 1000:8.0f} ms  ({classic / ours:.0f}x slower)")


def bench_predict(root: Path, model: Path, work: Path) -> None:
    """The predict stage on 1,000 and on all images: images/s and the process's peak memory."""
    paths = sorted(root.rglob("*.jpg"))
    small = work / "predict_1k"
    small.mkdir(exist_ok=True)
    for path in paths[:1000]:
        target = small / path.name
        if not target.exists():
            os.link(path, target)
    for folder, count in ((small, 1000), (root, len(paths))):
        seconds, peak, _ = run_stage(["stages/predict.py", "--params", str(work / "params.yaml"), "--model",
                                      str(model), "--input", str(folder), "--output",
                                      str(work / f"predictions_{count}.csv")], ROOT)
        report("predict", f"predict stage, {count} imgs (incl. ~4 s start-up)",
               f"{count / seconds:8.1f} img/s, peak {peak} MiB")


def bench_split(root: Path, work: Path) -> None:
    """The split stage at 10,000 images, then after adding 1% new ones (validation cache)."""
    cache = work / "validation.json"
    args = ["stages/split.py", "--params", str(work / "params.yaml"), "--raw", str(root), "--out",
            str(work / "split"), "--validation-cache", str(cache)]
    cache.unlink(missing_ok=True)
    count = sum(1 for _ in root.rglob("*.jpg"))
    seconds, _, _ = run_stage(args, ROOT)
    report("split", f"split stage, {count} imgs, first run ({os.cpu_count()} processes)", f"{seconds:8.1f} s")
    added = write_photos(root, count // 100, 320, 240, start=10_000_000)
    seconds, _, out = run_stage(args, ROOT)
    decoded = re.search(r"(\d+) new or changed", out).group(1)
    report("split", f"split stage after adding {len(added)} imgs (1%)", f"{seconds:8.1f} s, decoded {decoded}")
    for path in added:
        path.unlink()


def bench_noop(count: int, work: Path) -> None:
    """A no-op `dvc repro` of the whole pipeline over `count` images, set up as the README says."""
    dvc = str(Path(sys.executable).with_name("dvc"))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    def sh(*cmd: str) -> float:
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
        return time.perf_counter() - start

    import yaml

    repo = work / f"noop_{count}"
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir()
    for name in ("params.yaml", ".dvcignore", ".gitignore"):
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
    report("noop", f"{count} imgs: dvc add data/raw, then first dvc repro", f"{add:8.1f} s, {first:.1f} s")
    report("noop", f"{count} imgs: no-op dvc repro (best of 3)", f"{noop:8.2f} s")
    report("noop", f"{count} imgs: dvc status (what a no-op repro checks)", f"{status:8.2f} s")
    # What dominates: each target alone (data/raw is checked twice: as data/raw.dvc and as split's dep).
    for target in ("data/raw.dvc", "split", "train"):
        alone = min(sh(dvc, "status", target) for _ in range(2))
        report("noop", f"{count} imgs: dvc status {target} alone", f"{alone:8.2f} s")
    shutil.rmtree(repo, ignore_errors=True)


# --- main ---------------------------------------------------------------------------------------------

def main() -> None:
    """Generate the data sets, run the chosen sections, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="train,weights,predict,split,noop")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64, help="training side for the photo set")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per variant (plus one warm-up)")
    parser.add_argument("--precision", default="auto", help="the train stage's precision param")
    parser.add_argument("--photos", type=int, default=1000, help="1024x768 JPEGs for the train section")
    parser.add_argument("--images", type=int, default=10_000, help="JPEGs for weights, predict and split")
    parser.add_argument("--noop-sizes", default="1000,100000")
    parser.add_argument("--datasets", default="demo,photos", help="train section data sets")
    parser.add_argument("--workdir", default=None, help="keep generated data here (default: a temp folder)")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="imgclf-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "none"
    print(f"machine: {os.cpu_count()} cores ({cpu}), GPU {gpu}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; device {args.device}, precision {args.precision}", flush=True)

    if "train" in sections:
        for name in args.datasets.split(","):
            root = work / name
            if not root.exists():
                if name == "demo":
                    cfg = load_section(ROOT / "params.yaml", "demo", DemoConfig)
                    write_demo(cfg, root, work / "demo_predict")
                else:
                    write_photos(root, args.photos, 1024, 768)
            bench_train(name, root, args, work)
    big = work / "images10k"
    if sections & {"weights", "predict", "split"} and not big.exists():
        write_photos(big, args.images, 320, 240)
    (work / "params.yaml").write_text((ROOT / "params.yaml").read_text().replace("device: auto", f"device: {args.device}"))
    if "weights" in sections:
        bench_weights(big, work)
    if "predict" in sections:
        from imgclf.checkpoint import save_checkpoint

        model = work / "model.pt"
        save_checkpoint(model, build_model(args.arch, 4, 0.2), arch=args.arch, classes=[f"class{k}" for k in range(4)],
                        image_size=args.image_size, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), dropout=0.2,
                        params={}, best_epoch=1, epochs_run=1, temperature=1.0)
        bench_predict(big, model, work)
    if "split" in sections:
        bench_split(big, work)
    if "noop" in sections:
        for count in map(int, args.noop_sizes.split(",")):
            bench_noop(count, work)

    print("\n| section | measurement | result |\n|---|---|---|")
    for row in ROWS:
        print(f"| {' | '.join(row)} |")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
