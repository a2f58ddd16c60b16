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
                    params={"lr": 0.001}, best_epoch=1, epochs_run=1, temperature=1.0)
    return path


@pytest.fixture
def prepared(tmp_path: Path, image_folder: Path) -> Path:
    """What the train stage reads, on disk: split/*.csv, classes.json, weights.json, decoded/ at 16 px."""
    import json

    from imgclf.data import split_image_folder
    from imgclf.decode import decode_split

    result = split_image_folder(image_folder, 0.2, 0.2, seed=0, workers=1)
    split = tmp_path / "split"
    split.mkdir()
    for name, frame in result.parts.items():
        frame.to_csv(split / f"{name}.csv", index=False)
    (split / "classes.json").write_text(json.dumps(result.classes))
    (tmp_path / "weights.json").write_text(json.dumps(
        {"classes": {c: {"count": 1, "weight": 1.0} for c in result.classes}}))
    decode_split(split, tmp_path / "decoded", 16, workers=1)
    return tmp_path
