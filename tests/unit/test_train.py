"""The train stage and its epoch loop: early stopping keeps the best weights; batches, sampler, schedules, fit."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import WeightedRandomSampler

from imgclf import fit as fit_module
from imgclf.checkpoint import load_checkpoint
from imgclf.errors import DataError
from imgclf.fit import EarlyStopping, TrainingRun, fit
from imgclf.optim import make_scheduler
from imgclf.train import train_model
from imgclf.train_data import make_train_batches, make_val_batches
from tests.conftest import tiny_train_config as tiny_config

CPU = torch.device("cpu")


def toy_run(model, train, val, optimizer, scheduler, **options) -> TrainingRun:
    """A TrainingRun over in-memory float batches (no preprocessing), cross-entropy loss, on the CPU."""
    return TrainingRun(model=model, train_batches=train, val_batches=val, prepare=lambda x: x,
                       criterion=nn.CrossEntropyLoss(), optimizer=optimizer, scheduler=scheduler, device=CPU,
                       **options)


def test_early_stopping_counts_patience_and_keeps_best():
    model = nn.Linear(2, 1)
    stopper = EarlyStopping(patience=2, mode="min")
    assert stopper.update(1.0, model, 1)
    with torch.no_grad():
        model.weight.fill_(5.0)
    assert not stopper.update(1.5, model, 2) and not stopper.should_stop
    assert not stopper.update(1.2, model, 3) and stopper.should_stop
    stopper.restore(model)
    assert stopper.best_epoch == 1 and not torch.all(model.weight == 5.0)
    maximise = EarlyStopping(patience=1, mode="max")
    assert maximise.update(0.5, model, 1) and maximise.update(0.6, model, 2)
    assert not maximise.update(0.6, model, 3) and maximise.should_stop


def test_fit_returns_the_best_epochs_weights_not_the_last(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    data = [(torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]))]
    val_losses = iter([0.9, 0.5, 0.7, 0.8, 0.95])  # best at epoch 2, stop after 3 bad epochs
    monkeypatch.setattr(fit_module, "validate", lambda *args, **kwargs: (next(val_losses), 0.0))
    snapshots = {}

    def on_epoch(metrics):
        snapshots[metrics["epoch"]] = {k: v.clone() for k, v in model.state_dict().items()}

    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    result = fit(toy_run(model, data, data, optimizer, scheduler), epochs=10, patience=3, monitor="val_loss",
                 on_epoch=on_epoch)
    assert (result.best_epoch, result.epochs_run) == (2, 5)
    assert [round(h["lr"], 4) for h in result.history] == [0.5, 0.25, 0.125, 0.0625, 0.0312]
    final = model.state_dict()
    assert all(torch.equal(final[k], snapshots[2][k]) for k in final)
    assert not torch.equal(final["1.weight"], snapshots[5]["1.weight"])


def test_augmentation_reaches_training_batches_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    train = [(torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]))] * 3
    val = [(torch.randn(5, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1]))] * 2
    seen = []

    def augment(images):
        seen.append(images.shape[0])
        return images

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    fit(toy_run(model, train, val, optimizer, scheduler, train_input=augment), epochs=2, patience=5,
        monitor="val_loss")
    assert seen == [4] * 6  # 3 training batches x 2 epochs; the 5-image validation batches never


def test_sampler_balances_classes():
    targets = [0] * 12 + [1] * 8 + [2] * 5
    images = np.zeros((len(targets), 3, 4, 4), dtype=np.uint8)
    cfg = tiny_config()
    weights = [25 / 12, 25 / 8, 25 / 5]
    batches = make_train_batches(images, targets, "sampler", cfg.batch_size, weights,
                                 torch.Generator().manual_seed(0), CPU)
    assert isinstance(batches.batch_sampler.sampler, WeightedRandomSampler)
    drawn = torch.cat([t for _ in range(200) for _, t in batches])
    shares = torch.bincount(drawn, minlength=3).float() / len(drawn)
    assert torch.allclose(shares, torch.full((3,), 1 / 3), atol=0.05)  # raw shares are 0.48/0.32/0.2
    plain = make_train_batches(images, targets, "none", cfg.batch_size, weights, torch.Generator(), CPU)
    assert not isinstance(plain.batch_sampler.sampler, WeightedRandomSampler)
    once = torch.cat([t for _, t in plain]).tolist()
    # Each image at most once; 25 = 3 x 8 + 1, and a lone last image is dropped (BatchNorm needs 2).
    assert len(once) == 24 and all(once.count(k) <= targets.count(k) for k in range(3))


def test_batches_gather_the_right_rows():
    images = np.arange(6, dtype=np.uint8).reshape(6, 1, 1, 1).repeat(3, 1)
    batches = make_val_batches(images, [0, 1, 2, 0, 1, 2], batch_size=4, device=torch.device("cpu"))
    got = list(batches)
    assert len(batches) == 2 and [len(t) for _, t in got] == [4, 2]
    assert got[1][0][:, 0, 0, 0].tolist() == [4, 5] and got[1][1].tolist() == [1, 2]
    assert got[0][0].dtype == torch.uint8


@pytest.mark.parametrize("balance", ["sampler", "loss"])
def test_train_model_writes_best_checkpoint(prepared, balance):
    classes = json.loads((prepared / "split/classes.json").read_text())
    epochs = []
    cfg = tiny_config(epochs=2, balance=balance)
    result = train_model(cfg, prepared / "split/train.csv", prepared / "split/val.csv", prepared / "decoded",
                         classes, [1.0, 2.0, 3.0], prepared / "model.pt", on_epoch=epochs.append)
    assert [m["epoch"] for m in epochs] == [1, 2] and result.epochs_run == 2
    model, meta = load_checkpoint(prepared / "model.pt")
    assert meta["best_epoch"] == result.best_epoch and meta["classes"] == classes
    assert meta["image_size"] == 16  # from the decode stage
    assert meta["params"]["balance"] == balance and meta["params"]["augment"]["hflip"] is False
    json.dumps(meta)  # metadata is plain data


def test_train_refuses_a_decoded_folder_from_another_split(prepared):
    classes = json.loads((prepared / "split/classes.json").read_text())
    val = (prepared / "split/val.csv").read_text().splitlines()
    (prepared / "split/val.csv").write_text("\n".join(val[:-1]) + "\n")  # one image fewer
    with pytest.raises(DataError, match=r"decoded/meta.json: decoded from another val split"):
        train_model(tiny_config(epochs=1), prepared / "split/train.csv", prepared / "split/val.csv",
                    prepared / "decoded", classes, [1.0, 1.0, 1.0], prepared / "model.pt")
    assert not (prepared / "model.pt").exists()


def epoch_lrs(cfg, steps_per_epoch=4):
    """The lr at the start of each epoch, and every batch's lr, under make_scheduler."""
    model = nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler, per_batch = make_scheduler(cfg, optimizer, steps_per_epoch)
    starts, batches = [], []
    for _ in range(cfg.epochs):
        starts.append(optimizer.param_groups[0]["lr"])
        for _ in range(steps_per_epoch):
            batches.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if per_batch:
                scheduler.step()
        if not per_batch:
            scheduler.step()
    return starts, batches, per_batch


