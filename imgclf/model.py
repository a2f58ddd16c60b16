"""Model building: any torchvision classifier, optional pretrained weights, a new output layer for our classes."""

from __future__ import annotations

import os

import torch
import torchvision
from torch import nn

from imgclf.errors import ConfigError, DataError


def output_layer(model: nn.Module) -> tuple[str, nn.Linear]:
    """(name, module) of the model's output layer: the last nn.Linear it registers."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"train.arch: {type(model).__name__} has no final Linear layer to replace")
    return linears[-1]


def replace_head(model: nn.Module, num_classes: int, dropout: float) -> nn.Module:
    """Swap the model's final nn.Linear for one with `num_classes` outputs, with dropout before it.

    Works across torchvision families (resnet `fc`, efficientnet/mobilenet `classifier[-1]`,
    convnext `classifier[2]`, vit `heads.head`, ...): the output layer is the last Linear registered.
    If a Dropout already precedes it (efficientnet, mobilenet), its probability is set instead of
    stacking a second one.
    """
    name, old = output_layer(model)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    new = nn.Linear(old.in_features, num_classes)
    previous = None
    if isinstance(parent, nn.Sequential):
        keys = list(parent._modules)
        position = keys.index(attr)
        previous = parent._modules[keys[position - 1]] if position > 0 else None
    if isinstance(previous, nn.Dropout):
        previous.p = dropout
        setattr(parent, attr, new)
    elif dropout > 0:
        setattr(parent, attr, nn.Sequential(nn.Dropout(dropout), new))
    else:
        setattr(parent, attr, new)
    return model


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze (trainable=False) or unfreeze every parameter but the output layer's (fastai's fine_tune)."""
    head = {id(p) for p in output_layer(model)[1].parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(trainable or id(parameter) in head)


def _drop_aux_heads(model: nn.Module) -> None:
    """Inception-style auxiliary classifiers only serve ImageNet training; drop them."""
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for attr in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, attr):
                setattr(model, attr, None)


def load_weights_file(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a local state_dict file (as torchvision distributes them) into `model`, strictly and safely."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"train.pretrained: weights file {path} not found") from None
    except Exception as err:  # weights_only refuses pickled code; any failure means an unusable file
        raise DataError(f"{path}: not a loadable weights file ({str(err).splitlines()[0]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DataError(f"{path}: expected a state_dict, got {type(state).__name__}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise DataError(f"{path}: weights do not match the architecture "
                        f"({str(err).splitlines()[0]})") from None


def build_model(arch: str, num_classes: int, dropout: float, pretrained: str = "none") -> nn.Module:
    """Build torchvision's `arch`, load `pretrained` (none | default | a file), then replace its head."""
    if pretrained == "default":
        try:
            model = torchvision.models.get_model(arch, weights="DEFAULT")
        except (OSError, RuntimeError) as err:  # no network and nothing in torch's cache
            raise ConfigError(f"train.pretrained: cannot get torchvision's default weights for {arch} "
                              f"(offline? use a local weights file instead): {err}") from None
    else:
        model = torchvision.models.get_model(arch, weights=None)
        if pretrained != "none":
            load_weights_file(model, pretrained)
    _drop_aux_heads(model)
    return replace_head(model, num_classes, dropout)
