"""BatchNorm statistics recomputed over training images ("precise BN") when the running estimates cannot be trusted.

A BatchNorm layer's running mean and variance follow its batches with `momentum`: after t steps the
initial values still weigh (1 - momentum)^t, and the estimate averages the last ~1/momentum steps of
ever-changing weights. torchvision builds MobileNetV3 with momentum 0.01: on a small set (a few steps
per epoch) its eval-mode statistics stay near their initial values for dozens of epochs, so every
image gets the same prediction. Recomputing them with one pass over training images (fvcore's and
Detectron2's precise BN, torch.optim.swa_utils.update_bn) fixes that at the cost of a forward pass.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

# A running estimate counts as converged once its initial value weighs less than this.
INITIAL_WEIGHT = 0.01


def batch_norms(model: nn.Module) -> list[_BatchNorm]:
    """The model's BatchNorm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def statistics_stale(model: nn.Module, steps: int, steps_per_epoch: int) -> bool:
    """True while some BatchNorm layer's running statistics cannot have converged after `steps` training steps.

    Either its initial values still weigh more than INITIAL_WEIGHT, or it averages over more steps
    (1/momentum) than an epoch has, i.e. over weights that are more than an epoch old.
    """
    for layer in batch_norms(model):
        momentum = layer.momentum
        if momentum is None:  # a cumulative average: exact over everything seen
            continue
        if (1.0 - momentum) ** steps > INITIAL_WEIGHT or 1.0 / momentum > steps_per_epoch:
            return True
    return False


@torch.no_grad()
def recompute_statistics(model: nn.Module, batches: Iterable, prepare: Callable[[torch.Tensor], torch.Tensor]) -> int:
    """Replace every BatchNorm layer's running statistics by their average over `batches`; returns images seen.

    The variance is the mean of the batches' variances (as swa_utils.update_bn and fvcore's precise BN):
    `batches` must be shuffled, so that each batch's variance is the population's, not one class's.

    Only the BatchNorm layers run in training mode (dropout and the rest stay in eval mode, so no
    random number is drawn); each layer's momentum and the model's mode are restored afterwards.
    """
    layers = batch_norms(model)
    if not layers:
        return 0
    was_training = model.training
    momenta = [layer.momentum for layer in layers]
    saved = [copy.deepcopy(layer.state_dict()) for layer in layers]
    model.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative moving average: every batch weighs the same
        layer.train()
    seen = 0
    try:
        for images, _ in batches:
            if len(images) > 1:  # training-mode BatchNorm cannot normalise a batch of one image
                model(prepare(images))
                seen += len(images)
    finally:
        for layer, momentum, state in zip(layers, momenta, saved):
            layer.momentum = momentum
            if not seen:  # nothing to average: keep the running statistics as they were
                layer.load_state_dict(state)
        model.train(was_training)
    return seen
