"""An exponential moving average of a model's weights and buffers (BatchNorm statistics included).

The update is torch.optim.swa_utils' EMA (`get_ema_multi_avg_fn`, `use_buffers=True`): w_ema <- decay *
w_ema + (1 - decay) * w. It differs from AveragedModel in two ways: the step count lives in Python
(AveragedModel reads its on-device counter back every step, a GPU stall), and the decay warms up as
timm's and TensorFlow's do, min(decay, (1 + t) / (10 + t)), so that a short run's average is not
dominated by its random initial weights. torchvision's reference instead restarts the average
during its learning-rate warmup and rescales the decay by the run's length.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """An EMA copy (`module`) of a model, updated after every optimizer step."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay, self.warmup = decay, warmup
        self.updates = 0

    def current_decay(self) -> float:
        """The decay of the next update (warmed up over the first updates)."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards `model`'s parameters and floating-point buffers; copy integer buffers."""
        weight = 1.0 - self.current_decay()
        averaged, current = [], []
        pairs = zip(list(self.module.parameters()) + list(self.module.buffers()),
                    list(model.parameters()) + list(model.buffers()), strict=True)
        for mine, theirs in pairs:
            if mine.is_floating_point():
                averaged.append(mine)
                current.append(theirs.detach())
            else:  # BatchNorm's num_batches_tracked: a count, not something to average
                mine.copy_(theirs)
        if averaged:
            torch._foreach_lerp_(averaged, current, weight)
        self.updates += 1

    def state_dict(self) -> dict:
        """The average and its update count (saved with the resume state)."""
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        """Continue from state_dict()."""
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]
