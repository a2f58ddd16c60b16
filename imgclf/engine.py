"""Training and inference loops: one epoch, logits over a loader, and fit() with early stopping on the best weights."""

from __future__ import annotations

import contextlib
import copy
import math
import random
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from imgclf.metrics import weighted_f1


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch Generator for samplers and DataLoaders."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


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


Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def identity(images: torch.Tensor) -> torch.Tensor:
    """No augmentation."""
    return images


def train_one_epoch(model: nn.Module, loader: Batches, prepare: Callable, criterion: nn.Module,
                    optimizer: torch.optim.Optimizer, device: torch.device, scaler: torch.amp.GradScaler,
                    precision: str = "auto", augment: Callable = identity, desc: str = "train",
                    batch_scheduler=None) -> float:
    """One pass over `loader` (uint8 batches, made model input by `prepare`); returns the mean loss per image.

    `batch_scheduler` (OneCycleLR) is stepped after every optimizer step.
    """
    model.train()
    total = torch.zeros((), dtype=torch.float32, device=device)  # float32: MPS has no float64
    count = 0
    progress = tqdm(loader, desc=desc, unit="batch", leave=False, mininterval=1.0)
    for step, (images, targets) in enumerate(progress, 1):
        images = augment(prepare(images))
        targets = targets.to(device, non_blocking=True)
        with autocast(device, precision):
            loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if batch_scheduler is not None:
            batch_scheduler.step()
        # Summed on the device: reading a loss back every step would stall a GPU's queue.
        total += loss.detach() * len(targets)
        count += len(targets)
        if step % 20 == 0:
            progress.set_postfix(loss=f"{total.item() / count:.4f}", refresh=False)
    return total.item() / max(count, 1)


@torch.no_grad()
def predict_logits(model: nn.Module, loader: Batches, prepare: Callable, device: torch.device,
                   precision: str = "auto", desc: str = "predict") -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits and targets (on the CPU) for every uint8 batch of `loader`, in order."""
    model.eval()
    all_logits, all_targets = [], []
    for images, targets in tqdm(loader, desc=desc, unit="batch", leave=False, mininterval=1.0):
        with autocast(device, precision):
            logits = model(prepare(images))
        all_logits.append(logits.float().cpu())
        all_targets.append(torch.as_tensor(targets))
    if not all_logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(all_logits), torch.cat(all_targets)


class EarlyStopping:
    """Tracks the monitored value, keeps a copy of the best weights, and says when to stop."""

    def __init__(self, patience: int, mode: str = "min"):
        if mode not in ("min", "max"):
            raise ValueError("mode must be 'min' or 'max'")
        self.patience = patience
        self.mode = mode
        self.best_value = math.inf if mode == "min" else -math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0

    def update(self, value: float, model: nn.Module, epoch: int) -> bool:
        """Record this epoch's value; copy the weights if it is the best so far. Returns improved?"""
        improved = value < self.best_value if self.mode == "min" else value > self.best_value
        if improved:
            self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
            self.best_state = copy.deepcopy(model.state_dict())
        else:
            self.bad_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        """True once `patience` epochs in a row brought no improvement."""
        return self.bad_epochs >= self.patience

    def restore(self, model: nn.Module) -> None:
        """Load the best epoch's weights back into `model` (the last epoch's are rarely the best)."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


@dataclass
class FitResult:
    """What fit() reports: the best epoch, how many epochs ran, and per-epoch metrics."""

    best_epoch: int
    epochs_run: int
    best_value: float
    history: list[dict] = field(default_factory=list)
    temperature: float = 1.0  # set by the train stage after calibrating on validation


def fit(model: nn.Module, train_loader: Batches, val_loader: Batches, prepare: Callable, criterion: nn.Module,
        optimizer: torch.optim.Optimizer, scheduler, *, epochs: int, patience: int, monitor: str,
        device: torch.device, precision: str = "auto", augment: Callable = identity,
        scheduler_per_batch: bool = False, freeze_epochs: int = 0,
        set_frozen: Callable[[bool], None] = lambda frozen: None,
        on_epoch: Callable[[dict], None] = lambda metrics: None) -> FitResult:
    """Train up to `epochs`, validate each epoch, stop early on `monitor`, and restore the best weights.

    The scheduler steps once per epoch, or after every batch with `scheduler_per_batch`. For the first
    `freeze_epochs` epochs `set_frozen(True)` leaves only the output layer trainable.
    """
    stopper = EarlyStopping(patience, mode="min" if monitor == "val_loss" else "max")
    # Loss scaling is needed only for fp16 on CUDA; bf16 and fp32 pass through unchanged.
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda"
                                  and autocast_dtype(precision, device) == torch.float16)
    history = []
    for epoch in range(1, epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        if freeze_epochs:
            set_frozen(epoch <= freeze_epochs)
        train_loss = train_one_epoch(model, train_loader, prepare, criterion, optimizer, device, scaler,
                                     precision, augment, desc=f"epoch {epoch}/{epochs} train",
                                     batch_scheduler=scheduler if scheduler_per_batch else None)
        val_loss, val_f1 = validate(model, val_loader, prepare, device, precision,
                                    desc=f"epoch {epoch}/{epochs} val")
        if not scheduler_per_batch:
            scheduler.step()
        metrics = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_f1": val_f1, "lr": lr}
        history.append(metrics)
        improved = stopper.update(metrics[monitor], model, epoch)
        tqdm.write(f"epoch {epoch}/{epochs}: train_loss {train_loss:.4f}  val_loss {val_loss:.4f}  "
                   f"val_f1 {val_f1:.4f}  lr {lr:.2e}{'  *best' if improved else ''}")
        on_epoch(metrics)
        if stopper.should_stop:
            tqdm.write(f"early stopping: no {monitor} improvement for {patience} epochs")
            break
    stopper.restore(model)
    return FitResult(best_epoch=stopper.best_epoch, epochs_run=len(history),
                     best_value=stopper.best_value, history=history)


def validate(model: nn.Module, loader: Batches, prepare: Callable, device: torch.device,
             precision: str = "auto", desc: str = "val") -> tuple[float, float]:
    """Unweighted cross-entropy and weighted F1 of `model` on `loader`."""
    logits, targets = predict_logits(model, loader, prepare, device, precision, desc=desc)
    loss = F.cross_entropy(logits, targets).item()
    return loss, weighted_f1(targets.numpy(), logits.argmax(1).numpy())
