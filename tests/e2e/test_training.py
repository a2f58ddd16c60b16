"""Trainings too slow for the fast tier: MobileNetV3 with and without precise BN, torch.compile, an architecture that
cannot take the image size, and training under autocast (bf16, as `precision: auto` is on CUDA)."""

import json
import math

import numpy as np
import pytest
import torch

from imgclf.checkpoint import load_checkpoint
from imgclf.errors import ConfigError
from imgclf.train import train_model
from imgclf.transforms import ModelInput
from tests.conftest import tiny_train_config


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """A learnable 3-class set at 32 px (a reddish, greenish and bluish tint under noise): 66 train / 30 val."""
    from PIL import Image

    from imgclf.artifacts import write_json
    from imgclf.compute_weights import weights_document
    from imgclf.decode import DecodeConfig, decode_split
    from imgclf.split import split_image_folder, write_split

    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for k, name in enumerate(("red", "green", "blue")):
        for i in range(34):
            pixels = rng.integers(0, 150, (32, 32, 3))
            pixels[..., k] += 100
            (root / "raw" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(root / "raw" / name / f"{i:02d}.png")
    result = split_image_folder(root / "raw", 0.3, 0.05, seed=0, workers=1)
    write_split(root / "split", result.parts, result.classes)
    write_json(root / "weights.json", weights_document(result.classes, [1] * 3, "none", 0.9))
    decode_split(root / "split", root / "decoded", DecodeConfig(32, "crop", "raw", 90, None), workers=1)
    return root


def train_colours(root, model_path, **changes):
    from imgclf.train import train_model

    config = tiny_train_config(batch_size=16, **changes)
    return train_model(config, root / "split/train.csv", root / "split/val.csv", root / "decoded",
                       ["blue", "green", "red"], [1.0, 1.0, 1.0], model_path)


def test_mobilenet_v3_learns_with_precise_bn_and_is_refused_without(colours, tmp_path):
    from imgclf.errors import TrainingError

    epochs = 6
    resnet = train_colours(colours, tmp_path / "resnet.pt", arch="resnet18", epochs=epochs, precise_bn="never")
    assert min(h["val_loss"] for h in resnet.history) < math.log(3) - 0.3  # resnet18 learns it in these epochs
    # Without precise BN, momentum 0.01 leaves the eval-mode statistics near their initial values: one class for all.
    with pytest.raises(TrainingError, match="learned nothing.*predicts class '.*' for every one of the 2[0-9] images"):
        train_colours(colours, tmp_path / "stale.pt", arch="mobilenet_v3_small", epochs=epochs, precise_bn="never")
    assert not (tmp_path / "stale.pt").exists()  # nothing written
    mobilenet = train_colours(colours, tmp_path / "precise.pt", arch="mobilenet_v3_small", epochs=epochs,
                              precise_bn="auto")
    assert min(h["val_loss"] for h in mobilenet.history) < math.log(3) - 0.3  # within resnet18's epochs
    assert max(h["val_f1"] for h in mobilenet.history) > 0.8 and (tmp_path / "precise.pt").exists()


def test_compiled_training_saves_a_plain_checkpoint(prepared, monkeypatch):
    # The inductor backend needs minutes on a CPU; the eager backend exercises the same wrapper.
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: real_compile(model, backend="eager"))
    classes = json.loads((prepared / "split/classes.json").read_text())
    result = train_model(tiny_train_config(epochs=1, compile=True), prepared / "split/train.csv",
                         prepared / "split/val.csv", prepared / "decoded", classes, [1.0, 1.0, 1.0],
                         prepared / "model.pt")
    state = torch.load(prepared / "model.pt", weights_only=True)["state_dict"]
    assert not any(key.startswith("_orig_mod.") for key in state)
    load_checkpoint(prepared / "model.pt")  # strict load into a plain model
    assert result.epochs_run == 1


def test_an_architecture_that_cannot_take_the_image_size_is_refused_before_training(prepared):

    classes = json.loads((prepared / "split/classes.json").read_text())
    with pytest.raises(ConfigError, match=r"train.arch: vit_b_16 cannot take 16 px images \(.*224.*\); "
                                          r"it needs 224 px: set decode.image_size"):
        train_model(tiny_train_config(arch="vit_b_16"), prepared / "split/train.csv", prepared / "split/val.csv",
                    prepared / "decoded", classes, [1.0, 1.0, 1.0], prepared / "model.pt")
    assert not (prepared / "model.pt").exists()


def test_evaluate_in_bf16_is_an_explicit_opt_in(tmp_path, tiny_checkpoint, image_folder, monkeypatch):
    from imgclf import evaluate
    from imgclf.evaluate import EvaluateConfig, evaluate_model

    # An untrained checkpoint predicts one class for all 25 images: evaluate would refuse it (test_recipe tests that).
    monkeypatch.setattr(evaluate, "refuse_if_learned_nothing", lambda *args: None)

    paths = sorted(image_folder.rglob("*.png"))
    (tmp_path / "test.csv").write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in paths))
    (tmp_path / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    losses = {precision: evaluate_model(tiny_checkpoint, tmp_path / "test.csv", tmp_path / "classes.json",
                                        EvaluateConfig(batch_size=4, num_workers=0, device="cpu",
                                                       precision=precision, tta="none")).metrics["loss"]
              for precision in ("fp32", "bf16")}
    assert losses["fp32"] != losses["bf16"] and losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


def test_validation_and_the_temperature_are_fp32_when_training_autocasts(cuda_like_auto, prepared):
    """Training in bf16 (auto on CUDA): the logged val_loss and the shipped temperature are float32's."""
    from imgclf.calibration import fit_temperature
    from imgclf.split_files import read_split
    from imgclf.store.reader import StoredSplit
    from imgclf.train import train_model
    from imgclf.train_data import make_val_batches

    classes = json.loads((prepared / "split/classes.json").read_text())
    result = train_model(tiny_train_config(epochs=1, precision="auto"), prepared / "split/train.csv",
                         prepared / "split/val.csv", prepared / "decoded", classes, [1.0, 1.0, 1.0],
                         prepared / "model.pt")
    model, meta = load_checkpoint(prepared / "model.pt")
    frame = read_split(prepared / "split/val.csv", classes)
    batches = make_val_batches(StoredSplit(prepared / "decoded", "val", frame["path"]), frame["target"], 8,
                               torch.device("cpu"))
    prepare = ModelInput(meta["mean"], meta["std"], torch.device("cpu"))
    with torch.no_grad():  # the reference: plain float32 forward passes, none of imgclf's evaluation code
        logits = torch.cat([model.eval()(prepare(images)) for images, _ in batches])
    targets = torch.cat([targets for _, targets in batches])
    loss = torch.nn.functional.cross_entropy(logits, targets).item()
    assert result.history[result.best_epoch - 1]["val_loss"] == pytest.approx(loss, rel=1e-6)
    assert meta["temperature"] == pytest.approx(fit_temperature(logits, targets), rel=1e-6)


