"""Exact resume: a run stopped after any epoch and resumed ends bit-identical to one never stopped."""

import dataclasses
import json
import pickle

import pytest
import torch

from imgclf import train as train_module
from imgclf.resume import FORMAT, EverySeconds, StateWriter
from imgclf.train import train_model
from tests.conftest import tiny_train_config


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


SETTINGS = {
    "step": {},
    "cosine_warmup": {"scheduler": "cosine", "warmup_epochs": 2},
    "onecycle": {"scheduler": "onecycle", "warmup_epochs": 1},
    "freeze_smoothing": {"freeze_epochs": 2, "label_smoothing": 0.1, "optimizer": "sgd"},
    "val_f1_loss_balance": {"monitor": "val_f1", "balance": "loss", "optimizer": "adamw"},
    "early_stop": {"patience": 1, "lr": 0.05, "epochs": 5},
    # Every part of the photo recipe: its random draws and the EMA must resume exactly too.
    "photo_recipe": {"augment": dataclasses.replace(tiny_train_config().augment, hflip=True, crop_scale=0.5,
                                                    policy="trivial_wide", erasing=0.25),
                     "mixup_alpha": 0.2, "cutmix_alpha": 1.0, "ema_decay": 0.9, "clip_grad_norm": 1.0,
                     "norm_weight_decay": 0.0, "backbone_lr_factor": 0.5, "precise_bn": "always",
                     "label_smoothing": 0.1},
}
# The classic recipe runs in the fast tier; every other setting in the full suite.
MATRIX = [pytest.param(name, marks=() if name == "step" else pytest.mark.e2e) for name in SETTINGS]


@pytest.mark.parametrize("setting", MATRIX)
def test_resume_after_a_kill_is_bit_identical(prepared, setting):
    # Killed after epoch 2 of 3: two epochs replayed, one trained after the resume (5 where it stops early).
    cfg = tiny_train_config(**{"epochs": 3, **SETTINGS[setting]})
    state = prepared / ".cache/train_state.pt"
    plain, plain_log = run(prepared, cfg, "plain")  # no state file at all
    with pytest.raises(Killed):
        run(prepared, cfg, "resumed", state, kill_at=min(2, plain.epochs_run))  # in the patience window
    assert state.exists() and not (prepared / "resumed.pt").exists()
    resumed, resumed_log = run(prepared, cfg, "resumed", state)
    assert not state.exists()  # a completed run removes its state
    a, b = weights(prepared / "plain.pt"), weights(prepared / "resumed.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (resumed.best_epoch, resumed.epochs_run, resumed.history) == (plain.best_epoch, plain.epochs_run,
                                                                          plain.history)
    assert resumed_log == plain_log  # the loggers see every epoch once: replayed, then continued
    assert len(resumed_log) == resumed.epochs_run
    assert resumed.temperature == plain.temperature


@pytest.mark.e2e  # slow for the fast tier: three short trainings
def test_killed_after_the_last_epoch_before_the_model_is_written(prepared, monkeypatch):
    cfg = tiny_train_config(epochs=3)
    state = prepared / "state.pt"
    plain, _ = run(prepared, cfg, "plain")

    def die(*args, **kwargs):
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "save_checkpoint", die)
        with pytest.raises(Killed):
            run(prepared, cfg, "resumed", state)
    assert torch.load(state, weights_only=True)["epoch"] == 3
    run(prepared, cfg, "resumed", state)  # no epoch left to train: calibrate and write
    a, b = weights(prepared / "plain.pt"), weights(prepared / "resumed.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.e2e
def test_changed_params_start_fresh_and_say_why(prepared, capsys):
    state = prepared / "state.pt"
    with pytest.raises(Killed):
        run(prepared, tiny_train_config(epochs=3), "m", state, kill_at=2)
    capsys.readouterr()
    run(prepared, tiny_train_config(epochs=3, lr=0.002), "m", state)
    out = capsys.readouterr().out
    assert "not resuming from" in out and "train.lr changed" in out and "resuming from epoch" not in out


def test_resume_says_where_it_continues(prepared, capsys):
    state = prepared / "state.pt"
    with pytest.raises(Killed):
        run(prepared, tiny_train_config(epochs=3), "m", state, kill_at=2)
    capsys.readouterr()
    run(prepared, tiny_train_config(epochs=3), "m", state)
    assert f"resuming from epoch 2 of 3 (saved in {state})" in capsys.readouterr().out
    assert not state.exists()


@pytest.mark.parametrize("content", [b"not a state", pickle.dumps({"format": FORMAT}),
                                     b"\x80\x04\x95" + b"\x00" * 20])
def test_unreadable_or_foreign_state_is_ignored_with_a_warning(prepared, capsys, content):
    state = prepared / "state.pt"
    state.write_bytes(content)
    result, _ = run(prepared, tiny_train_config(epochs=1), "m", state)
    out = capsys.readouterr().out
    assert "warning:" in out and "not a resumable training state" in out and result.epochs_run == 1


def test_a_pickled_payload_in_the_state_file_is_never_executed(prepared, capsys, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"format": FORMAT, "params": {}, "inputs": {}, "x": Payload()}, prepared / "state.pt")
    run(prepared, tiny_train_config(epochs=1), "m", prepared / "state.pt")
    assert not marker.exists() and "warning:" in capsys.readouterr().out


