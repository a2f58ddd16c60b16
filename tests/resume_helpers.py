"""What the resume tests share: a training run that can be killed right after an epoch's state is saved."""

import json

import pytest
import torch

from imgclf.resume import StateWriter
from imgclf.train import train_model


class Killed(Exception):
    """Stands in for the process dying (the SIGKILL tests in tests/e2e do it for real)."""


def run(prepared, cfg, name, state=None, kill_at=None):
    """Train; with `kill_at`, die right after epoch `kill_at`'s state is on disk."""
    logged = []
    classes = json.loads((prepared / "split/classes.json").read_text())
    save = StateWriter.__call__

    def save_then_die(writer, snapshot):
        save(writer, snapshot)
        if snapshot["epoch"] == kill_at:
            writer.wait()
            raise Killed

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StateWriter, "__call__", save_then_die)
        result = train_model(cfg, prepared / "split/train.csv", prepared / "split/val.csv", prepared / "decoded",
                             classes, [1.0, 2.0, 3.0], prepared / f"{name}.pt", on_epoch=logged.append,
                             state_path=state)
    return result, logged


def weights(path):
    return torch.load(path, weights_only=True)["state_dict"]
