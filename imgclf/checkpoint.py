"""The model.pt format: a state_dict plus everything needed to rebuild and feed the model, loaded safely."""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from imgclf.artifacts import atomic_open
from imgclf.calibration import calibrated_probabilities
from imgclf.errors import DataError
from imgclf.images import Geometry
from imgclf.inference import evaluation_precision, select_device, with_tta
from imgclf.model import build_model
from imgclf.transforms import ModelInput, memory_format

FORMAT = "imgclf.checkpoint/2"  # /2: adds the calibration temperature
METADATA_KEYS = ("arch", "classes", "image_size", "mean", "std", "dropout", "params", "best_epoch",
                 "epochs_run", "temperature")


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **metadata: Any) -> None:
    """Write model.pt atomically: {format, state_dict, arch, classes, image_size, mean, std, ...}.

    image_size is the model's input side; stored_size, resize and reducing_gap (optional: files
    written before them mean squash at image_size, and their legacy decode) complete its images'
    geometry, images.Geometry.
    """
    missing = [key for key in METADATA_KEYS if key not in metadata]
    if missing:
        raise ValueError(f"checkpoint metadata lacks {missing}")
    state = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
    with atomic_open(path, "wb") as handle:
        torch.save({"format": FORMAT, "state_dict": state, **metadata}, handle)


def checkpoint_classifier(path: str | os.PathLike, device_name: str, precision: str = "fp32", tta: str = "none") \
        -> tuple[list[str], Geometry, Callable[[np.ndarray], np.ndarray]]:
    """model.pt as predict uses it: (classes, its images' geometry, calibrated probabilities of a uint8 batch).

    float32 unless `precision` opts in to bf16/fp16 (inference.evaluation_precision); `tta` hflip
    averages each image's and its mirror's logits (inference.HFlipTTA).
    """
    device = select_device(device_name)
    model, meta = load_checkpoint(path, device)
    model = with_tta(model, tta)
    prepare = ModelInput(meta["mean"], meta["std"], device)

    def probabilities(images: np.ndarray) -> np.ndarray:
        with torch.no_grad(), evaluation_precision(device, precision):
            logits = model(prepare(torch.from_numpy(images)))
        return calibrated_probabilities(logits, meta["temperature"]).cpu().numpy()

    return meta["classes"], Geometry.of(meta), probabilities


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Load model.pt with weights_only=True (never unpickling code); return (model in eval mode, metadata)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: model file not found (run the train stage first)") from None
    except Exception as err:  # weights_only refuses anything but tensors and plain containers
        raise DataError(f"{path}: refused to load model file: not a plain-data checkpoint "
                        f"({str(err).splitlines()[0][:200]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(f"{path}: not a model file of this pipeline (format {FORMAT} expected)")
    missing = [key for key in METADATA_KEYS + ("state_dict",) if key not in data]
    if missing:
        raise DataError(f"{path}: model file lacks {', '.join(missing)}")
    temperature = data["temperature"]
    if not isinstance(temperature, float) or not 0 < temperature < float("inf"):
        raise DataError(f"{path}: model file's temperature must be a positive number, got {temperature!r}")
    classes = data["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise DataError(f"{path}: model file's classes must be a non-empty list of names")
    state = data["state_dict"]
    for key, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise DataError(f"{path}: model weights contain NaN or infinity (in {key})")
    model = build_model(data["arch"], len(classes), float(data["dropout"]), pretrained="none")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise DataError(f"{path}: weights do not match {data['arch']} with {len(classes)} classes "
                        f"({str(err).splitlines()[0][:200]})") from None
    metadata = {key: value for key, value in data.items() if key not in ("state_dict", "format")}
    device = torch.device(device)
    return model.to(device, memory_format=memory_format(device)).eval(), metadata
