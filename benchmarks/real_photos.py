"""A folder of real photos of our own making: crops of the real photos scikit-image and scikit-learn ship (no download).

Six classes, each cut from its own photos (cat: scikit-image's Chelsea; coffee; rocket; motorcycle: both views of
the stereo pair; china and flower: scikit-learn's two samples), every image a different random crop (10-80% of
the area, any aspect within 3:4..4:3), mirrored or not, rotated a little, its exposure, contrast and colour
jittered, resized to a photo-like side and saved as a JPEG of random quality. Out-of-set photos come from the
others (astronaut, Hubble deep field, retina, tissue, cameraman, coins, brick, grass, gravel): images of no class.

    python -m benchmarks.real_photos photos/ --per-class 170 --unlabeled unlabeled/ --out-of-set 40
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

CLASSES = {"cat": ("chelsea",), "coffee": ("coffee",), "rocket": ("rocket",),
           "motorcycle": ("motorcycle_left", "motorcycle_right"), "china": ("china",), "flower": ("flower",)}
OUT_OF_SET = ("astronaut", "hubble_deep_field", "retina", "immunohistochemistry", "camera", "coins", "brick",
              "grass", "gravel")


@functools.cache
def source(name: str) -> Image.Image:
    """One of the shipped photos as an RGB image."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(f"{name}.jpg"))
    import skimage.data

    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        return Image.fromarray(left if name.endswith("left") else right)
    pixels = getattr(skimage.data, name)()
    return Image.fromarray(pixels).convert("RGB")


def _crop(rng: np.random.Generator, name: str, min_area: float, max_area: float) -> tuple[int, int, int, int]:
    """(left, top, width, height) of a random crop of source photo `name`, drawn from `rng`."""
    width, height = source(name).size
    area = width * height * rng.uniform(min_area, max_area)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    w, h = min(width, int(round(np.sqrt(area * aspect)))), min(height, int(round(np.sqrt(area / aspect))))
    return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h


def crop_box(name: str, seed: int, min_area: float = 0.1, max_area: float = 0.8) -> tuple[int, int, int, int]:
    """(left, top, width, height) of photo(name, seed)'s crop in its source photo: the ground truth of overlap."""
    return _crop(np.random.default_rng(seed), name, min_area, max_area)


def photo(name: str, seed: int, min_area: float = 0.1, max_area: float = 0.8) -> Image.Image:
    """A random crop of source photo `name`, jittered as a camera and an editor would, at a photo-like size."""
    rng = np.random.default_rng(seed)
    left, top, w, h = _crop(rng, name, min_area, max_area)
    image = source(name).crop((left, top, left + w, top + h))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = image.rotate(float(rng.uniform(-12, 12)), Image.Resampling.BILINEAR, expand=False)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(float(rng.uniform(0.7, 1.3)))
    side = int(rng.integers(320, 720))  # the longer side
    scale = side / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.BICUBIC)


def _write(task: tuple[str, int, str, float, float]) -> None:
    name, seed, path, min_area, max_area = task
    quality = int(np.random.default_rng(seed + 1).integers(70, 96))
    photo(name, seed, min_area, max_area).save(path, "JPEG", quality=quality)


def write_real_photos(root: str | Path, per_class: int, seed: int = 0, classes: dict | None = None) -> list[Path]:
    """`per_class` photos under root/<class>/ for each class; returns their paths (written on all cores)."""
    root, tasks = Path(root), []
    for k, (label, names) in enumerate((classes or CLASSES).items()):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            tasks.append((names[i % len(names)], seed * 1_000_003 + k * 10_007 + i,
                          str(root / label / f"IMG_{i:04d}.jpg"), 0.1, 0.8))
    _run(tasks)
    return [Path(task[2]) for task in tasks]


def write_out_of_set(root: str | Path, count: int, seed: int = 1) -> list[Path]:
    """`count` photos of no class (OUT_OF_SET's sources, in turn) directly under `root`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tasks = [(OUT_OF_SET[i % len(OUT_OF_SET)], seed * 7_919 + i, str(root / f"other_{i:04d}.jpg"), 0.2, 0.9)
             for i in range(count)]
    _run(tasks)
    return [Path(task[2]) for task in tasks]


def _run(tasks: list) -> None:
    for name in {task[0] for task in tasks}:
        source(name)  # loaded once here, shared by the forked workers
    with multiprocessing.get_context("fork").Pool() as pool:
        pool.map(_write, tasks, chunksize=16)


def main(argv: list[str] | None = None) -> None:
    """Write a photo folder (and optionally unlabeled in-set and out-of-set photos) for trying the pipeline."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="the folder to fill: root/<class>/*.jpg")
    parser.add_argument("--per-class", type=int, default=170)
    parser.add_argument("--unlabeled", default=None, help="a folder for unlabeled photos: new ones of the classes, "
                                                          "and --out-of-set photos of no class")
    parser.add_argument("--out-of-set", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = write_real_photos(args.root, args.per_class, args.seed)
    print(f"wrote {len(paths)} photos of {len(CLASSES)} classes under {args.root}")
    if args.unlabeled:
        inside = write_real_photos(Path(args.unlabeled) / "of_the_classes", max(1, args.out_of_set // 6),
                                   args.seed + 100)
        outside = write_out_of_set(Path(args.unlabeled) / "of_no_class", args.out_of_set, args.seed + 200)
        print(f"wrote {len(inside)} unlabeled photos of the classes and {len(outside)} of no class under "
              f"{args.unlabeled}")


if __name__ == "__main__":
    main()
