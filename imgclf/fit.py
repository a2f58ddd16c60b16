"""The train stage's epoch loop: one training epoch, validation, early stopping on the best weights, fit()."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from imgclf.distributed import World
from imgclf.ema import WeightAverage
from imgclf.inference import Batches, autocast, autocast_dtype, predict_logits
from imgclf.metrics import weighted_f1
from imgclf.mixing import BatchMix, mixed_loss
from imgclf.precise_bn import recompute_statistics, statistics_stale
from imgclf.resume import restore_rng_states, rng_states


def identity(images: torch.Tensor) -> torch.Tensor:
    """No augmentation."""
    return images


@dataclass
class TrainingRun:
    """Everything one training run steps and reads, built once by the train stage and handed to fit().

    `model` is what is stepped (a torch.compile wrapper shares its parameters with the plain model).
    `scheduler` steps once per epoch, or after every batch when `scheduler_per_batch` (OneCycleLR).
    `set_frozen(True)` leaves only the output layer trainable (for `freeze_epochs`); when the stepped
    model cannot follow a change of the trainable set (DDP registers its gradient hooks for the
    parameters that train when it is built), it returns the model to step from now on, else None.
    Training batches go through `train_input` (default: `augment(prepare(images))`), then `mix`
    (MixUp/CutMix) when active. With `ema`, its average is what validates and what is kept.
    `precise_bn` (auto | always | never) recomputes BatchNorm statistics over `bn_batches` (training
    images, not augmented) before validating.
    """

    model: nn.Module
    train_batches: Batches
    val_batches: Batches
    prepare: Callable[[torch.Tensor], torch.Tensor]  # uint8 batch -> model input on the device
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    precision: str = "auto"
    augment: Callable[[torch.Tensor], torch.Tensor] = identity
    scheduler_per_batch: bool = False
    set_frozen: Callable[[bool], nn.Module | None] = lambda frozen: None
    generator: torch.Generator | None = None  # the sampler's and augmentation's: saved with the state
    world: World = World()  # this process's rank; val_batches then hold its shard of the validation set
    eval_model: nn.Module | None = None  # what validates (the plain model under DDP); default `model`
    train_input: Callable[[torch.Tensor], torch.Tensor] | None = None  # uint8 batch -> augmented model input
    mix: BatchMix | None = None
    ema: WeightAverage | None = None
    clip_grad_norm: float = 0.0
    precise_bn: str = "never"
    bn_batches: Batches | None = None
    scaler: torch.amp.GradScaler = field(init=False)

    def __post_init__(self) -> None:
        # Loss scaling is needed only for fp16 on CUDA; bf16 and fp32 pass through unchanged.
        fp16 = autocast_dtype(self.precision, self.device) == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.device.type == "cuda" and fp16)
        if self.train_input is None:
            self.train_input = lambda images: self.augment(self.prepare(images))

    @property
    def evaluator(self) -> nn.Module:
        """What validates, is early-stopped on and is kept: the weight average, else the plain model."""
        if self.ema is not None:
            return self.ema.module
        return self.eval_model if self.eval_model is not None else self.model


def train_one_epoch(run: TrainingRun, desc: str = "train") -> float:
    """One pass over the training batches (augmented, after `prepare`); returns the mean loss per image.

    Under DDP the loss is this process's; the gradients are averaged over the processes by DDP.
    The mean is the only value read back from the device, once, after the epoch.
    """
    total, count = train_epoch_on_device(run, desc)
    return total.item() / max(count, 1)


def train_epoch_on_device(run: TrainingRun, desc: str = "train") -> tuple[torch.Tensor, int]:
    """train_one_epoch's loop: (the loss summed over the images, still on the device; the image count).

    Nothing in it waits for the GPU: no value is read back (a read-back would stall the GPU's queue
    every time), and every host-to-device copy is from pinned memory (the GPU tier checks it under
    torch.cuda.set_sync_debug_mode("error")). fp16's GradScaler is the exception: its step reads
    the inf check back (torch's design); bf16 and fp32 have none.
    """
    run.model.train()
    total = torch.zeros((), dtype=torch.float32, device=run.device)  # float32: MPS has no float64
    count = 0
    progress = tqdm(run.train_batches, desc=desc, unit="batch", leave=False, mininterval=1.0,
                    disable=not run.world.is_main)
    mixing = run.mix is not None and run.mix.active
    for images, targets in progress:
        images = run.train_input(images)
        targets = targets.to(run.device, non_blocking=True)
        if mixing:
            images, partners, lam = run.mix(images, targets)
        with autocast(run.device, run.precision):
            outputs = run.model(images)
            loss = mixed_loss(run.criterion, outputs, targets, partners, lam) if mixing \
                else run.criterion(outputs, targets)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        if run.clip_grad_norm:
            run.scaler.unscale_(run.optimizer)  # clip the true gradients, not fp16's scaled ones
            nn.utils.clip_grad_norm_(run.model.parameters(), run.clip_grad_norm)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        if run.ema is not None:
            run.ema.update(run.model)
        if run.scheduler_per_batch:
            run.scheduler.step()
        # Summed on the device: reading a loss back every step would stall a GPU's queue.
        total += loss.detach() * len(targets)
        count += len(targets)
    return total, count


def all_logits(model: nn.Module, loader: Batches, prepare: Callable, device: torch.device, desc: str = "val",
               world: World = World()) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits and targets of the whole validation set, in its order, on every process.

    Always float32, whatever the training precision: early stopping, the best epoch and the
    temperature shipped in model.pt must not depend on autocast (nor differ between CUDA and CPU).

    Under DDP each process holds positions rank, rank + world_size, ... (no padding: every image
    counts once); their logits are gathered and interleaved back. The model's buffers (BatchNorm's
    running statistics) are first made rank 0's, so every process scores the same weights.
    """
    if world.distributed:
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)
    logits, targets = predict_logits(model, loader, prepare, device, "fp32", desc=desc, progress=world.is_main)
    if not world.distributed:
        return logits, targets
    parts = world.gather((logits, targets))
    total = sum(len(t) for _, t in parts)
    classes = max(part.shape[1] for part, _ in parts)  # a rank with no image returns 0 x 0
    full_logits = torch.empty(total, classes)
    full_targets = torch.empty(total, dtype=torch.long)
    for rank, (part_logits, part_targets) in enumerate(parts):
        if len(part_targets):
            full_logits[rank::world.world_size] = part_logits
            full_targets[rank::world.world_size] = part_targets
    return full_logits, full_targets


