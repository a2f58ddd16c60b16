"""The train stage's logic: batches from the decoded split, balancing, optimizer, scheduler, fit, checkpoint."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler, WeightedRandomSampler

from imgclf.calibration import calibrated_probabilities, expected_calibration_error, fit_temperature
from imgclf.checkpoint import save_checkpoint
from imgclf.config import TrainConfig
from imgclf.data import read_split
from imgclf.datasets import DecodedBatches
from imgclf.decode import open_decoded
from imgclf.engine import FitResult, autocast_dtype, fit, predict_logits, seed_everything
from imgclf.model import build_model, select_device, set_backbone_trainable
from imgclf.transforms import IMAGENET_MEAN, IMAGENET_STD, BatchRandomAffine, ModelInput, memory_format


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """Adam (the classic recipe), AdamW or SGD with momentum, as `cfg.optimizer` says."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer,
                   steps_per_epoch: int) -> tuple[torch.optim.lr_scheduler.LRScheduler, bool]:
    """The learning-rate schedule of `cfg.scheduler` with its warmup; returns (scheduler, steps per batch?)."""
    sched = torch.optim.lr_scheduler
    if cfg.scheduler == "onecycle":
        # OneCycleLR warms up by design; warmup_epochs sets its rising phase (default 30%, as PyTorch's).
        rising = cfg.warmup_epochs / cfg.epochs if cfg.warmup_epochs else 0.3
        return sched.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * max(steps_per_epoch, 1),
                                pct_start=rising), True
    if cfg.scheduler == "cosine":
        main = sched.CosineAnnealingLR(optimizer, T_max=cfg.epochs - cfg.warmup_epochs)
    else:
        main = sched.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if not cfg.warmup_epochs:
        return main, False
    warmup = sched.LinearLR(optimizer, start_factor=0.1, total_iters=cfg.warmup_epochs)
    return sched.SequentialLR(optimizer, [warmup, main], milestones=[cfg.warmup_epochs]), False


def make_train_batches(images: np.ndarray, targets: Sequence[int], cfg: TrainConfig,
                       class_weights: Sequence[float], generator: torch.Generator,
                       device: torch.device) -> DecodedBatches:
    """Training batches; with balance=sampler, drawn by a WeightedRandomSampler (with replacement)."""
    if cfg.balance == "sampler":
        # Per-sample weights from the known targets: no image is decoded to find its label.
        sample_weights = torch.tensor([class_weights[t] for t in targets], dtype=torch.double)
        sampler = WeightedRandomSampler(sample_weights, num_samples=len(targets), replacement=True,
                                        generator=generator)
    else:
        sampler = RandomSampler(range(len(targets)), generator=generator)
    # A last batch of one image breaks BatchNorm in training mode; drop it only in that case.
    drop_last = len(targets) % cfg.batch_size == 1 and len(targets) > 1
    return DecodedBatches(images, targets, BatchSampler(sampler, cfg.batch_size, drop_last),
                          pin_memory=device.type == "cuda")


def make_val_batches(images: np.ndarray, targets: Sequence[int], batch_size: int,
                     device: torch.device) -> DecodedBatches:
    """Validation batches in file order, never augmented."""
    return DecodedBatches(images, targets, BatchSampler(SequentialSampler(range(len(targets))), batch_size, False),
                          pin_memory=device.type == "cuda")


def train_model(cfg: TrainConfig, train_csv: str | os.PathLike, val_csv: str | os.PathLike,
                decoded_dir: str | os.PathLike, classes: Sequence[str], class_weights: Sequence[float],
                model_path: str | os.PathLike,
                on_epoch: Callable[[dict], None] = lambda metrics: None) -> FitResult:
    """Train `cfg.arch` on the decoded split, keep the best epoch's weights, and write them to `model_path`."""
    device = select_device(cfg.device)
    generator = seed_everything(cfg.seed)
    train_frame, val_frame = read_split(train_csv, classes), read_split(val_csv, classes)
    train_images = open_decoded(decoded_dir, "train", train_frame["path"])  # N x 3 x S x S, checked
    image_size = train_images.shape[-1]
    train_batches = make_train_batches(train_images, train_frame["target"], cfg, class_weights, generator, device)
    val_batches = make_val_batches(open_decoded(decoded_dir, "val", val_frame["path"]), val_frame["target"],
                                   cfg.batch_size, device)
    prepare = ModelInput(IMAGENET_MEAN, IMAGENET_STD, device)
    augment = BatchRandomAffine(cfg.augment, prepare.fill(), generator)

    model = build_model(cfg.arch, len(classes), cfg.dropout, cfg.pretrained)
    model = model.to(device, memory_format=memory_format(device))
    loss_weights = torch.tensor(class_weights, dtype=torch.float32, device=device) if cfg.balance == "loss" else None
    criterion = nn.CrossEntropyLoss(weight=loss_weights, label_smoothing=cfg.label_smoothing)
    optimizer = make_optimizer(cfg, model.parameters())
    scheduler, per_batch = make_scheduler(cfg, optimizer, len(train_batches))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels

    print(f"training {cfg.arch} on {device} ({autocast_dtype(cfg.precision, device) or torch.float32}) "
          f"with {len(train_frame)} train / {len(val_frame)} val images at {image_size} px, "
          f"{len(classes)} classes")
    # Opt-in: on this project's 2-core CPU, resnet18 compiled for 26 s and then ran no faster (293 vs
    # 307 img/s). The compiled wrapper shares its parameters with `model`, which is what gets saved.
    step_model = torch.compile(model) if cfg.compile else model
    result = fit(step_model, train_batches, val_batches, prepare, criterion, optimizer, scheduler, epochs=cfg.epochs,
                 patience=cfg.patience, monitor=cfg.monitor, device=device, precision=cfg.precision,
                 augment=augment, scheduler_per_batch=per_batch, freeze_epochs=cfg.freeze_epochs,
                 set_frozen=lambda frozen: set_backbone_trainable(model, not frozen), on_epoch=on_epoch)
    # Temperature scaling on the validation set: the best model's confidences made to mean what they say.
    val_logits, val_targets = predict_logits(model, val_batches, prepare, device, cfg.precision, desc="calibrate")
    result.temperature = fit_temperature(val_logits, val_targets)
    ece = [expected_calibration_error(calibrated_probabilities(val_logits, t), val_targets)
           for t in (1.0, result.temperature)]
    save_checkpoint(model_path, model, arch=cfg.arch, classes=list(classes), image_size=image_size,
                    mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), dropout=cfg.dropout,
                    params=dataclasses.asdict(cfg), best_epoch=result.best_epoch,
                    epochs_run=result.epochs_run, temperature=result.temperature)
    print(f"best epoch {result.best_epoch} of {result.epochs_run} ({cfg.monitor} {result.best_value:.4f}); "
          f"temperature {result.temperature:.3f} (validation ECE {ece[0]:.4f} -> {ece[1]:.4f}); "
          f"wrote {model_path}")
    return result


def open_live(directory: str | os.PathLike):
    """A DVCLive logger for a stage of a hand-written dvc.yaml (dvcyaml=False, no experiment saving)."""
    from dvclive import Live
    from scmrepo.exceptions import SCMError

    class StageLive(Live):
        """Live that tolerates a git repository without commits (DVCLive 3.49 raises there)."""

        def _init_dvc(self):
            try:
                super()._init_dvc()
            except SCMError:  # only the experiment bookkeeping needs a commit; the files do not
                pass

    return StageLive(directory, dvcyaml=False, save_dvc_exp=False)

