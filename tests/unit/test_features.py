"""Features once: a frozen backbone's features computed once per image content, kept between runs, and a head trained
on them that ends where the same epochs through the frozen backbone end."""

import json

import numpy as np
import pytest
import torch

from imgclf.checkpoint import load_checkpoint
from imgclf.features import FeatureStore, backbone_digest, compute_features, feature_set_id, features_of
from imgclf.model import build_model, output_layer
from imgclf.train import train_model
from imgclf.transforms import ModelInput
from tests.conftest import tiny_train_config

CPU = torch.device("cpu")


def key(i: int) -> bytes:
    return bytes([i]) * 32


@pytest.fixture
def backbone():
    torch.manual_seed(0)
    return build_model("resnet18", 3, 0.2)


def test_features_are_the_output_layers_input_in_evaluation_mode(backbone):
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    prepare = ModelInput((0.5,) * 3, (0.5,) * 3, CPU)
    seen = []
    hook = output_layer(backbone)[1].register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        backbone.eval()(prepare(images))
    hook.remove()
    assert np.allclose(compute_features(backbone, [images[:2], images[2:]], prepare), seen[0].numpy(), atol=1e-6)


def test_each_content_is_computed_once_and_found_again_by_a_later_store(tmp_path, backbone):
    images = np.random.default_rng(0).integers(0, 256, (6, 3, 16, 16), dtype=np.uint8)
    keys = [key(i) for i in (0, 1, 2, 1, 3, 4)]  # rows 1 and 3: byte-identical files, one content
    prepare = ModelInput((0.5,) * 3, (0.5,) * 3, CPU)
    table, counts = features_of(backbone, images, keys, prepare, FeatureStore(tmp_path, "set"), batch_size=4)
    assert table.shape == (6, 512) and (counts.computed, counts.reused) == (5, 0)
    assert np.array_equal(table[1], table[3])
    again, counts = features_of(backbone, images, keys, prepare, FeatureStore(tmp_path, "set"), batch_size=4)
    assert np.array_equal(again, table) and (counts.computed, counts.reused) == (0, 5)
    grown = keys + [key(9)]
    more = np.concatenate([images, images[:1] // 2])
    _, counts = features_of(backbone, more, grown, prepare, FeatureStore(tmp_path, "set"), batch_size=4)
    assert (counts.computed, counts.reused) == (1, 5)  # a new data version: its new image only
    assert len(list((tmp_path / "set").glob("chunk-*.npz"))) == 2  # each addition a new chunk, none rewritten
    (tmp_path / "set" / "chunk-broken.npz").write_bytes(b"half a file")
    assert len(FeatureStore(tmp_path, "set").found) == 6  # a damaged chunk is ignored, not fatal


def test_a_feature_set_is_named_by_everything_the_features_depend_on(backbone):
    pixels = {"image_size": 16, "stored_size": 16, "resize": "crop", "reducing_gap": None, "pixels": "exact"}
    name = feature_set_id(backbone, "resnet18", pixels, (0.5,) * 3, (0.5,) * 3)
    assert name == feature_set_id(backbone, "resnet18", dict(pixels), (0.5,) * 3, (0.5,) * 3)
    assert name != feature_set_id(backbone, "resnet18", {**pixels, "image_size": 12}, (0.5,) * 3, (0.5,) * 3)
    assert name != feature_set_id(backbone, "resnet18", pixels, (0.4, 0.5, 0.5), (0.5,) * 3)
    before = backbone_digest(backbone)
    torch.nn.init.zeros_(output_layer(backbone)[1].weight)
    assert backbone_digest(backbone) == before  # the new output layer is not the backbone
    with torch.no_grad():
        backbone.conv1.weight.add_(1)
    assert backbone_digest(backbone) != before


def test_head_only_on_cached_features_ends_where_the_same_epochs_through_the_backbone_end(prepared):
    """No augmentation: the same sampler draws and dropout masks, and the frozen backbone in evaluation mode, so
    the two ways differ only by float rounding. (A backbone left in training mode would move BatchNorm's statistics.)"""
    classes = json.loads((prepared / "split/classes.json").read_text())
    still = tiny_train_config().augment.__class__(hflip=False, rotation=0, translate=0, scale=0, crop_scale=1.0,
                                                  crop_ratio=4 / 3, policy="none", erasing=0.0)
    results = {}
    for cache in (True, False):
        cfg = tiny_train_config(epochs=3, freeze_epochs=3, cache_features=cache, augment=still, lr=0.01)
        path = prepared / f"{cache}.pt"
        results[cache] = train_model(cfg, prepared / "split/train.csv", prepared / "split/val.csv",
                                     prepared / "decoded", classes, [1.0, 2.0, 3.0], path)
    cached, through = (load_checkpoint(prepared / f"{cache}.pt")[0].state_dict() for cache in (True, False))
    assert all(torch.allclose(cached[k].float(), through[k].float(), atol=1e-5) for k in cached)
    assert not torch.equal(cached["fc.1.weight"], build_model("resnet18", 3, 0.2).state_dict()["fc.1.weight"])
    history = [[round(m["val_loss"], 5) for m in results[c].history] for c in (True, False)]
    assert history[0] == history[1]
    assert results[True].features is not None and results[False].features is None


def test_a_second_run_reuses_every_feature(prepared, capsys):
    classes = json.loads((prepared / "split/classes.json").read_text())
    store = prepared / "features"
    for lr in (0.001, 0.002):  # a head-only param changed: nothing about the features
        cfg = tiny_train_config(epochs=2, freeze_epochs=2, lr=lr)
        result = train_model(cfg, prepared / "split/train.csv", prepared / "split/val.csv", prepared / "decoded",
                             classes, [1.0, 2.0, 3.0], prepared / "m.pt", features_dir=store)
    train, val = (len((prepared / f"split/{name}.csv").read_text().splitlines()) - 1 for name in ("train", "val"))
    assert (result.features.computed, result.features.reused) == (0, train + val)
    out = capsys.readouterr().out
    assert f"features of the frozen backbone: {train + val} computed, 0 reused" in out
    assert f"features of the frozen backbone: 0 computed, {train + val} reused" in out


def test_features_are_computed_once_per_run_even_without_a_store(prepared, monkeypatch):
    from imgclf import features as features_module

    classes = json.loads((prepared / "split/classes.json").read_text())
    calls = []
    real = features_module.compute_features
    monkeypatch.setattr(features_module, "compute_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = train_model(tiny_train_config(epochs=1, freeze_epochs=1), prepared / "split/train.csv",
                         prepared / "split/val.csv", prepared / "decoded", classes, [1.0, 2.0, 3.0], prepared / "m.pt")
    images = sum(len((prepared / f"split/{name}.csv").read_text().splitlines()) - 1 for name in ("train", "val"))
    assert (result.features.computed, result.features.reused) == (images, 0) and len(calls) == 2  # train, val
