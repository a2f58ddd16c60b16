"""Running a model, shared by train (validation), evaluate, predict and export: device choice, mixed precision,
test-time augmentation, logits."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

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
    """The autocast dtype for a `precision` param: auto is bf16 (or fp16) on CUDA and fp32 elsewhere.

    bf16 only where the GPU has it natively (Ampere, sm 8.0, and later): torch's is_bf16_supported()
    also counts emulation by default, which on a T4 or V100 is slower than fp16 with loss scaling.
    """
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def cpu_native_bf16() -> str | None:
    """The CPU's native bf16 instructions ("amx_bf16" or "avx512_bf16"), or None where bf16 would be emulated.

    From torch's own CPU probes (cpuinfo), falling back to Linux's /proc/cpuinfo flags. Only the
    benchmark (benchmarks.cpu_bf16) reads it: `precision: auto` stays fp32 on CPUs until bf16's speed
    and accuracy have been measured on one that has it (docs/benchmarks.md).
    """
    probes = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    for name, probe in probes.items():
        try:
            if getattr(torch.cpu, probe)():
                return name
        except Exception:  # a private probe renamed or absent: the flags below still tell
            pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        return None
    return next((name for name in probes if name in flags), None)


def autocast(device: torch.device, precision: str):
    """Mixed precision as `precision` says (see autocast_dtype); a no-op context for fp32."""
    dtype = autocast_dtype(precision, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """IEEE float32 in cuDNN convolutions and cuBLAS matmuls for the duration (no TF32), then as before.

    torch lets cuDNN convolutions use TF32 (10-bit mantissa) by default on Ampere and later: fine for
    training, but evaluation must score like the CPU and like model.onnx. Only torch's new
    `fp32_precision` API is used (mixing it with the legacy `allow_tf32` flags is an error in torch 2.14).
    """
    knobs = (torch.backends.cudnn.conv, torch.backends.cudnn.rnn, torch.backends.cuda.matmul)
    saved = [knob.fp32_precision for knob in knobs]
    for knob in knobs:
        knob.fp32_precision = "ieee"
    try:
        yield
    finally:
        for knob, value in zip(knobs, saved):
            knob.fp32_precision = value


def evaluation_precision(device: torch.device, precision: str):
    """The context evaluation runs in: exact float32 for `fp32` (no TF32), autocast for an opt-in bf16/fp16."""
    if precision == "auto":  # auto is training's choice; evaluation opts in to reduced precision explicitly
        raise ValueError("evaluation precision must be fp32, bf16 or fp16")
    if autocast_dtype(precision, device) is None:
        return exact_fp32() if device.type == "cuda" else contextlib.nullcontext()
    return autocast(device, precision)


class HFlipTTA(nn.Module):
    """Test-time augmentation `hflip`: the mean of the model's logits on a batch and on its horizontal mirror.

    Two forward passes per image. Logits are averaged, not probabilities: the result is still a logit
    vector on the model's own scale, so the calibration temperature fitted in train still applies
    (softmax(logits / T)); evaluate's ece_calibrated measures how well it does with TTA on. The one
    implementation: evaluate and predict (model.pt) run it, and export builds it into model.onnx.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # The last axis is the width of N x C x H x W. A per-channel normalisation commutes with the
        # mirror, so it may come before or after (export puts it in front of this module).
        return (self.model(images).float() + self.model(images.flip(-1)).float()) / 2


def with_tta(model: nn.Module, tta: str) -> nn.Module:
    """`model` as `tta` (evaluate.tta / predict.tta) runs it: itself for none, wrapped in HFlipTTA for hflip."""
    if tta == "none":
        return model
    if tta == "hflip":
        return HFlipTTA(model).train(model.training)
    raise ValueError(f"unknown test-time augmentation {tta!r}; expected none or hflip")


@torch.no_grad()
def predict_logits(model: nn.Module, loader: Batches, prepare: Callable, device: torch.device,
                   precision: str = "fp32", desc: str = "predict",
                   progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits and targets (on the CPU) for every uint8 batch of `loader`, in order.

    fp32 unless `precision` opts in to bf16 or fp16 (evaluate and predict's param): validation, early
    stopping and the temperature fit always score in float32, as the CPU and model.onnx do.
    """
    model.eval()
    all_logits, all_targets = [], []
    for images, targets in tqdm(loader, desc=desc, unit="batch", leave=False, mininterval=1.0, disable=not progress):
        with evaluation_precision(device, precision):
            logits = model(prepare(images))
        all_logits.append(logits.float().cpu())
        all_targets.append(torch.as_tensor(targets))
    if not all_logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(all_logits), torch.cat(all_targets)
