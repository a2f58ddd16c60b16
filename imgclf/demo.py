"""The built-in demo dataset: scikit-learn's handwritten digits written as an imbalanced image folder."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from imgclf.config import param


@dataclass(frozen=True)
class DemoConfig:
    """Params of the `demo` stage: the built-in digits dataset."""

    seed: int = param("seed for which images are kept and held back", ge=0)
    num_classes: int = param("how many digit classes to write (0..num_classes-1)", ge=2, le=10)
    max_per_class: int = param("images kept for the largest class (digit 0)", ge=3)
    imbalance: float = param("largest class count / smallest class count", ge=1)
    image_size: int = param("side in pixels of the written PNGs (upscaled from 8x8)", ge=8, le=1024)
    predict_fraction: float = param("share of each class held back, unlabeled, in data/predict", ge=0, lt=1)


def class_counts(cfg: DemoConfig, available: list[int]) -> list[int]:
    """Images kept per class: falling linearly from max_per_class to max_per_class/imbalance."""
    counts = []
    for k, have in enumerate(available):
        share = 1.0 if len(available) == 1 else k / (len(available) - 1)
        ratio = 1.0 + share * (cfg.imbalance - 1.0)
        counts.append(min(have, max(1, int(round(cfg.max_per_class / ratio)))))
    return counts


def digit_image(pixels: np.ndarray, size: int) -> Image.Image:
    """Turn one 8x8 digit (values 0..16) into dark ink on white paper, upscaled to size x size."""
    gray = (255 - np.clip(pixels, 0, 16) * 255 / 16).astype(np.uint8)
    return Image.fromarray(gray, mode="L").resize((size, size), Image.Resampling.BICUBIC)


def write_demo(cfg: DemoConfig, raw_dir: Path, predict_dir: Path) -> dict[str, int]:
    """Write data/raw/<digit>/*.png and unlabeled data/predict/*.png; return counts per folder."""
    from sklearn.datasets import load_digits  # ships with scikit-learn: no download

    digits = load_digits()
    rng = np.random.default_rng(cfg.seed)
    indices = [np.flatnonzero(digits.target == k) for k in range(cfg.num_classes)]
    counts = class_counts(cfg, [len(ix) for ix in indices])

    # Build both folders beside their targets, then swap them in, so a failure leaves the old ones.
    staging = {}
    for final in (raw_dir, predict_dir):
        final.parent.mkdir(parents=True, exist_ok=True)
        staging[final] = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        held_back = []
        written = {}
        for k, (ix, count) in enumerate(zip(indices, counts)):
            chosen = rng.permutation(ix)[:count]
            n_predict = int(round(count * cfg.predict_fraction))
            held_back.extend(chosen[:n_predict].tolist())
            class_dir = staging[raw_dir] / str(k)
            class_dir.mkdir()
            for i in sorted(chosen[n_predict:].tolist()):
                digit_image(digits.images[i], cfg.image_size).save(class_dir / f"digit_{i:04d}.png")
            written[str(k)] = count - n_predict
        # Names are shuffled sample numbers: they must not reveal the class.
        for n, i in enumerate(rng.permutation(held_back).tolist()):
            digit_image(digits.images[i], cfg.image_size).save(staging[predict_dir] / f"image_{n:04d}.png")
        written["predict"] = len(held_back)
        for final, tmp in staging.items():
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
    finally:
        for tmp in staging.values():
            shutil.rmtree(tmp, ignore_errors=True)
    return written
