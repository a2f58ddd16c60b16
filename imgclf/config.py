"""Typed, validated config objects, one per params.yaml section (stage name = section name)."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from imgclf.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")


def _doc(text: str, *, ge: float | None = None, gt: float | None = None,
         le: float | None = None, lt: float | None = None) -> Any:
    """A required dataclass field with a description and optional numeric bounds."""
    return field(metadata={"doc": text, "ge": ge, "gt": gt, "le": le, "lt": lt})


@dataclass(frozen=True)
class DemoConfig:
    """Params of the `demo` stage: the built-in digits dataset."""

    seed: int = _doc("seed for which images are kept and held back", ge=0)
    num_classes: int = _doc("how many digit classes to write (0..num_classes-1)", ge=2, le=10)
    max_per_class: int = _doc("images kept for the largest class (digit 0)", ge=3)
    imbalance: float = _doc("largest class count / smallest class count", ge=1)
    image_size: int = _doc("side in pixels of the written PNGs (upscaled from 8x8)", ge=8, le=1024)
    predict_fraction: float = _doc("share of each class held back, unlabeled, in data/predict", ge=0, lt=1)


@dataclass(frozen=True)
class SplitConfig:
    """Params of the `split` stage: stratified train/val/test fractions."""

    train: float = _doc("fraction of each class used for training", gt=0, lt=1)
    val: float = _doc("fraction of each class used for validation (early stopping)", gt=0, lt=1)
    test: float = _doc("fraction of each class used for the final test", gt=0, lt=1)
    seed: int = _doc("seed of the per-class shuffle", ge=0)

    def validate(self) -> None:
        """The three fractions must add up to 1."""
        total = self.train + self.val + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ConfigError(f"split.train + split.val + split.test must sum to 1, got {total:g}")


@dataclass(frozen=True)
class ComputeWeightsConfig:
    """Params of the `compute_weights` stage: the class-weight scheme."""

    scheme: Literal["inverse", "sqrt_inverse", "effective", "none"] = _doc(
        "inverse: N/count; sqrt_inverse: sqrt(N/count); effective: Cui et al. 2019; none: all 1")
    beta: float = _doc("beta of the effective-number scheme", gt=0, lt=1)


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation switches (validation and test never see them)."""

    hflip: bool = _doc("random horizontal flip (off for digits and text)")
    rotation: float = _doc("max random rotation in degrees", ge=0, le=180)
    translate: float = _doc("max random shift as a fraction of the image side", ge=0, lt=0.5)
    scale: float = _doc("max random zoom in or out as a fraction (0.1 = 0.9x..1.1x)", ge=0, lt=1)


@dataclass(frozen=True)
class DecodeConfig:
    """Params of the `decode` stage: the resolution the train and val images are decoded at, once."""

    image_size: int = _doc("side in pixels that images are resized to (for training and inference)",
                           ge=8, le=1024)


