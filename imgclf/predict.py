"""The predict stage's logic: a saved model run over image files, rows streamed to a CSV.

The model is `model.pt` (PyTorch) or `model.onnx` (ONNX Runtime, exported by the export stage): with
an .onnx model torch is never imported, so predicting needs only requirements-predict.txt. Both
read the images with the model's `images.Geometry`, the definition that prepared the training images.
"""

from __future__ import annotations

import argparse
import csv
import os
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import numpy as np
from tqdm import tqdm

from imgclf.artifacts import atomic_open
from imgclf.classifier import Classifier
from imgclf.config import Device, load_section, param
from imgclf.entry import stage_main
from imgclf.errors import ConfigError, DataError, MissingModel
from imgclf.images import Geometry, list_inputs, load_input_or_error
from imgclf.workers import worker_pool

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
    precision: Literal["fp32", "bf16", "fp16"] = param(
        "fp32: the probabilities model.onnx and the CPU give (TF32 off on CUDA); bf16/fp16: autocast, an opt-in "
        "for speed (model.pt only)")
    tta: Literal["none", "hflip"] = param("test-time augmentation: hflip averages the logits of each image and its "
                                          "mirror (none for digits and text)")
    unknown_quantile: float | None = param(
        "an image farther from the training images (features, k nearest) than this quantile of the validation "
        "images' distances gets status `unknown`: of no class (null: never)", ge=0.5, le=1)


def open_classifier(model_path: str | os.PathLike, device: str, precision: str = "fp32",
                    tta: str | None = "none") -> Classifier:
    """model.onnx through ONNX Runtime (no torch), anything else as a model.pt checkpoint through PyTorch.

    `tta` (predict.tta) hflip averages each image's and its mirror's logits: model.pt runs it here,
    model.onnx has it in its graph (the export stage builds predict.tta in) and must match. None takes
    model.onnx's own (none for model.pt): predict outside a project, without a params file.
    """
    if str(model_path).lower().endswith(".onnx"):
        if precision != "fp32":  # ONNX Runtime runs the exported float32 graph: say so rather than ignore it
            raise ConfigError(f"predict.precision: {precision} applies to model.pt only; {model_path} runs in "
                              f"float32 (set predict.precision: fp32)")
        from imgclf.onnx_model import OnnxClassifier

        model = OnnxClassifier(model_path)
        if tta is not None and model.tta != tta:  # the graph cannot change its TTA: say so rather than ignore it
            raise ConfigError(f"predict.tta: {tta}, but {model_path} was exported with tta {model.tta}; re-run the "
                              f"export stage (`dvc repro export`) to build predict.tta into it")
        return Classifier(model.classes, model.geometry, model.outputs, model.reference)
    if not os.path.isfile(model_path):  # before importing torch (seconds): a missing model is said at once
        raise MissingModel(model_path, "train")
    try:
        import torch  # noqa: F401  (only to say what is missing, before the checkpoint code needs it)
    except ImportError:
        raise DataError(f"{model_path}: a model.pt needs PyTorch, which this install lacks: pass the exported "
                        f"model.onnx instead (--model models/model.onnx), or install the whole pipeline "
                        f"(pip install -r requirements.txt)") from None
    from imgclf.checkpoint import checkpoint_classifier

    return checkpoint_classifier(model_path, device, precision, tta or "none")


