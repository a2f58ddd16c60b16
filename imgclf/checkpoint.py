"""The model.pt format: a state_dict plus everything needed to rebuild and feed the model, loaded safely."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

from imgclf.artifacts import atomic_open
from imgclf.calibration import calibrated_probabilities
from imgclf.classifier import Classifier
from imgclf.errors import DataError, MissingModel
from imgclf.images import Geometry
from imgclf.inference import evaluation_precision, select_device, with_tta
from imgclf.model import build_model
from imgclf.novelty import FeaturesAndLogits, Novelty
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


def checkpoint_classifier(path: str | os.PathLike, device_name: str, precision: str = "fp32",
                          tta: str = "none") -> Classifier:
    """model.pt as predict uses it: classes, its images' geometry, calibrated probabilities of a uint8 batch, and each
    image's distance to the training images (on the un-mirrored image).

    float32 unless `precision` opts in to bf16/fp16 (inference.evaluation_precision); `tta` hflip
    averages each image's and its mirror's logits (inference.HFlipTTA).
    """
    device = select_device(device_name)
    model, meta = load_checkpoint(path, device)
    novelty = load_novelty(path, device)
    split = FeaturesAndLogits(model).eval() if novelty is not None else None
    mirrored = with_tta(model, tta)
    prepare = ModelInput(meta["mean"], meta["std"], device)

    def outputs(images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        distances = None
        with torch.no_grad(), evaluation_precision(device, precision):
            batch = prepare(torch.from_numpy(images))
            if split is None:
                logits = mirrored(batch)
            else:
                logits, features = split(batch)
                if tta == "hflip":  # inference.HFlipTTA's mean, with the features of the image as it is
                    logits = (logits.float() + split(batch.flip(-1))[0].float()) / 2
                distances = novelty(features.float()).cpu().numpy()
        return calibrated_probabilities(logits, meta["temperature"]).cpu().numpy(), distances

    return Classifier(meta["classes"], Geometry.of(meta), outputs,
                      meta["novelty"]["distances"] if novelty is not None else None)


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Load model.pt with weights_only=True (never unpickling code); return (model in eval mode, metadata)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MissingModel(path, "train") from None
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
    # Plain data only (the novelty bank, a tensor, is load_novelty's).
    metadata = {key: value for key, value in data.items() if key not in ("state_dict", "format", "novelty_bank")}
    device = torch.device(device)
    return model.to(device, memory_format=memory_format(device)).eval(), metadata


def load_novelty(path: str | os.PathLike, device: torch.device | str = "cpu") -> Novelty | None:
    """model.pt's distance to the training images (novelty.Novelty: its bank of training features and k), or None for
    a model written before it. Read after load_checkpoint has checked the file."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    bank, novelty = data.get("novelty_bank"), data.get("novelty")
    if not isinstance(bank, torch.Tensor) or not isinstance(novelty, dict):
        return None
    return Novelty(bank, int(novelty["k"])).to(device)
