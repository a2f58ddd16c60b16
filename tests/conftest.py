"""Shared fixtures: the repository on sys.path, tiny image folders and tiny checkpoints."""

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_png(path: Path, value: int, size: int = 16) -> Path:
    """Write a small RGB PNG whose pixels encode `value` (so classes are learnable and distinct)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    pixels = (rng.integers(0, 40, (size, size, 3)) + value * 60 % 200).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """data/raw with classes a (12 images), b (8) and c (5)."""
    root = tmp_path / "raw"
    for label, count in (("a", 12), ("b", 8), ("c", 5)):
        for i in range(count):
            write_png(root / label / f"{label}{i:02d}.png", "abc".index(label) * 100 + i)
    return root


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """A model.pt of an untrained resnet18 for classes a, b, c at 16 px."""
    from imgclf.checkpoint import save_checkpoint
    from imgclf.model import build_model
    from imgclf.transforms import IMAGENET_MEAN, IMAGENET_STD

    model = build_model("resnet18", 3, 0.1)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, arch="resnet18", classes=["a", "b", "c"], image_size=16,
                    mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), dropout=0.1,
                    params={"lr": 0.001}, best_epoch=1, epochs_run=1)
    return path
