"""The predict stage's logic: a saved model run over every file under a folder, rows streamed to a CSV."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import Sequence

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from imgclf.artifacts import atomic_open
from imgclf.batches import TolerantImageDataset
from imgclf.calibration import calibrated_probabilities
from imgclf.checkpoint import load_checkpoint
from imgclf.config import Device, param
from imgclf.images import list_images
from imgclf.inference import autocast, loader_options, select_device
from imgclf.transforms import ModelInput


@dataclass(frozen=True)
class PredictConfig:
    """Params of the `predict` stage."""

    batch_size: int = param("images per forward pass", ge=1)
    min_confidence: float = param("rows whose calibrated confidence is below this get status `uncertain`",
                                 ge=0, le=1)
    num_workers: int = param("DataLoader worker processes", ge=0)
    device: Device = param("auto: cuda, then mps, then cpu; cuda:N for one GPU of several")


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
