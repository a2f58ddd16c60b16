"""The predict stage's logic: a saved model run over image files, rows streamed to a CSV.

The model is `model.pt` (PyTorch) or `model.onnx` (ONNX Runtime, exported by the export stage): with
an .onnx model torch is never imported, so predicting needs only requirements-predict.txt. Both
read the images with the model's `images.Geometry`, the definition that prepared the training images.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from imgclf.artifacts import atomic_open
from imgclf.config import Device, param
from imgclf.errors import ignore_interrupts
from imgclf.images import Geometry, list_inputs, load_input_or_error

# Imported only for the model format in use (torch for .pt, onnxruntime for .onnx); listed so that
# dvc.yaml's dependency check sees them (tests/unit/test_dvc_yaml.py).
LAZY_IMPORTS = ("imgclf.checkpoint", "imgclf.onnx_model")


@dataclass(frozen=True)
class PredictConfig:
    """Params of the `predict` stage."""

    batch_size: int = param("images per forward pass", ge=1)
    min_confidence: float = param("rows whose calibrated confidence is below this get status `uncertain`",
                                 ge=0, le=1)
    num_workers: int = param("processes decoding images beside the model (0: the main process)", ge=0)
    device: Device = param("auto: cuda, then mps, then cpu; cuda:N for one GPU of several (model.pt only)")


@dataclass
class Classifier:
    """What predict needs of a model: its classes, its images' geometry, calibrated probabilities of a uint8 batch."""

    classes: list[str]
    geometry: Geometry
    probabilities: Callable[[np.ndarray], np.ndarray]


def open_classifier(model_path: str | os.PathLike, device: str) -> Classifier:
    """model.onnx through ONNX Runtime (no torch), anything else as a model.pt checkpoint through PyTorch."""
    if str(model_path).lower().endswith(".onnx"):
        from imgclf.onnx_model import OnnxClassifier

        model = OnnxClassifier(model_path)
        return Classifier(model.classes, model.geometry, model.probabilities)
    from imgclf.checkpoint import checkpoint_classifier

    classes, geometry, probabilities = checkpoint_classifier(model_path, device)
    return Classifier(classes, geometry, probabilities)


def image_batches(paths: Sequence[str], geometry: Geometry, batch_size: int,
                  workers: int = 0) -> Iterator[tuple[np.ndarray, list[str]]]:
    """(uint8 N x 3 x I x I, errors) batches of `paths` in order; an unreadable file is a blank image and why ("" if
    none)."""
    tasks = [(path, geometry) for path in paths]
    image_size = geometry.input_size
    pool = multiprocessing.get_context("fork").Pool(workers, initializer=ignore_interrupts) if workers else None
    try:
        results = pool.imap(load_input_or_error, tasks, chunksize=8) if pool else map(load_input_or_error, tasks)
        batch: list[tuple[np.ndarray | None, str]] = []
        for item in results:
            batch.append(item)
            if len(batch) == batch_size:
                yield _stack(batch, image_size)
                batch = []
        if batch:
            yield _stack(batch, image_size)
    finally:
        if pool:
            pool.terminate()


def _stack(items: list[tuple[np.ndarray | None, str]], image_size: int) -> tuple[np.ndarray, list[str]]:
    blank = np.zeros((3, image_size, image_size), dtype=np.uint8)
    return np.stack([pixels if pixels is not None else blank for pixels, _ in items]), [e for _, e in items]


def predict_files(model_path: str | os.PathLike, inputs: Sequence[str | os.PathLike], output_path: str | os.PathLike,
                  cfg: PredictConfig) -> dict[str, int]:
    """Classify every file of `inputs` (files, and folders searched recursively), streaming rows to `output_path`.

    Probabilities are temperature-calibrated; a row whose confidence is below `cfg.min_confidence`
    keeps its prediction but gets the status `uncertain`, for a human to review. Returns the counts
    of ok, uncertain and error rows.
    """
    paths = list_inputs(inputs)
    model = open_classifier(model_path, cfg.device)
    classes = model.classes
    counts = {"ok": 0, "uncertain": 0, "error": 0}
    with atomic_open(output_path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "prediction", "confidence", *[f"prob_{c}" for c in classes], "status"])
        rows = iter(paths)
        batches = image_batches(paths, model.geometry, cfg.batch_size, cfg.num_workers)
        for images, errors in tqdm(batches, total=-(-len(paths) // cfg.batch_size), desc="predict", unit="batch",
                                   mininterval=1.0):
            # Rows are written batch by batch: memory does not grow with the number of images.
            for probs, error in zip(model.probabilities(images).tolist(), errors):
                path = next(rows)
                if error:
                    counts["error"] += 1
                    writer.writerow([path, "", "", *[""] * len(classes), f"error: {error}"])
                    continue
                best = max(range(len(classes)), key=probs.__getitem__)
                status = "uncertain" if probs[best] < cfg.min_confidence else "ok"
                counts[status] += 1
                writer.writerow([path, classes[best], f"{probs[best]:.6f}", *[f"{p:.6f}" for p in probs], status])
    return counts