@pytest.mark.e2e  # two short trainings
def test_a_cuda_runs_state_met_on_the_cpu_starts_fresh_and_says_why(prepared, capsys):
    """`device: auto` resolved to CUDA when the state was saved, to the CPU now: no resume across devices."""
    state = prepared / "state.pt"
    cfg = tiny_train_config(epochs=2, device="auto", precision="auto")  # auto is the CPU here
    with pytest.raises(Killed):
        run(prepared, cfg, "m", state, kill_at=1)
    saved = torch.load(state, weights_only=True)
    assert saved["setup"] == {"device": "cpu", "autocast": "float32"}
    saved["setup"] = {"device": "cuda", "autocast": "bfloat16"}  # as a GPU machine writes it
    torch.save(saved, state)
    capsys.readouterr()
    result, _ = run(prepared, cfg, "m", state)
    out = capsys.readouterr().out
    assert (f"not resuming from {state}: device (cuda -> cpu), autocast (bfloat16 -> float32) changed since it was "
            f"saved; starting fresh") in out
    assert "resuming from epoch" not in out and result.epochs_run == 2


def test_a_cpu_runs_state_met_on_cuda_starts_fresh_and_says_why(prepared, capsys):
    """The other direction, at the decision itself: the same params and inputs, a CUDA set-up now."""
    from imgclf.resume import Fingerprint, load_state

    state = prepared / "state.pt"
    with pytest.raises(Killed):
        run(prepared, tiny_train_config(epochs=2, device="auto"), "m", state, kill_at=1)
    saved = torch.load(state, weights_only=True)
    same = Fingerprint(saved["params"], saved["inputs"], {"device": "cpu", "autocast": "float32"})
    assert load_state(state, same)["epoch"] == 1
    capsys.readouterr()
    on_gpu = Fingerprint(saved["params"], saved["inputs"], {"device": "cuda", "autocast": "bfloat16"})
    assert load_state(state, on_gpu) is None
    assert "device (cpu -> cuda), autocast (float32 -> bfloat16) changed" in capsys.readouterr().out


class FakeClock:
    """A clock the test moves: `epoch(seconds)` is one epoch of training."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def saved_epochs(seconds, epoch_lengths):
    clock, saved = FakeClock(), []
    every = EverySeconds(lambda state: saved.append(state["epoch"]), seconds, clock=clock)
    for epoch, length in enumerate(epoch_lengths, start=1):
        clock.now += length
        every({"epoch": epoch})
    return saved


def test_state_every_saves_short_epochs_on_an_interval_and_long_ones_every_epoch():
    # 0: every epoch, whatever their length.
    assert saved_epochs(0, [0.1] * 5) == [1, 2, 3, 4, 5]
    # 10 s epochs, 30 s interval: saved when one more epoch would pass 30 s since the last save
    # (epochs 3, 6, 9 at 30, 60, 90 s): a kill loses at most 30 s.
    assert saved_epochs(30, [10] * 9) == [3, 6, 9]
    # Epochs longer than half the interval: every epoch (waiting for the next would lose more).
    assert saved_epochs(30, [16] * 4) == [1, 2, 3, 4]
    assert saved_epochs(30, [100] * 3) == [1, 2, 3]
    # Epochs that grow: the last one's length is the estimate of the next.
    assert saved_epochs(30, [5, 5, 5, 20, 20]) == [4, 5]


def test_the_train_stage_saves_its_state_on_the_interval(prepared):
    saves = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StateWriter, "__call__", lambda writer, state: saves.append(state["epoch"]))
        run(prepared, tiny_train_config(epochs=2, state_every=0), "every", prepared / "a.pt")
        assert saves == [1, 2]
        saves.clear()
        run(prepared, tiny_train_config(epochs=2, state_every=1e6), "interval", prepared / "b.pt")
        assert saves == []  # two short epochs: a kill would lose less than the interval
