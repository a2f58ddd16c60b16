"""The export stage's logic: model.pt -> model.onnx (torch.onnx, dynamo exporter), checked for parity on the test split.

The exported graph takes what `images.Geometry.load` gives (uint8 N x 3 x I x I) and returns logits:
the normalisation is inside it, so a runtime without torch needs only the shared decoding, and so is
predict.tta's test-time augmentation (hflip: the mean of each image's and its mirror's logits,
inference.HFlipTTA). The class names, the geometry (input and stored side, resize), normalisation,
calibration temperature and tta travel in the file's metadata.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from imgclf.artifacts import atomic_path
from imgclf.checkpoint import load_checkpoint, load_novelty
from imgclf.config import param
from imgclf.errors import DataError
from imgclf.images import Geometry
from imgclf.inference import with_tta
from imgclf.novelty import FeaturesAndLogits, Novelty
from imgclf.onnx_model import METADATA_FORMAT, OnnxClassifier, softmax
from imgclf.transforms import ModelInput


@dataclass(frozen=True)
class ExportConfig:
    """Params of the `export` stage: the opset and the parity tolerance on logits."""

    opset: int = param("ONNX opset of the exported graph", ge=13, le=23)
    rtol: float = param("parity: relative tolerance on logits (PyTorch's ONNX Runtime tutorial: 1e-3)", gt=0)
    atol: float = param("parity: absolute tolerance on logits (PyTorch's ONNX Runtime tutorial: 1e-5)", gt=0)
    batch_size: int = param("images per parity batch", ge=1)


class Normalised(nn.Module):
    """uint8 images in, logits out (and, with `novelty`, each image's distance to the training images): the model
    with transforms.ModelInput's normalisation in front, `tta` (predict.tta) inside."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float], tta: str = "none",
                 novelty: Novelty | None = None):
        super().__init__()
        self.model = with_tta(model, tta)
        self.split = FeaturesAndLogits(model) if novelty is not None else None
        self.novelty, self.tta = novelty, tta
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255)

    def forward(self, images: torch.Tensor):
        batch = (images.float() - self.mean) / self.std
        if self.split is None:
            return self.model(batch)
        logits, features = self.split(batch)
        if self.tta == "hflip":  # inference.HFlipTTA's mean; the distance is the image's own, as predict's
            logits = (logits.float() + self.split(batch.flip(-1))[0].float()) / 2
        return logits, self.novelty(features)


def export_onnx(model: nn.Module, meta: dict, onnx_path: str | os.PathLike, opset: int, tta: str = "none",
                novelty: Novelty | None = None) -> None:
    """Export a loaded model.pt (`load_checkpoint`'s model and metadata) to `onnx_path`, with test-time augmentation
    `tta` (predict.tta) inside the graph.

    Written atomically, after onnx.checker's full check.
    """
    import onnx

    wrapped = Normalised(model, meta["mean"], meta["std"], tta, novelty).eval()
    size = meta["image_size"]
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)  # batch 2: the batch stays dynamic
    metadata = {"format": METADATA_FORMAT, "arch": meta["arch"], "classes": json.dumps(meta["classes"]),
                **{key: str(value) for key, value in Geometry.of(meta).metadata().items()},
                "mean": json.dumps(meta["mean"]), "std": json.dumps(meta["std"]),
                "weights_input_size": json.dumps(meta.get("weights_input_size")),
                "temperature": repr(meta["temperature"]), "tta": tta}
    outputs = ["logits"]
    if novelty is not None:
        metadata["novelty"] = json.dumps(meta["novelty"])
        outputs.append("distance")
    with atomic_path(onnx_path) as tmp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(wrapped, (example,), dynamo=True, opset_version=opset,
                                            input_names=["images"], output_names=outputs,
                                            dynamic_axes={"images": {0: "batch"},
                                                          **{name: {0: "batch"} for name in outputs}},
                                            verbose=False)
        except Exception as err:  # any exporter failure: the architecture cannot be exported
            message = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise DataError(f"train.arch: {meta['arch']} cannot be exported to ONNX ({message})") from None
        program.save(str(tmp))
        graph = onnx.load(str(tmp))
        for key, value in metadata.items():
            graph.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(graph, full_check=True)
        onnx.save(graph, str(tmp))


