"""A model.onnx as predict uses it, with ONNX Runtime and NumPy only (no torch): metadata, logits, probabilities."""

from __future__ import annotations

import json
import os

import numpy as np

from imgclf.errors import DataError, MissingModel
from imgclf.images import Geometry

METADATA_FORMAT = "imgclf.onnx/1"
METADATA_KEYS = ("format", "arch", "classes", "image_size", "mean", "std", "temperature")
# The test-time augmentation built into the graph (predict.tta when exported); a file without the key
# was exported before TTA existed: none. The choices of evaluate.tta and predict.tta.
TTA_MODES = ("none", "hflip")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, as torch's."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


class OnnxClassifier:
    """An exported classifier in ONNX Runtime (CPU): uint8 N x 3 x S x S images in, logits or probabilities out."""

    def __init__(self, path: str | os.PathLike):
        try:
            import onnxruntime
        except ImportError:
            raise DataError(f"{path}: running an .onnx model needs onnxruntime "
                            f"(pip install -r requirements-predict.txt)") from None
        if not os.path.isfile(path):
            raise MissingModel(path, "export")
        try:
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3  # errors only: its warnings are not the user's business
            # No memory arena: it keeps the largest batch's buffers for the session's life; without it,
            # peak memory at batch 256 fell from 376 to 296 MiB at about the same speed (docs/benchmarks.md).
            options.enable_cpu_mem_arena = False
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # not ONNX, truncated, or an operator ONNX Runtime lacks
            raise DataError(f"{path}: not a loadable ONNX model ({str(err).splitlines()[0][:200]})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        missing = [key for key in METADATA_KEYS if key not in props]
        if missing or props.get("format") != METADATA_FORMAT:
            raise DataError(f"{path}: not a model exported by this pipeline (metadata lacks "
                            f"{', '.join(missing) or 'format ' + METADATA_FORMAT})")
        try:
            self.classes = json.loads(props["classes"])
            self.image_size = int(props["image_size"])
            # stored_size and resize came with issue 18; an older file means squash at image_size.
            self.geometry = Geometry.of(props)
            self.temperature = float(props["temperature"])
            self.mean, self.std = json.loads(props["mean"]), json.loads(props["std"])
        except (ValueError, TypeError) as err:
            raise DataError(f"{path}: malformed metadata ({err})") from None
        self.tta = props.get("tta", "none")
        if self.tta not in TTA_MODES:
            raise DataError(f"{path}: malformed metadata (tta {self.tta!r}; expected one of {', '.join(TTA_MODES)})")
        if not isinstance(self.classes, list) or not self.classes or not 0 < self.temperature < float("inf"):
            raise DataError(f"{path}: malformed metadata (classes or temperature)")
        self.input_name = self.session.get_inputs()[0].name
        self.has_distances = [output.name for output in self.session.get_outputs()] == ["logits", "distance"]
        try:
            novelty = json.loads(props["novelty"]) if "novelty" in props else None
            self.reference = [float(d) for d in novelty["distances"]] if novelty else None
        except (ValueError, TypeError, KeyError) as err:
            raise DataError(f"{path}: malformed metadata (novelty: {err})") from None
        if (self.reference is not None) != self.has_distances:
            raise DataError(f"{path}: malformed metadata (novelty distances without a distance output, or the other "
                            f"way round)")

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """float32 logits for a uint8 N x 3 x S x S batch (with the graph's own test-time augmentation, `tta`), and
        each image's distance to the training images (None for a model exported without them)."""
        found = self.session.run(None, {self.input_name: images})
        return found[0], (found[1] if self.has_distances else None)

    def logits(self, images: np.ndarray) -> np.ndarray:
        """float32 logits for a uint8 N x 3 x S x S batch."""
        return self.run(images)[0]

    def outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Temperature-calibrated class probabilities, softmax(logits / T), and the distances (or None)."""
        logits, distances = self.run(images)
        return softmax(logits / self.temperature), distances

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Temperature-calibrated class probabilities, softmax(logits / T)."""
        return self.outputs(images)[0]