def image_batches(paths: Sequence[str], geometry: Geometry, batch_size: int,
                  workers: int = 0) -> Iterator[tuple[np.ndarray, list[str]]]:
    """(uint8 N x 3 x I x I, errors) batches of `paths` in order; an unreadable file is a blank image and why ("" if
    none)."""
    tasks = [(path, geometry) for path in paths]
    image_size = geometry.input_size
    pool = worker_pool(workers) if workers else None
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
                  cfg: PredictConfig, tta_as_exported: bool = False) -> dict[str, int]:
    """Classify every file of `inputs` (files, and folders searched recursively), streaming rows to `output_path`.

    Probabilities are temperature-calibrated. A row keeps its prediction but gets the status `unknown` when the
    image lies farther from the training images than `cfg.unknown_quantile` allows (of no class), else `uncertain`
    when its confidence is below `cfg.min_confidence`, both for a human to review; its distance is in the row.
    Returns the counts of ok, uncertain, unknown and error rows. `tta_as_exported`: a model.onnx's own TTA,
    whatever cfg.tta says.
    """
    paths = list_inputs(inputs)
    model = open_classifier(model_path, cfg.device, cfg.precision, None if tta_as_exported else cfg.tta)
    classes, limit = model.classes, model.unknown_threshold(cfg.unknown_quantile)
    counts = {"ok": 0, "uncertain": 0, "unknown": 0, "error": 0}
    with atomic_open(output_path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "prediction", "confidence", *[f"prob_{c}" for c in classes], "distance", "status"])
        rows = iter(paths)
        batches = image_batches(paths, model.geometry, cfg.batch_size, cfg.num_workers)
        for images, errors in tqdm(batches, total=-(-len(paths) // cfg.batch_size), desc="predict", unit="batch",
                                   mininterval=1.0):
            # Rows are written batch by batch: memory does not grow with the number of images.
            probabilities, distances = model.outputs(images)
            distances = distances.tolist() if distances is not None else [None] * len(images)
            for probs, distance, error in zip(probabilities.tolist(), distances, errors):
                path = next(rows)
                if error:
                    counts["error"] += 1
                    writer.writerow([path, "", "", *[""] * len(classes), "", f"error: {error}"])
                    continue
                best = max(range(len(classes)), key=probs.__getitem__)
                status = "unknown" if distance is not None and distance > limit else \
                    "uncertain" if probs[best] < cfg.min_confidence else "ok"
                counts[status] += 1
                writer.writerow([path, classes[best], f"{probs[best]:.6f}", *[f"{p:.6f}" for p in probs],
                                 "" if distance is None else f"{distance:.6f}", status])
    return counts


def build_parser() -> argparse.ArgumentParser:
    """The stage's flags: the params file and its input and output paths (defaults match dvc.yaml)."""
    parser = argparse.ArgumentParser(prog="imgclf-predict", description="Classify every image under files and "
                                     "folders; write path, prediction, confidence, probabilities and status.")
    parser.add_argument("--params", default=None,
                        help="params file (section `predict`); default: ./params.yaml when there is one, else "
                             "the pipeline's shipped defaults")
    parser.add_argument("--model", default="models/model.pt",
                        help="input: model.pt (PyTorch) or model.onnx (ONNX Runtime, without torch)")
    parser.add_argument("--input", nargs="+", default=["data/predict"],
                        help="input: image files and folders (searched recursively), one or several")
    parser.add_argument("--output", default="reports/predictions.csv", help="output: one row per file")
    return parser


@stage_main
def main() -> None:
    """The predict stage and the `imgclf-predict` command: params, predict, one summary line."""
    args = build_parser().parse_args()
    params = args.params or "params.yaml"
    shipped = args.params is None and not os.path.isfile(params)
    if shipped:  # outside a project: the shipped defaults, and a model.onnx's own test-time augmentation
        from imgclf.template import PARAMS as params
    cfg = load_section(params, "predict", PredictConfig)
    counts = predict_files(args.model, args.input, args.output, cfg, tta_as_exported=shipped)
    if sum(counts.values()) == 0:
        print(f"no files found in {' '.join(args.input)}; wrote {args.output} with its header only")
    else:
        print(f"predicted {sum(counts.values()) - counts['error']} images ({counts['unknown']} unknown: far from every "
              f"training image; {counts['uncertain']} uncertain, below min_confidence "
              f"{cfg.min_confidence}; {counts['error']} unreadable; see the status column); wrote {args.output}")
