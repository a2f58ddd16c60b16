"""The train stage's epoch loop: one training epoch, validation, early stopping on the best weights, fit()."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from imgclf.augment.mixing import BatchMix, mixed_loss
from imgclf.distributed import World
from imgclf.ema import WeightAverage
from imgclf.inference import Batches, autocast, autocast_dtype, predict_logits
from imgclf.metrics import weighted_f1
from imgclf.model import classifier_head, set_backbone_trainable, train_mode
from imgclf.precise_bn import recompute_statistics, statistics_stale
from imgclf.resume import restore_rng_states, rng_states


@dataclass
class CachedFeatures:
    """The frozen backbone's pooled features of every training and validation image, computed once
    (imgclf/features.py): while the backbone is frozen, the head trains and validates on these batches of
    (float32 features, targets) instead of running every image through the backbone again."""

    train_batches: Batches
    val_batches: Batches


@dataclass
class TrainingRun:
    """Everything one training run steps and reads, built once by the train stage and handed to fit().

    `model` is the plain model, what is validated and saved; the optimizer steps `stepped`, its
    DistributedDataParallel wrapper under torchrun and torch.compile's if `compile`, rebuilt when the
    trainable set changes (DDP registers its gradient hooks for the parameters that train when it is
    built). `scheduler` steps once per epoch, or after every batch when `scheduler_per_batch`
    (OneCycleLR). Training batches go through `train_input` (augmentation; default `prepare`), then
    `mix` (MixUp/CutMix) when active. With `ema`, its average is what validates and what is kept.
    `precise_bn` (auto | always | never) recomputes BatchNorm statistics over `bn_batches` (training
    images, not augmented) before validating. `features`: while the backbone is frozen, the head trains
    on them (fit uses `head_run()`).
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
    train_input: Callable[[torch.Tensor], torch.Tensor] | None = None  # uint8 batch -> augmented model input
    scheduler_per_batch: bool = False
    generator: torch.Generator | None = None  # the sampler's and augmentation's: saved with the state
    world: World = World()  # this process's rank; val_batches then hold its shard of the validation set
    compile: bool = False
    mix: BatchMix | None = None
    ema: WeightAverage | None = None
    clip_grad_norm: float = 0.0
    precise_bn: str = "never"
    bn_batches: Batches | None = None
    features: CachedFeatures | None = None
    owner: nn.Module | None = None  # the whole model, when `model` is a part of it (the head): what EMA averages
    frozen: bool = field(init=False, default=False)
    stepped: nn.Module = field(init=False)
    scaler: torch.amp.GradScaler = field(init=False)

    def __post_init__(self) -> None:
        # Loss scaling is needed only for fp16 on CUDA; bf16 and fp32 pass through unchanged.
        fp16 = autocast_dtype(self.precision, self.device) == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.device.type == "cuda" and fp16)
        self.train_input = self.train_input or self.prepare
        self.stepped = self._wrap()
        self._head_run: TrainingRun | None = None

    def _wrap(self) -> nn.Module:
        """DDP over the parameters that train now (averaging their gradients over the processes, from rank 0's
        weights), compiled if asked; both share their parameters with `model`."""
        stepped = self.model
        if self.world.distributed:
            stepped = DistributedDataParallel(self.model, device_ids=[self.device.index]
                                              if self.device.type == "cuda" else None)
        return torch.compile(stepped) if self.compile else stepped  # opt-in (see docs/benchmarks.md)

    def set_frozen(self, frozen: bool) -> None:
        """Freeze the backbone (only the output layer trains, the backbone runs in evaluation mode) or unfreeze it.

        Under DDP a changed trainable set gets a new DDP (measured in docs/distributed.md: a rebuild per
        change costs nothing per step; find_unused_parameters would cost every step).
        """
        before = [parameter.requires_grad for parameter in self.model.parameters()]
        set_backbone_trainable(self.model, not frozen)
        self.frozen = frozen
        if before != [parameter.requires_grad for parameter in self.model.parameters()] and self.world.distributed:
            self.stepped = self._wrap()

    @property
    def evaluator(self) -> nn.Module:
        """What validates, is early-stopped on and is kept: the weight average, else the plain model."""
        return self.ema.module if self.ema is not None else self.model

    def head_run(self) -> TrainingRun:
        """This run on the cached features: the head alone (the model's dropout and output layer, shared) stepped
        by the same optimizer, schedule and loss scaler, its batches the features' (not augmented, not mixed)."""
        if self._head_run is None:
            head = classifier_head(self.model)
            self._head_run = dataclasses.replace(
                self, model=head, train_batches=self.features.train_batches, val_batches=self.features.val_batches,
                prepare=lambda features: features.to(self.device, non_blocking=True), train_input=None,
                compile=False, mix=None, precise_bn="never", bn_batches=None, features=None, owner=self.model)
            self._head_run.scaler = self.scaler
        return self._head_run


