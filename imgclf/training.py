"""The train stage's logic: datasets over the split CSVs, balancing, optimizer, scheduler, fit, checkpoint."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler

from imgclf.checkpoint import save_checkpoint
from imgclf.config import TrainConfig
from imgclf.data import read_split
from imgclf.datasets import ImageListDataset
from imgclf.engine import FitResult, fit, loader_options, seed_everything
from imgclf.model import build_model, select_device
from imgclf.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """Adam (the classic recipe), AdamW or SGD with momentum, as `cfg.optimizer` says."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_train_loader(dataset: ImageListDataset, cfg: TrainConfig, class_weights: Sequence[float],
                      generator: torch.Generator, device: torch.device) -> DataLoader:
    """Batches of training images; with balance=sampler, drawn by a WeightedRandomSampler."""
    # A last batch of one image breaks BatchNorm in training mode; drop it only in that case.
    options = {"batch_size": cfg.batch_size, "generator": generator,
               "drop_last": len(dataset) % cfg.batch_size == 1 and len(dataset) > 1,
               **loader_options(cfg.num_workers, device)}
    if cfg.balance == "sampler":
        # Per-sample weights from the known targets: no image is decoded to find its label.
        sample_weights = torch.tensor([class_weights[t] for t in dataset.targets], dtype=torch.double)
        sampler = WeightedRandomSampler(sample_weights, num_samples=len(dataset), replacement=True,
                                        generator=generator)
        return DataLoader(dataset, sampler=sampler, **options)
    return DataLoader(dataset, shuffle=True, **options)


def make_datasets(cfg: TrainConfig, train_frame, val_frame) -> tuple[ImageListDataset, ImageListDataset]:
    """Separate datasets for the two splits: validation never sees training augmentation."""
    train_set = ImageListDataset(train_frame["path"], train_frame["target"],
                                 train_transform(cfg.image_size, IMAGENET_MEAN, IMAGENET_STD, cfg.augment))
    val_set = ImageListDataset(val_frame["path"], val_frame["target"],
                               eval_transform(cfg.image_size, IMAGENET_MEAN, IMAGENET_STD))
    return train_set, val_set


def train_model(cfg: TrainConfig, train_csv: str | os.PathLike, val_csv: str | os.PathLike,
                classes: Sequence[str], class_weights: Sequence[float], model_path: str | os.PathLike,
                on_epoch: Callable[[dict], None] = lambda metrics: None) -> FitResult:
    """Train `cfg.arch` on the split, keep the best epoch's weights, and write them to `model_path`."""
    device = select_device(cfg.device)
    generator = seed_everything(cfg.seed)
    train_set, val_set = make_datasets(cfg, read_split(train_csv, classes), read_split(val_csv, classes))
    train_loader = make_train_loader(train_set, cfg, class_weights, generator, device)
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size, shuffle=False,
                            **loader_options(cfg.num_workers, device))

    model = build_model(cfg.arch, len(classes), cfg.dropout, cfg.pretrained).to(device)
    loss_weights = torch.tensor(class_weights, dtype=torch.float32, device=device) if cfg.balance == "loss" else None
    criterion = nn.CrossEntropyLoss(weight=loss_weights)
    optimizer = make_optimizer(cfg, model.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels

    print(f"training {cfg.arch} on {device} with {len(train_set)} train / {len(val_set)} val images, "
          f"{len(classes)} classes")
    result = fit(model, train_loader, val_loader, criterion, optimizer, scheduler, epochs=cfg.epochs,
                 patience=cfg.patience, monitor=cfg.monitor, device=device, on_epoch=on_epoch)
    save_checkpoint(model_path, model, arch=cfg.arch, classes=list(classes), image_size=cfg.image_size,
                    mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), dropout=cfg.dropout,
                    params=dataclasses.asdict(cfg), best_epoch=result.best_epoch,
                    epochs_run=result.epochs_run)
    print(f"best epoch {result.best_epoch} of {result.epochs_run} ({cfg.monitor} {result.best_value:.4f}); "
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