def validate(model: nn.Module, loader: Batches, prepare: Callable, device: torch.device, desc: str = "val",
             world: World = World()) -> tuple[float, float]:
    """Unweighted cross-entropy and weighted F1 of `model` on the whole validation set (the same on every rank).

    In float32 (all_logits), whatever the training precision.
    """
    logits, targets = all_logits(model, loader, prepare, device, desc, world)
    loss = F.cross_entropy(logits, targets).item()
    return loss, weighted_f1(targets.numpy(), logits.argmax(1).numpy())


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

    def state_dict(self, epoch: int) -> dict:
        """What resuming after `epoch` needs: the counters and the best weights.

        When `epoch` is the best so far, its weights are the model's own, saved beside: no second copy.
        """
        best = None if self.best_epoch == epoch else self.best_state
        return {"best_value": self.best_value, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "best_state": best}

    def load_state_dict(self, state: dict, model: nn.Module) -> None:
        """Continue from state_dict()'s counters and best weights (`model`'s, when it was the best)."""
        self.best_value, self.best_epoch = state["best_value"], state["best_epoch"]
        self.bad_epochs = state["bad_epochs"]
        self.best_state = state["best_state"] if state["best_state"] is not None else \
            copy.deepcopy(model.state_dict())


@dataclass
class FitResult:
    """What fit() reports: the best epoch, how many epochs ran, and per-epoch metrics."""

    best_epoch: int
    epochs_run: int
    best_value: float
    history: list[dict] = field(default_factory=list)
    temperature: float = 1.0  # set by the train stage after calibrating on validation
    calibration: Any = None  # the train stage's calibration.Calibration


