"""Training loop: early stopping keeps the best weights; datasets, sampler and a real short fit."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import WeightedRandomSampler

from imgclf import engine
from imgclf.checkpoint import load_checkpoint
from imgclf.config import TrainConfig, load_section
from imgclf.data import scan_image_folder, stratified_split
from imgclf.engine import EarlyStopping, fit
from imgclf.training import make_datasets, make_train_loader, train_model

ROOT = Path(__file__).resolve().parents[2]


def tiny_config(**changes) -> TrainConfig:
    """The repository's train params, shrunk for a test."""
    cfg = load_section(ROOT / "params.yaml", "train", TrainConfig)
    return dataclasses.replace(cfg, image_size=16, batch_size=8, device="cpu", **changes)


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
    monkeypatch.setattr(engine, "validate", lambda *args, **kwargs: (next(val_losses), 0.0))
    snapshots = {}

    def on_epoch(metrics):
        snapshots[metrics["epoch"]] = {k: v.clone() for k, v in model.state_dict().items()}

    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    result = fit(model, data, data, nn.CrossEntropyLoss(), optimizer, scheduler, epochs=10, patience=3,
                 monitor="val_loss", device=torch.device("cpu"), on_epoch=on_epoch)
    assert (result.best_epoch, result.epochs_run) == (2, 5)
    assert [round(h["lr"], 4) for h in result.history] == [0.5, 0.25, 0.125, 0.0625, 0.0312]
    final = model.state_dict()
    assert all(torch.equal(final[k], snapshots[2][k]) for k in final)
    assert not torch.equal(final["1.weight"], snapshots[5]["1.weight"])


def split_frames(image_folder):
    scan = scan_image_folder(image_folder)
    parts = stratified_split(scan.candidates, scan.classes, 0.2, 0.2, seed=0)
    return scan.classes, parts


def test_validation_never_sees_training_augmentation(image_folder):
    classes, parts = split_frames(image_folder)
    train_set, val_set = make_datasets(tiny_config(), read_split_frame(parts["train"], classes),
                                       read_split_frame(parts["val"], classes))
    torch.manual_seed(0)
    assert torch.equal(val_set[0][0], val_set[0][0])
    assert not torch.equal(train_set[0][0], train_set[0][0])  # rotation/translate/scale are on


def read_split_frame(frame, classes):
    frame = frame.copy()
    frame["target"] = frame["label"].map({c: i for i, c in enumerate(classes)})
    return frame


def test_sampler_balances_classes(image_folder):
    classes, parts = split_frames(image_folder)
    cfg = tiny_config()
    train_set, _ = make_datasets(cfg, read_split_frame(parts["train"], classes),
                                 read_split_frame(parts["val"], classes))
    counts = [train_set.targets.count(k) for k in range(3)]
    weights = [sum(counts) / c for c in counts]
    loader = make_train_loader(train_set, cfg, weights, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert isinstance(loader.sampler, WeightedRandomSampler)
    drawn = [train_set.targets[i] for _ in range(200) for i in loader.sampler]
    shares = torch.bincount(torch.tensor(drawn), minlength=3).float() / len(drawn)
    assert torch.allclose(shares, torch.full((3,), 1 / 3), atol=0.05)  # raw shares are 0.48/0.32/0.2
    assert not isinstance(make_train_loader(train_set, dataclasses.replace(cfg, balance="none"), weights,
                                            torch.Generator(), torch.device("cpu")).sampler,
                          WeightedRandomSampler)


@pytest.mark.parametrize("balance", ["sampler", "loss"])
def test_train_model_writes_best_checkpoint(tmp_path, image_folder, balance):
    classes, parts = split_frames(image_folder)
    for name, frame in parts.items():
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
    epochs = []
    cfg = tiny_config(epochs=2, balance=balance)
    result = train_model(cfg, tmp_path / "train.csv", tmp_path / "val.csv", classes, [1.0, 2.0, 3.0],
                         tmp_path / "model.pt", on_epoch=epochs.append)
    assert [m["epoch"] for m in epochs] == [1, 2] and result.epochs_run == 2
    model, meta = load_checkpoint(tmp_path / "model.pt")
    assert meta["best_epoch"] == result.best_epoch and meta["classes"] == classes
    assert meta["params"]["balance"] == balance and meta["params"]["augment"]["hflip"] is False
    json.dumps(meta)  # metadata is plain data
