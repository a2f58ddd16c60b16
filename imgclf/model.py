"""Model building: any torchvision or timm classifier, optional pretrained weights, a new output layer for our classes.

`train.arch` is a torchvision name (`resnet18`, `efficientnet_b0`) or `timm/<name>` with timm's own
names and pretrained tags (`timm/convnext_tiny`, `timm/resnet50.a1_in1k`). The preprocessing the weights
were trained with (mean, std, input size) comes with them: timm's `pretrained_cfg`, torchvision's
weights meta, or the TensorFlow port's 0.5 / 0.5 for efficientnet_pytorch's layout.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
from dataclasses import dataclass

import torch
import torchvision
from torch import nn

from imgclf.errors import ConfigError
from imgclf.transforms import IMAGENET_MEAN, IMAGENET_STD
from imgclf.weights import EFFICIENTNET_PYTORCH, load_weights_file

TIMM = "timm/"
# TensorFlow's EfficientNet(-Lite) ports (efficientnet_pytorch's layout) take inputs scaled to [-1, 1].
TF_MEAN = TF_STD = (0.5, 0.5, 0.5)


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


def head_dropout(model: nn.Module) -> nn.Dropout | None:
    """The Dropout right before the output layer (its sibling registered just before it), or None.

    torchvision's heads and replace_head's have it as a module; timm's models apply `drop_rate`
    functionally in forward_head instead (reported here as a Dropout of that rate, not part of the model).
    """
    name, linear = output_layer(model)
    parent_name, _, attr = name.rpartition(".")
    siblings = list(model.get_submodule(parent_name).named_children())
    position = [child_name for child_name, _ in siblings].index(attr)
    if position > 0 and isinstance(siblings[position - 1][1], nn.Dropout):
        return siblings[position - 1][1]
    rate = getattr(model, "drop_rate", 0.0)
    return nn.Dropout(float(rate)) if isinstance(rate, (int, float)) and rate > 0 else None


def classifier_head(model: nn.Module) -> nn.Module:
    """The model's dropout and output layer as a module of their own (the Linear shared, not copied): what trains on
    the frozen backbone's pooled features, which are exactly the output layer's input in evaluation mode."""
    dropout = head_dropout(model)
    linear = output_layer(model)[1]
    return nn.Sequential(dropout, linear) if dropout is not None else nn.Sequential(linear)


def train_mode(model: nn.Module, frozen_backbone: bool = False) -> None:
    """Put `model` in training mode; with a frozen backbone, only the output layer and the dropout before it.

    A frozen backbone runs in evaluation mode: its BatchNorm statistics stay those it came with (the
    Keras transfer-learning guide's advice) and its stochastic depth is off, so a frozen epoch sees the
    very features that features-once computes. The top module keeps its training flag, which timm's
    functional head dropout reads.
    """
    model.train(True)
    if not frozen_backbone:
        return
    model.eval()
    model.training = True
    output_layer(model)[1].train()
    dropout = head_dropout(model)
    if dropout is not None:
        dropout.train()


def _drop_aux_heads(model: nn.Module) -> None:
    """Inception-style auxiliary classifiers only serve ImageNet training; drop them."""
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for attr in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, attr):
                setattr(model, attr, None)


@dataclass(frozen=True)
class Preprocessing:
    """How the weights want their input: the mean and std to normalise with, the side they were trained at."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int | None  # None: trained from scratch here, or a file that does not say
    source: str  # where these came from, for the log and model.pt

    def metadata(self) -> dict:
        """The keys model.pt and model.onnx carry: mean, std, weights_input_size, preprocessing."""
        return {"mean": list(self.mean), "std": list(self.std), "weights_input_size": self.input_size,
                "preprocessing": self.source}


def is_timm(arch: str) -> bool:
    """True for `timm/<name>` architectures."""
    return arch.startswith(TIMM)


def check_arch(arch: str, key: str = "train.arch") -> None:
    """Refuse an architecture neither torchvision nor timm has, in one line (naming the param `key`) with the closest
    names."""
    if is_timm(arch):
        import timm

        name = arch[len(TIMM):]
        if not timm.is_model(name):
            close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=3)
            hint = f" (did you mean {', '.join(TIMM + c for c in close)}?)" if close else ""
            raise ConfigError(f"{key}: unknown timm model '{name}'{hint}")
        if "." in name:
            try:
                timm.models.get_pretrained_cfg(name)
            except RuntimeError:
                tags = ", ".join(TIMM + t for t in timm.list_pretrained(name.split(".")[0] + ".*")[:4])
                raise ConfigError(f"{key}: timm has no pretrained tag '{name}'"
                                  f"{f' (it has {tags})' if tags else ''}") from None
        return
    archs = torchvision.models.list_models(module=torchvision.models)
    if arch not in archs:
        close = difflib.get_close_matches(arch, archs, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"{key}: unknown torchvision classification model '{arch}'{hint}; "
                          f"timm's models are named timm/<name>")