def test_step_schedule_is_the_classic_steplr():
    starts, _, per_batch = epoch_lrs(tiny_config(lr=0.1, epochs=8, step_size=3, gamma=0.1))
    assert not per_batch
    assert starts == pytest.approx([0.1] * 3 + [0.01] * 3 + [0.001] * 2)


def test_warmup_ramps_linearly_from_a_tenth_then_hands_over():
    starts, _, _ = epoch_lrs(tiny_config(lr=0.1, epochs=6, warmup_epochs=2, scheduler="cosine"))
    assert starts[:3] == pytest.approx([0.01, 0.055, 0.1])
    assert starts[3] < starts[2] and starts[-1] < 0.03  # then cosine annealing


def test_onecycle_steps_per_batch_and_peaks_at_lr():
    starts, batches, per_batch = epoch_lrs(tiny_config(lr=0.1, epochs=5, scheduler="onecycle"))
    assert per_batch and max(batches) == pytest.approx(0.1, rel=1e-3)
    peak = batches.index(max(batches))
    assert 0 < peak < len(batches) - 1 and batches[0] < 0.01 and batches[-1] < 1e-4


def test_freeze_epochs_train_only_the_head_first():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(16, 3))
    data = [(torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]))]
    snapshots = [{k: v.clone() for k, v in model.state_dict().items()}]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)
    run = toy_run(model, data, data, optimizer, scheduler)
    fit(run, epochs=3, patience=5, monitor="val_loss", freeze_epochs=2,
        on_epoch=lambda m: snapshots.append({k: v.clone() for k, v in model.state_dict().items()}))
    assert torch.equal(snapshots[2]["0.weight"], snapshots[0]["0.weight"])  # frozen for epochs 1-2
    assert not torch.equal(snapshots[1]["2.weight"], snapshots[0]["2.weight"])  # the head learns
    assert not torch.equal(snapshots[3]["0.weight"], snapshots[2]["0.weight"])  # unfrozen in epoch 3
    assert all(p.requires_grad for p in model.parameters())


def test_label_smoothing_reaches_the_loss(prepared, monkeypatch):
    classes = json.loads((prepared / "split/classes.json").read_text())
    made = []
    real = nn.CrossEntropyLoss

    def spy(*args, **kwargs):
        made.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(nn, "CrossEntropyLoss", spy)
    train_model(tiny_config(epochs=1, label_smoothing=0.2), prepared / "split/train.csv",
                prepared / "split/val.csv", prepared / "decoded", classes, [1.0, 1.0, 1.0], prepared / "model.pt")
    assert [kw.get("label_smoothing") for kw in made] == [0.2]  # the training loss; validation stays plain