@dataclass(frozen=True)
class TrainConfig:
    """Params of the `train` stage."""

    arch: str = _doc("any torchvision classification model name (resnet18, efficientnet_b0, ...)")
    pretrained: str = _doc("none | default (torchvision's weights) | path to a local weights file")
    batch_size: int = _doc("images per training step", ge=1)
    epochs: int = _doc("maximum number of epochs", ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = _doc("optimizer")
    lr: float = _doc("learning rate", gt=0)
    weight_decay: float = _doc("weight decay", ge=0)
    momentum: float = _doc("SGD momentum (ignored by adam and adamw)", ge=0, lt=1)
    scheduler: Literal["step", "cosine", "onecycle"] = _doc(
        "step: StepLR (the classic recipe); cosine: cosine annealing to 0; onecycle: OneCycleLR per batch")
    step_size: int = _doc("StepLR: epochs between learning-rate decays", ge=1)
    gamma: float = _doc("StepLR: multiplicative decay", gt=0, le=1)
    warmup_epochs: int = _doc("epochs of linear learning-rate warmup from lr/10 (onecycle: its rising phase)",
                              ge=0)
    freeze_epochs: int = _doc("epochs that train only the new output layer before the backbone is unfrozen",
                              ge=0)
    label_smoothing: float = _doc("CrossEntropyLoss label smoothing", ge=0, lt=1)
    patience: int = _doc("early stopping: epochs without improvement before stopping", ge=1)
    monitor: Literal["val_loss", "val_f1"] = _doc("early stopping monitor (val_f1 is weighted F1)")
    dropout: float = _doc("dropout probability right before the new output layer", ge=0, lt=1)
    balance: Literal["sampler", "loss", "none"] = _doc(
        "sampler: WeightedRandomSampler; loss: weighted CrossEntropyLoss; none")
    augment: AugmentConfig = _doc("training augmentation")
    compile: bool = _doc("wrap the model in torch.compile for training (opt-in; see the README's Speed section)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _doc(
        "auto: bf16 on CUDA (fp16 where bf16 is unsupported), fp32 elsewhere; bf16/fp16 force autocast")
    seed: int = _doc("seed of weights init, sampling and augmentation", ge=0)
    device: Literal["auto", "cpu", "cuda", "mps"] = _doc("auto: cuda, then mps, then cpu")

    def validate(self) -> None:
        """The architecture must exist in torchvision; a local weights file must exist."""
        import torchvision  # deferred: only train's config needs it

        archs = torchvision.models.list_models(module=torchvision.models)
        if self.arch not in archs:
            close = difflib.get_close_matches(self.arch, archs, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"train.arch: unknown torchvision classification model "
                              f"'{self.arch}'{hint}")
        for key in ("warmup_epochs", "freeze_epochs"):
            if getattr(self, key) >= self.epochs:
                raise ConfigError(f"train.{key}: must be < train.epochs ({self.epochs}), got {getattr(self, key)}")
        if self.pretrained not in ("none", "default") and not os.path.isfile(self.pretrained):
            raise ConfigError(f"train.pretrained: must be none, default or an existing weights "
                              f"file; '{self.pretrained}' does not exist")


@dataclass(frozen=True)
class EvaluateConfig:
    """Params of the `evaluate` stage."""

    batch_size: int = _doc("images per forward pass", ge=1)
    num_workers: int = _doc("DataLoader worker processes", ge=0)
    device: Literal["auto", "cpu", "cuda", "mps"] = _doc("auto: cuda, then mps, then cpu")


@dataclass(frozen=True)
class PredictConfig:
    """Params of the `predict` stage."""

    batch_size: int = _doc("images per forward pass", ge=1)
    min_confidence: float = _doc("rows whose calibrated confidence is below this get status `uncertain`",
                                 ge=0, le=1)
    num_workers: int = _doc("DataLoader worker processes", ge=0)
    device: Literal["auto", "cpu", "cuda", "mps"] = _doc("auto: cuda, then mps, then cpu")


def read_params(path: str | os.PathLike) -> dict:
    """Read a params YAML file with safe_load; a missing or malformed file is a ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read params file ({err.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def load_section(path: str | os.PathLike, section: str, cls: type) -> Any:
    """Load params.yaml's `section` into the config dataclass `cls`, validating every key."""
    data = read_params(path)
    if section not in data:
        raise ConfigError(f"{path}: missing section '{section}'")
    try:
        return parse_section(data[section], cls, section)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def parse_section(raw: Any, cls: type, prefix: str) -> Any:
    """Build `cls` from the mapping `raw`; keys are reported as `prefix.key`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{prefix}.{close[0]}'?)" if close else ""
            raise ConfigError(f"{prefix}.{key}: unknown key{hint}")
    values = {}
    for name, fld in fields.items():
        key = f"{prefix}.{name}"
        if name not in raw:
            raise ConfigError(f"{key}: missing key")
        values[name] = _coerce(raw[name], hints[name], key)
        _check_bounds(values[name], fld.metadata, key)
    config = cls(**values)
    if hasattr(config, "validate"):
        config.validate()
    return config


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against the type `hint`, converting only where the conversion is lossless."""
    if dataclasses.is_dataclass(hint):
        return parse_section(value, hint, key)
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{key}: must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be an integer, got {value!r}")
        return value
    if hint is float:
        # PyYAML reads `1e-3` (no dot) as a string; accept it as the number it plainly is.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: must be a non-empty string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # a bug in this module


def _check_bounds(value: Any, meta: Any, key: str) -> None:
    """Enforce the ge/gt/le/lt bounds declared on a field."""
    checks = [("ge", ">=", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
              ("le", "<=", lambda v, b: v <= b), ("lt", "<", lambda v, b: v < b)]
    for name, symbol, ok in checks:
        bound = meta.get(name)
        if bound is not None and not ok(value, bound):
            raise ConfigError(f"{key}: must be {symbol} {bound:g}, got {value!r}")
