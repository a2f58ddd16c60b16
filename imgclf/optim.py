"""The train stage's optimizer and schedule: parameter groups, Adam, AdamW or SGD, step, cosine or onecycle."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from imgclf.model import output_layer


class Hyperparameters(Protocol):
    """The train params these read (train.TrainConfig has them all)."""

    optimizer: str
    lr: float
    weight_decay: float
    momentum: float
    norm_weight_decay: float | None
    backbone_lr_factor: float
    scheduler: str
    epochs: int
    warmup_epochs: int
    step_size: int
    gamma: float


def parameter_groups(cfg: Hyperparameters, model: nn.Module) -> list[dict] | list[nn.Parameter]:
    """The optimizer's parameter groups: the output layer's first, then the backbone's at lr x backbone_lr_factor,
    each split into decayed weights and norm-layer weights and biases at norm_weight_decay.

    With the defaults (one learning rate, one weight decay) it is model.parameters() itself, the classic recipe.
    """
    if cfg.backbone_lr_factor == 1.0 and cfg.norm_weight_decay is None:
        return list(model.parameters())
    head = {id(p) for p in output_layer(model)[1].parameters()}
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm,
                  nn.modules.instancenorm._InstanceNorm)
    no_decay = set()
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            # torchvision's reference (norm_weight_decay) covers norm layers; timm also exempts every bias.
            if isinstance(module, norm_types) or name == "bias":
                no_decay.add(id(parameter))
    groups: dict[tuple[bool, bool], list] = {}
    for parameter in model.parameters():
        groups.setdefault((id(parameter) in head, id(parameter) in no_decay), []).append(parameter)
    norm_decay = cfg.weight_decay if cfg.norm_weight_decay is None else cfg.norm_weight_decay
    return [{"params": params, "lr": cfg.lr * (1.0 if is_head else cfg.backbone_lr_factor),
             "weight_decay": norm_decay if is_norm else cfg.weight_decay}
            for (is_head, is_norm), params in sorted(groups.items(), key=lambda item: (not item[0][0], item[0][1]))]


def make_optimizer(cfg: Hyperparameters, params) -> torch.optim.Optimizer:
    """Adam (the classic recipe), AdamW or SGD with momentum, as `cfg.optimizer` says (groups may set their own lr)."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: Hyperparameters, optimizer: torch.optim.Optimizer,
                   steps_per_epoch: int) -> tuple[torch.optim.lr_scheduler.LRScheduler, bool]:
    """The learning-rate schedule of `cfg.scheduler` with its warmup; returns (scheduler, steps per batch?)."""
    sched = torch.optim.lr_scheduler
    if cfg.scheduler == "onecycle":
        # OneCycleLR warms up by design; warmup_epochs sets its rising phase (default 30%, as PyTorch's).
        rising = cfg.warmup_epochs / cfg.epochs if cfg.warmup_epochs else 0.3
        # Each group peaks at its own lr (the backbone's is lr x backbone_lr_factor).
        peaks = [group["lr"] for group in optimizer.param_groups]
        return sched.OneCycleLR(optimizer, max_lr=peaks, total_steps=cfg.epochs * max(steps_per_epoch, 1),
                                pct_start=rising), True
    if cfg.scheduler == "cosine":
        main = sched.CosineAnnealingLR(optimizer, T_max=cfg.epochs - cfg.warmup_epochs)
    else:
        main = sched.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if not cfg.warmup_epochs:
        return main, False
    warmup = sched.LinearLR(optimizer, start_factor=0.1, total_iters=cfg.warmup_epochs)
    return sched.SequentialLR(optimizer, [warmup, main], milestones=[cfg.warmup_epochs]), False