def run_state(run: TrainingRun, stopper: EarlyStopping, history: list[dict], epoch: int) -> dict:
    """Everything needed to continue `run` after `epoch` exactly as if it had never stopped."""
    return {"epoch": epoch, "history": list(history), "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(), "stopper": stopper.state_dict(epoch),
            "ema": run.ema.state_dict() if run.ema is not None else None,
            "rng": run.world.gather(rng_states(run.generator, run.device))}  # every process's, by rank


def load_run_state(run: TrainingRun, stopper: EarlyStopping, state: dict) -> list[dict]:
    """Put `run` and `stopper` back where run_state() saved them; returns the history so far."""
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if state["scaler"]:  # a disabled scaler saves {}: the set-up (fingerprinted) made it so, and still does
        run.scaler.load_state_dict(state["scaler"])
    if run.ema is not None:  # before the stopper, whose best weights may be the average's own
        run.ema.load_state_dict(state["ema"])
    stopper.load_state_dict(state["stopper"], run.evaluator)
    if len(state["rng"]) != run.world.world_size:  # the fingerprint holds the world size: a bug if reached
        raise ValueError(f"a state of {len(state['rng'])} processes cannot resume {run.world.world_size}")
    restore_rng_states(state["rng"][run.world.rank], run.generator, run.device)
    return list(state["history"])


def fit(run: TrainingRun, *, epochs: int, patience: int, monitor: str, freeze_epochs: int = 0,
        on_epoch: Callable[[dict], None] = lambda metrics: None, resume_from: dict | None = None,
        save_state: Callable[[dict], None] | None = None) -> FitResult:
    """Train up to `epochs`, validate each epoch, stop early on `monitor`, and restore the best weights.

    For the first `freeze_epochs` epochs only the output layer trains (`run.set_frozen`). After every
    epoch `save_state` receives run_state(); a run given that state as `resume_from` replays the
    saved epochs to `on_epoch` and continues with the next one, bit for bit as if never stopped.
    """
    stopper = EarlyStopping(patience, mode="min" if monitor == "val_loss" else "max")
    history = load_run_state(run, stopper, resume_from) if resume_from else []
    for metrics in history:
        on_epoch(metrics)  # the loggers' history is rebuilt, step for step
    first = len(history) + 1 if not stopper.should_stop else epochs + 1
    say = tqdm.write if run.world.is_main else (lambda text: None)
    evaluator = run.evaluator
    steps_per_epoch = max(len(run.train_batches), 1)
    for epoch in range(first, epochs + 1):
        getattr(run.train_batches, "set_epoch", lambda e: None)(epoch)
        lr = run.optimizer.param_groups[0]["lr"]
        if freeze_epochs:
            stepped = run.set_frozen(epoch <= freeze_epochs)
            if stepped is not None:
                run.model = stepped
        train_loss = train_one_epoch(run, desc=f"epoch {epoch}/{epochs} train")
        if run.precise_bn == "always" or (
                run.precise_bn == "auto" and statistics_stale(run.model, epoch * steps_per_epoch, steps_per_epoch)):
            recompute_statistics(evaluator, run.bn_batches, run.prepare)
        val_loss, val_f1 = validate(evaluator, run.val_batches, run.prepare, run.device,
                                    desc=f"epoch {epoch}/{epochs} val", world=run.world)
        if not run.scheduler_per_batch:
            run.scheduler.step()
        metrics = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_f1": val_f1, "lr": lr}
        history.append(metrics)
        improved = stopper.update(metrics[monitor], evaluator, epoch)
        say(f"epoch {epoch}/{epochs}: train_loss {train_loss:.4f}  val_loss {val_loss:.4f}  "
                   f"val_f1 {val_f1:.4f}  lr {lr:.2e}{'  *best' if improved else ''}")
        on_epoch(metrics)
        if save_state is not None:
            save_state(run_state(run, stopper, history, epoch))
        if stopper.should_stop:
            say(f"early stopping: no {monitor} improvement for {patience} epochs")
            break
    stopper.restore(evaluator)
    return FitResult(best_epoch=stopper.best_epoch, epochs_run=len(history),
                     best_value=stopper.best_value, history=history)