def test_warmup_must_leave_epochs_and_freezing_them_all_is_head_only_training():
    from imgclf.errors import ConfigError
    with pytest.raises(ConfigError, match="train.warmup_epochs: must be < train.epochs"):
        dataclasses.replace(tiny_config(), epochs=3, warmup_epochs=3).validate()
    dataclasses.replace(tiny_config(), epochs=3, freeze_epochs=5).validate()
    assert dataclasses.replace(tiny_config(), epochs=3, freeze_epochs=3).head_only


def test_monitor_val_f1_keeps_the_epoch_with_the_best_f1(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    data = [(torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]))]
    # (val_loss, val_f1): the loss is lowest at epoch 1, the F1 highest at epoch 3.
    scores = iter([(0.1, 0.5), (0.2, 0.6), (0.3, 0.9), (0.4, 0.7), (0.5, 0.8)])
    monkeypatch.setattr(fit_module, "validate", lambda *args, **kwargs: next(scores))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)
    result = fit(toy_run(model, data, data, optimizer, scheduler), epochs=5, patience=2, monitor="val_f1")
    assert (result.best_epoch, result.epochs_run, result.best_value) == (3, 5, 0.9)




def test_dvclive_hook_still_needed_and_working(tmp_path, monkeypatch):
    """open_live overrides DVCLive's private `Live._init_dvc`, which raises in a git repo without commits.

    If DVCLive stops raising there (or renames the hook), this fails: then the override can go.
    """
    import subprocess

    from dvclive import Live
    from scmrepo.exceptions import SCMError

    from imgclf.live import open_live

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    assert callable(getattr(Live, "_init_dvc", None)), "DVCLive renamed the hook that open_live overrides"
    with pytest.raises(SCMError):
        Live("plain", dvcyaml=False, save_dvc_exp=False)
    with open_live("ours") as live:
        live.log_metric("val_loss", 0.5)
        live.next_step()
    assert (tmp_path / "ours/plots/metrics/val_loss.tsv").exists()




def test_input_size_crops_the_stored_images_and_travels_with_the_model(prepared, tmp_path):
    """train.input_size < decode.image_size: batches are the stored images' centre, and model.pt says so,
    so that evaluate and predict crop their files the same way (images.Geometry)."""
    from imgclf.config import ConfigError
    from imgclf.images import Geometry
    from imgclf.predict import image_batches

    classes = json.loads((prepared / "split/classes.json").read_text())
    args = (prepared / "split/train.csv", prepared / "split/val.csv", prepared / "decoded", classes, [1.0, 1.0, 1.0])
    with pytest.raises(ConfigError, match=r"train.input_size: 24 px is larger than the stored images "
                                          r"\(decode.image_size 16\)"):
        train_model(tiny_config(epochs=1, input_size=24), *args, tmp_path / "no.pt")
    train_model(tiny_config(epochs=1, input_size=12), *args, tmp_path / "model.pt")
    _, meta = load_checkpoint(tmp_path / "model.pt")
    assert (meta["image_size"], meta["stored_size"], meta["resize"], meta["reducing_gap"]) == (12, 16, "crop", None)
    geometry = Geometry.of(meta)
    path = (prepared / "split/val.csv").read_text().splitlines()[1].split(",")[0]
    images, errors = next(image_batches([path], geometry, batch_size=4))
    assert images.shape == (1, 3, 12, 12) and errors == [""]
    assert np.array_equal(images[0], geometry.load(path))


def test_the_closing_line_says_when_the_last_epoch_was_the_best():
    from imgclf.fit import FitResult
    from imgclf.train import best_epoch_words

    history = [{"val_loss": 1.0 - 0.1 * e, "val_f1": 0.5} for e in range(6)]
    cfg = tiny_config(epochs=6)
    assert best_epoch_words(cfg, FitResult(6, 6, 0.5, history)) == \
        "best epoch 6 of 6 (val_loss 0.5); still improving: more epochs may help"
    assert best_epoch_words(cfg, FitResult(4, 6, 0.7, history)) == "best epoch 4 of 6 (val_loss 0.7)"
    assert "still improving" not in best_epoch_words(tiny_config(epochs=9), FitResult(6, 6, 0.5, history))  # stopped


def test_every_epoch_line_says_its_seconds_and_images_per_second(capsys):
    import re

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    data = [(torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]))] * 3
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    fit(toy_run(model, data, data, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 1)), epochs=2, patience=5,
        monitor="val_loss")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and all(re.search(r"  \d+\.\d s \(\d+ img/s\)", line) for line in lines), lines
