"""Pretrained weights from a local file: .pth / .pt / .bin (torch, weights only) or .safetensors, in torchvision's,
timm's or efficientnet_pytorch's key layout, loaded into a built model with the file's own classifier dropped.

Every other weight must load: a missing, unexpected or mis-shaped key is one line naming the first
few, before anything is written. Nothing in a file can run code: torch files load with
`weights_only=True`, safetensors hold tensors only.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from imgclf.errors import ConfigError, DataError

# Checkpoints that wrap their state_dict: timm's training checkpoints, Lightning's, torchvision's references.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
EFFICIENTNET_PYTORCH = "efficientnet_pytorch"  # lukemelas/EfficientNet-PyTorch and its Lite ports: _conv_stem, _blocks
SHOWN = 3  # keys named in a mismatch's one line


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped from a checkpoint's dict and DDP's `module.` prefix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"train.pretrained: weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a weights file, or a pickle of code that weights_only refuses
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: not a loadable weights file ({first})") from None
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path}: expected a state_dict (names -> tensors), got {type(state).__name__}")
    if all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def layout_of(state: dict[str, torch.Tensor]) -> str:
    """The key layout of a state_dict: efficientnet_pytorch's (`_conv_stem`, `_blocks.N`), or the model's own."""
    return EFFICIENTNET_PYTORCH if "_conv_stem.weight" in state else "native"


def _counted(key: str) -> bool:
    """False for BatchNorm's num_batches_tracked: a counter, absent from some layouts, never needed to load."""
    return not key.endswith("num_batches_tracked")


def _is_under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def from_efficientnet_pytorch(model: nn.Module, state: dict[str, torch.Tensor], classifier: str,
                              path: Path) -> dict[str, torch.Tensor]:
    """efficientnet_pytorch's tensors renamed to `model`'s: the same tensors in the same order (timm's tf_efficientnet
    and tf_efficientnet_lite models are built from the same TensorFlow graph), matched one by one, shapes checked."""
    theirs = [key for key in state if _counted(key) and not _is_under(key, "_fc")]
    ours = [key for key in model.state_dict() if _counted(key) and not _is_under(key, classifier)]
    if len(theirs) != len(ours):
        raise DataError(f"{path}: efficientnet_pytorch layout with {len(theirs)} tensors (classifier aside), but the "
                        f"model has {len(ours)}: not the same architecture")
    shapes = model.state_dict()
    for mine, source in zip(ours, theirs):
        if shapes[mine].shape != state[source].shape:
            raise DataError(f"{path}: efficientnet_pytorch tensor {source} {tuple(state[source].shape)} does not fit "
                            f"{mine} {tuple(shapes[mine].shape)}: not the same architecture")
    return {mine: state[source] for mine, source in zip(ours, theirs)}


def load_weights_file(model: nn.Module, path: str | os.PathLike, classifier: str) -> str:
    """Load a weights file into `model` (whose output layer is named `classifier`) without the file's classifier;
    returns the file's key layout. Anything else that does not fit is one line naming the first few keys."""
    path = Path(path)
    state = read_state_dict(path)
    layout = layout_of(state)
    if layout == EFFICIENTNET_PYTORCH:
        state = from_efficientnet_pytorch(model, state, classifier, path)
    own = model.state_dict()
    state = {key: value for key, value in state.items() if not _is_under(key, classifier)}
    missing = [key for key in own if key not in state and _counted(key) and not _is_under(key, classifier)]
    unexpected = [key for key in state if key not in own]
    misshaped = [f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}" for key in state
                 if key in own and state[key].shape != own[key].shape]
    problems = [f"{what} {', '.join(keys[:SHOWN])}{f' and {len(keys) - SHOWN} more' if len(keys) > SHOWN else ''}"
                for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
                if keys]
    if problems:
        raise DataError(f"{path}: weights do not fit the architecture ({'; '.join(problems)})")
    model.load_state_dict(state, strict=False)
    return layout