def parity(model: nn.Module, meta: dict, onnx_path: str | os.PathLike, paths: Sequence[str],
           cfg: ExportConfig, tta: str = "none", novelty: Novelty | None = None) -> dict:
    """Run `paths` through the PyTorch model as evaluate feeds it (ModelInput, eval mode, `tta`) and through ONNX
    Runtime, logits and (with `novelty`) distances to the training images.

    How far apart they are, in numbers. The reference is the evaluate/predict path itself, not the
    exported wrapper, so a normalisation that drifted from ModelInput's would fail here too.
    """
    mirrored, split = with_tta(model, tta).eval(), FeaturesAndLogits(model).eval()
    prepare = ModelInput(meta["mean"], meta["std"], torch.device("cpu"))
    geometry = Geometry.of(meta)
    session = OnnxClassifier(onnx_path)
    worst_logit, worst_prob, worst_distance, mismatches, outside = 0.0, 0.0, 0.0, 0, 0
    for start in range(0, len(paths), cfg.batch_size):
        batch = np.stack([geometry.load(p) for p in paths[start:start + cfg.batch_size]])
        with torch.no_grad():
            inputs = prepare(torch.from_numpy(batch))
            expected = mirrored(inputs).numpy()
            expected_distances = novelty(split(inputs)[1]).numpy() if novelty is not None else None
        got, got_distances = session.run(batch)
        difference = np.abs(got - expected)
        worst_logit = max(worst_logit, float(difference.max()))
        outside += int((difference > cfg.atol + cfg.rtol * np.abs(expected)).sum())
        mismatches += int((got.argmax(1) != expected.argmax(1)).sum())
        t = meta["temperature"]
        worst_prob = max(worst_prob, float(np.abs(softmax(got / t) - softmax(expected / t)).max()))
        if expected_distances is not None:
            worst_distance = max(worst_distance, float(np.abs(got_distances - expected_distances).max()))
    return {"images": len(paths), "prediction_mismatches": mismatches, "logits_outside_tolerance": outside,
            "max_abs_logit_diff": worst_logit, "max_abs_probability_diff": worst_prob,
            "max_abs_distance_diff": worst_distance, "rtol": cfg.rtol, "atol": cfg.atol}


def export_model(model_path: str | os.PathLike, test_csv: str | os.PathLike, onnx_path: str | os.PathLike,
                 cfg: ExportConfig, tta: str = "none") -> dict:
    """Export with test-time augmentation `tta` (predict.tta), then check parity on every test image against PyTorch
    with the same TTA; a model.onnx that fails parity is removed, with one line."""
    from imgclf.split_files import read_split_paths

    paths = read_split_paths(test_csv)["path"].tolist()
    model, meta = load_checkpoint(model_path)
    novelty = load_novelty(model_path)
    export_onnx(model, meta, onnx_path, cfg.opset, tta, novelty)
    report = parity(model, meta, onnx_path, paths, cfg, tta, novelty)
    report["opset"] = cfg.opset
    # Distances are cosines of unit vectors, in [0, 2]: 1e-4 is far below any threshold's resolution.
    if report["prediction_mismatches"] or report["logits_outside_tolerance"] or report["max_abs_distance_diff"] > 1e-4:
        Path(onnx_path).unlink(missing_ok=True)
        raise DataError(f"{onnx_path}: ONNX Runtime disagrees with PyTorch on {test_csv}: "
                        f"{report['prediction_mismatches']} different predictions, "
                        f"{report['logits_outside_tolerance']} logits outside rtol {cfg.rtol} / atol {cfg.atol} "
                        f"(largest difference {report['max_abs_logit_diff']:.3g}), distances to the training images "
                        f"within {report['max_abs_distance_diff']:.3g}; model.onnx not written")
    return report
