"""The evaluate stage's logic: a saved model scored on the test split, with its calibration before and after."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import torch.nn.functional as F
from torch.utils.data import DataLoader

from imgclf.baseline import MIN_IMAGES, largest_class_test, learned_nothing, same_class_for_all
from imgclf.batches import ImageListDataset
from imgclf.calibration import calibrated_probabilities, expected_calibration_error, reliability_table
from imgclf.checkpoint import load_checkpoint
from imgclf.config import Device, param
from imgclf.errors import DataError
from imgclf.images import Geometry
from imgclf.inference import loader_options, predict_logits, select_device, with_tta
from imgclf.metrics import classification_metrics, report_text
from imgclf.split_files import read_classes, read_split
from imgclf.transforms import ModelInput


@dataclass(frozen=True)
class EvaluateConfig:
    """Params of the `evaluate` stage."""

    batch_size: int = param("images per forward pass", ge=1)
    num_workers: int = param("DataLoader worker processes", ge=0)
    device: Device = param("auto: cuda, then mps, then cpu; cuda:N for one GPU of several")
    precision: Literal["fp32", "bf16", "fp16"] = param(
        "fp32: the metrics the CPU gives (TF32 off on CUDA); bf16/fp16: autocast, an opt-in for speed")
    tta: Literal["none", "hflip"] = param("test-time augmentation: hflip averages the logits of each image and its "
                                          "mirror (none for digits and text)")


@dataclass
class Evaluation:
    """What the evaluate stage writes: metrics, per-image results, the text report, reliability tables."""

    metrics: dict
    samples: pd.DataFrame  # path, actual, predicted, confidence (calibrated)
    report: str
    reliability: dict[str, pd.DataFrame]  # "uncalibrated" and "calibrated" reliability diagrams


def refuse_if_learned_nothing(model_path: str | os.PathLike, meta: dict, predicted, targets, classes) -> None:
    """No test F1 is published for a model that learned nothing: one class for every test image, or a validation
    loss (recorded by train) no better than the class prior's."""
    reason = None
    if len(targets) >= MIN_IMAGES:
        reason = same_class_for_all(predicted, targets, classes)
    # The train stage's verdict counts only where it could judge (it kept a model of fewer val images, warning).
    judged = meta.get("val_images", 0) >= MIN_IMAGES
    if reason is None and judged and meta["val_loss_calibrated"] >= meta["prior_loss"]:
        reason = learned_nothing(meta["val_loss_calibrated"], meta["prior_loss"], [], [], classes)
    if reason is not None:
        raise DataError(f"{model_path}: this model learned nothing ({reason}); no test metrics are published "
                        f"for it. Retrain it (see the train stage's advice)")


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
    dataset = ImageListDataset(frame["path"], frame["target"], Geometry.of(meta))
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False,
                        **loader_options(cfg.num_workers, device))
    prepare = ModelInput(meta["mean"], meta["std"], device)
    # tta hflip: the mean of each image's and its mirror's logits (inference.HFlipTTA), as predict does.
    logits, targets = predict_logits(with_tta(model, cfg.tta), loader, prepare, device, cfg.precision,
                                     desc="evaluate")
    predicted = logits.argmax(1).numpy()
    refuse_if_learned_nothing(model_path, meta, predicted, targets.numpy(), classes)
    loss = F.cross_entropy(logits, targets).item()
    metrics = classification_metrics(targets.numpy(), predicted, classes, loss)
    # Is the accuracy distinguishable from always answering the test set's largest class, on this many images?
    largest, p_value = largest_class_test(predicted, targets.numpy())
    metrics.update(largest_class_accuracy=largest, p_value_vs_largest_class=p_value)
    raw = calibrated_probabilities(logits, 1.0)
    calibrated = calibrated_probabilities(logits, meta["temperature"])
    metrics.update(temperature=meta["temperature"], ece=expected_calibration_error(raw, targets),
                   ece_calibrated=expected_calibration_error(calibrated, targets),
                   loss_calibrated=F.cross_entropy(logits / meta["temperature"], targets).item())
    samples = pd.DataFrame({"path": frame["path"], "actual": frame["label"],
                            "predicted": [classes[i] for i in predicted],
                            "confidence": calibrated.max(1).values.numpy().round(6)})
    reliability = {"uncalibrated": reliability_table(raw, targets),
                   "calibrated": reliability_table(calibrated, targets)}
    return Evaluation(metrics, samples, report_text(targets.numpy(), predicted, classes), reliability)


def chance_note(metrics: dict, images: int, level: float = 0.05) -> str:
    """One plain line when the test accuracy cannot be told apart from always predicting the largest class, else ""."""
    if metrics["p_value_vs_largest_class"] <= level:
        return ""
    return (f"note: test accuracy {metrics['accuracy']:.4f} on {images} images is not distinguishable from always "
            f"predicting the largest class ({metrics['largest_class_accuracy']:.4f}; one-sided binomial p = "
            f"{metrics['p_value_vs_largest_class']:.3g}): these metrics do not show that the model learned anything; "
            f"more test images or a better model would")
