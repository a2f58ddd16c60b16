"""The evaluate and predict stages' logic: a saved model scored on the test split, or run over a folder."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from imgclf.artifacts import atomic_open
from imgclf.calibration import (calibrated_probabilities, expected_calibration_error,
                                reliability_table)
from imgclf.checkpoint import load_checkpoint
from imgclf.config import EvaluateConfig, PredictConfig
from imgclf.data import list_images, read_classes, read_split
from imgclf.datasets import ImageListDataset, TolerantImageDataset
from imgclf.engine import autocast, loader_options, predict_logits
from imgclf.errors import DataError
from imgclf.metrics import classification_metrics, report_text
from imgclf.model import select_device
from imgclf.transforms import ModelInput


@dataclass
class Evaluation:
    """What the evaluate stage writes: metrics, per-image results, the text report, reliability tables."""

    metrics: dict
    samples: pd.DataFrame  # path, actual, predicted, confidence (calibrated)
    report: str
    reliability: dict[str, pd.DataFrame]  # "uncalibrated" and "calibrated" reliability diagrams


def evaluate_model(model_path: str | os.PathLike, test_csv: str | os.PathLike, classes_path: str | os.PathLike,
                   cfg: EvaluateConfig) -> Evaluation:
    """Score the model on the test split, with its confidence calibration before and after temperature scaling."""
    device = select_device(cfg.device)
    model, meta = load_checkpoint(model_path, device)
    classes = meta["classes"]
    if read_classes(classes_path) != classes:
        raise DataError(f"{classes_path}: classes differ from those {model_path} was trained on; "
                        f"retrain the model")
    frame = read_split(test_csv, classes)
    # The test images are decoded from their files, exactly as predict decodes new images.
    dataset = ImageListDataset(frame["path"], frame["target"], meta["image_size"])
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False,
                        **loader_options(cfg.num_workers, device))
    prepare = ModelInput(meta["mean"], meta["std"], device)
    logits, targets = predict_logits(model, loader, prepare, device, desc="evaluate")
    predicted = logits.argmax(1).numpy()
    loss = F.cross_entropy(logits, targets).item()
    metrics = classification_metrics(targets.numpy(), predicted, classes, loss)
    raw = calibrated_probabilities(logits, 1.0)
    calibrated = calibrated_probabilities(logits, meta["temperature"])
    metrics.update(temperature=meta["temperature"], ece=expected_calibration_error(raw, targets),
                   ece_calibrated=expected_calibration_error(calibrated, targets),
                   loss_calibrated=F.cross_entropy(logits / meta["temperature"], targets).item())
    samples = pd.DataFrame({"path": frame["path"], "actual": frame["label"],
                            "predicted": [classes[i] for i in predicted],
                            "confidence": calibrated.max(1).values.numpy().round(6)})
    reliability = {"uncalibrated": reliability_table(raw, targets), "calibrated": reliability_table(calibrated, targets)}
    return Evaluation(metrics, samples, report_text(targets.numpy(), predicted, classes), reliability)


def predict_folder(model_path: str | os.PathLike, input_dir: str | os.PathLike, output_path: str | os.PathLike,
                   cfg: PredictConfig) -> dict[str, int]:
    """Classify every file under `input_dir`, streaming rows to `output_path`; returns ok/uncertain/error counts.

    Probabilities are temperature-calibrated; a row whose confidence is below `cfg.min_confidence`
    keeps its prediction but gets the status `uncertain`, for a human to review.
    """
    device = select_device(cfg.device)
    model, meta = load_checkpoint(model_path, device)
    classes: Sequence[str] = meta["classes"]
    paths = list_images(input_dir)
    dataset = TolerantImageDataset(paths, meta["image_size"])
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False,
                        **loader_options(cfg.num_workers, device))
    prepare = ModelInput(meta["mean"], meta["std"], device)
    counts = {"ok": 0, "uncertain": 0, "error": 0}
    temperature = meta["temperature"]
    with atomic_open(output_path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "prediction", "confidence", *[f"prob_{c}" for c in classes], "status"])
        position = 0
        with torch.no_grad():
            for images, errors in tqdm(loader, desc="predict", unit="batch", mininterval=1.0):
                with autocast(device):
                    logits = model(prepare(images))
                probabilities = calibrated_probabilities(logits, temperature).cpu()
                # Rows are written batch by batch: memory does not grow with the number of images.
                for probs, error in zip(probabilities.tolist(), errors):
                    path = paths[position]
                    position += 1
                    if error:
                        counts["error"] += 1
                        writer.writerow([path, "", "", *[""] * len(classes), error])
                        continue
                    best = max(range(len(classes)), key=probs.__getitem__)
                    status = "uncertain" if probs[best] < cfg.min_confidence else "ok"
                    counts[status] += 1
                    writer.writerow([path, classes[best], f"{probs[best]:.6f}",
                                     *[f"{p:.6f}" for p in probs], status])
    return counts
