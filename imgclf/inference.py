"""Running a model, shared by train (validation), evaluate and predict: device choice, mixed precision, logits."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm import tqdm

from imgclf.errors import ConfigError

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def select_device(name: str) -> torch.device:
    """Resolve a device param: `auto` picks cuda, then mps, then cpu; an absent one is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name} was asked for but no CUDA GPU is available")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"device: {name} was asked for but this machine has {torch.cuda.device_count()} GPU(s)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device: mps was asked for but it is not available")
    return torch.device(name)


def loader_options(num_workers: int, device: torch.device) -> dict:
    """DataLoader options shared by evaluate and predict: pinned memory on CUDA, workers kept alive."""
    return {"num_workers": num_workers, "pin_memory": device.type == "cuda",
            "persistent_workers": num_workers > 0}


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a `precision` param: auto is bf16 (or fp16) on CUDA and fp32 elsewhere."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, precision: str = "auto"):
    """Mixed precision as `precision` says (see autocast_dtype); a no-op context for fp32."""
    dtype = autocast_dtype(precision, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def predict_logits(model: nn.Module, loader: Batches, prepare: Callable, device: torch.device,
                   precision: str = "auto", desc: str = "predict",
                   progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits and targets (on the CPU) for every uint8 batch of `loader`, in order."""
    model.eval()
    all_logits, all_targets = [], []
    for images, targets in tqdm(loader, desc=desc, unit="batch", leave=False, mininterval=1.0, disable=not progress):
        with autocast(device, precision):
            logits = model(prepare(images))
        all_logits.append(logits.float().cpu())
        all_targets.append(torch.as_tensor(targets))
    if not all_logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(all_logits), torch.cat(all_targets)