def _first_sentence(err: Exception) -> str:
    """`Type: the first sentence of its message` (a library's multi-line advice would bury the one line)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    sentence = text.split(". ")[0].rstrip(".")
    return f"{type(err).__name__}: {sentence[:200]}" if sentence else type(err).__name__


@contextlib.contextmanager
def _hub_quietly(offline: bool):
    """The Hugging Face Hub's client quiet (its retry warnings are not the user's business), and offline if asked:
    the cache alone, read without a network round trip."""
    import huggingface_hub.constants
    from huggingface_hub.utils import logging as hub_logging

    saved_offline, saved_level = huggingface_hub.constants.HF_HUB_OFFLINE, hub_logging.get_verbosity()
    loggers = [logging.getLogger(name) for name in ("urllib3", "httpx", "huggingface_hub")]
    levels = [logger.level for logger in loggers]
    huggingface_hub.constants.HF_HUB_OFFLINE = saved_offline or offline
    hub_logging.set_verbosity_error()
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE = saved_offline
        hub_logging.set_verbosity(saved_level)
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _timm_model(arch: str, num_classes: int, dropout: float, pretrained: bool) -> nn.Module:
    """timm's model with `num_classes` outputs and `dropout` before them (timm's drop_rate); its default weights
    (through timm's own download and cache: the Hugging Face Hub) when `pretrained`, the new classifier aside.

    The cache is tried first, offline: weights downloaded once load without a network round trip.
    """
    import timm

    name = arch[len(TIMM):]
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, drop_rate=dropout)
    with _hub_quietly(offline=True):
        try:
            return timm.create_model(name, pretrained=True, num_classes=num_classes, drop_rate=dropout)
        except Exception:  # not in the cache: download them
            pass
    with _hub_quietly(offline=False):
        try:
            return timm.create_model(name, pretrained=True, num_classes=num_classes, drop_rate=dropout)
        except Exception as err:  # offline and not in the cache, the Hub unreachable, a file missing from it
            raise ConfigError(f"train.pretrained: cannot get timm's default weights for {name} from the Hugging "
                              f"Face Hub (offline? {_first_sentence(err)}); download them once where there is a "
                              f"network, or set train.pretrained to a local weights file") from None


def _torchvision_model(arch: str, pretrained: bool) -> nn.Module:
    """torchvision's model as torchvision builds it (1000 classes), with its default weights when `pretrained`."""
    if not pretrained:
        return torchvision.models.get_model(arch, weights=None)
    try:
        return torchvision.models.get_model(arch, weights="DEFAULT")
    except Exception as err:  # no network and nothing in torch's cache
        raise ConfigError(f"train.pretrained: cannot get torchvision's default weights for {arch} (offline? "
                          f"{_first_sentence(err)}); download them once where there is a network, or set "
                          f"train.pretrained to a local weights file") from None


def preprocessing_of(arch: str, model: nn.Module, pretrained: str, layout: str | None = None) -> Preprocessing:
    """The mean, std and input size `pretrained` (none | default | a file in `layout`) was trained with."""
    if layout == EFFICIENTNET_PYTORCH:
        return Preprocessing(TF_MEAN, TF_STD, 224, "efficientnet_pytorch's TensorFlow port (mean = std = 0.5)")
    if is_timm(arch):
        cfg = model.pretrained_cfg
        tag = f"{cfg.get('architecture')}.{cfg.get('tag')}" if cfg.get("tag") else arch[len(TIMM):]
        size = int(cfg["input_size"][-1]) if pretrained != "none" and cfg.get("input_size") else None
        return Preprocessing(tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)), size,
                             f"timm's pretrained_cfg of {tag}")
    if pretrained == "default":
        transforms = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
        return Preprocessing(tuple(transforms.mean), tuple(transforms.std), int(transforms.crop_size[0]),
                             f"torchvision's weights meta of {arch}")
    return Preprocessing(IMAGENET_MEAN, IMAGENET_STD, None, "ImageNet's (torchvision's convention)")


def build_pretrained(arch: str, num_classes: int, dropout: float,
                     pretrained: str = "none") -> tuple[nn.Module, Preprocessing]:
    """Build `arch` with `pretrained` weights (none | default | a local file) and a new output layer for
    `num_classes`, with `dropout` before it; and the preprocessing those weights want."""
    layout = None
    if is_timm(arch):
        model = _timm_model(arch, num_classes, dropout, pretrained == "default")
        if pretrained not in ("none", "default"):
            layout = load_weights_file(model, pretrained, output_layer(model)[0])
        return model, preprocessing_of(arch, model, pretrained, layout)
    model = _torchvision_model(arch, pretrained == "default")
    if pretrained not in ("none", "default"):
        layout = load_weights_file(model, pretrained, output_layer(model)[0])
    _drop_aux_heads(model)
    preprocessing = preprocessing_of(arch, model, pretrained, layout)
    return replace_head(model, num_classes, dropout), preprocessing


def build_model(arch: str, num_classes: int, dropout: float, pretrained: str = "none") -> nn.Module:
    """Build `arch` (torchvision's or timm/<name>) with `pretrained` weights and a new output layer for our classes."""
    return build_pretrained(arch, num_classes, dropout, pretrained)[0]


def check_image_size(model: nn.Module, arch: str, image_size: int) -> None:
    """Refuse, before any training, an architecture that cannot take `image_size` images (ViT wants its own size)."""
    needed = getattr(model, "image_size", None)  # torchvision's VisionTransformer declares it
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, 3, image_size, image_size))
    except Exception as err:  # the architecture's own complaint, e.g. "Wrong image height! Expected 224 but got 64"
        size = f"{needed} px" if needed else "a larger size"
        raise ConfigError(f"train.arch: {arch} cannot take {image_size} px images ({str(err).splitlines()[0][:120]}); "
                          f"it needs {size}: set decode.image_size accordingly") from None