def train_one_epoch(run: TrainingRun, desc: str = "train") -> float:
    """One pass over the training batches (augmented, after `prepare`); returns the mean loss per image.

    Under DDP the loss is this process's; the gradients are averaged over the processes by DDP.
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
    train_mode(run.model, frozen_backbone=run.frozen)
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
            outputs = run.stepped(images)
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
            run.ema.update(run.owner or run.model)
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


@dataclass(frozen=True)
class FitResult:
    """What fit() reports: the best epoch, how many epochs ran, the best monitored value, per-epoch metrics."""

    best_epoch: int
    epochs_run: int
    best_value: float
    history: list[dict] = field(default_factory=list)


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


def run_epoch(run: TrainingRun, epoch: int, epochs: int, steps_per_epoch: int) -> tuple[dict, str]:
    """Train one epoch (on the cached features while the backbone is frozen and they exist), then validate
    what is kept; returns the epoch's metrics and its timing in words (kept out of the metrics, which a
    resumed run must reproduce exactly)."""
    start = time.perf_counter()
    lr = run.optimizer.param_groups[0]["lr"]
    on_features = run.frozen and run.features is not None
    stepping = run.head_run() if on_features else run
    total, count = train_epoch_on_device(stepping, desc=f"epoch {epoch}/{epochs} train")
    train_loss = total.item() / max(count, 1)
    train_seconds = time.perf_counter() - start
    if not run.frozen and (run.precise_bn == "always" or (
            run.precise_bn == "auto" and statistics_stale(run.model, epoch * steps_per_epoch, steps_per_epoch))):
        recompute_statistics(run.evaluator, run.bn_batches, run.prepare)
    judged = classifier_head(run.evaluator) if on_features else run.evaluator
    val_loss, val_f1 = validate(judged, stepping.val_batches, stepping.prepare, run.device,
                                desc=f"epoch {epoch}/{epochs} val", world=run.world)
    if not run.scheduler_per_batch:
        run.scheduler.step()
    timing = f"{time.perf_counter() - start:.1f} s ({count * run.world.world_size / train_seconds:.0f} img/s" \
             f"{', features' if on_features else ''})"
    return {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_f1": val_f1, "lr": lr}, timing


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
    steps_per_epoch = max(len(run.train_batches), 1)
    for epoch in range(first, epochs + 1):
        getattr(run.train_batches, "set_epoch", lambda e: None)(epoch)
        if run.features is not None:
            getattr(run.features.train_batches, "set_epoch", lambda e: None)(epoch)
        if freeze_epochs:
            run.set_frozen(epoch <= freeze_epochs)
        metrics, timing = run_epoch(run, epoch, epochs, steps_per_epoch)
        history.append(metrics)
        improved = stopper.update(metrics[monitor], run.evaluator, epoch)
        # Losses to 4 significant digits: near 0, `*best` for a loss printed as 0.0000 would look like a bug.
        say(f"epoch {epoch}/{epochs}: train_loss {metrics['train_loss']:.4g}  val_loss {metrics['val_loss']:.4g}  "
            f"val_f1 {metrics['val_f1']:.4f}  lr {metrics['lr']:.2e}  {timing}{'  *best' if improved else ''}")
        on_epoch(metrics)
        if save_state is not None:
            save_state(run_state(run, stopper, history, epoch))
        if stopper.should_stop:
            say(f"early stopping: no {monitor} improvement for {patience} epochs")
            break
    stopper.restore(run.evaluator)
    return FitResult(best_epoch=stopper.best_epoch, epochs_run=len(history), best_value=stopper.best_value,
                     history=history)
