"""Test-time augmentation (evaluate.tta, predict.tta): hflip's averaged logits, in evaluate, predict and model.onnx."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from imgclf.checkpoint import load_checkpoint
from imgclf.inference import with_tta
from imgclf.template import PARAMS
from imgclf.transforms import ModelInput
from tests.conftest import run_stage, write_png


def mirrored(images: torch.Tensor) -> torch.Tensor:
    """The horizontal mirror of an N x C x H x W batch, made by NumPy (not by the code under test)."""
    return torch.from_numpy(np.ascontiguousarray(images.numpy()[..., ::-1]))


def test_hflip_logits_are_the_mean_of_the_image_and_its_mirror():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(5)).eval()
    images = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        plain = model(images)
        expected = (plain + model(mirrored(images))) / 2
        got = with_tta(model, "hflip")(images)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, plain, atol=1e-3)  # this model sees the mirror differently
    assert with_tta(model, "none") is model


class WidthMean(nn.Module):
    """Mean over the width: the same for an image and its horizontal mirror, not for its vertical one."""

    def forward(self, images):
        return images.mean(-1).flatten(1)


def test_a_mirror_symmetric_model_gives_the_same_logits_with_and_without_hflip():
    torch.manual_seed(0)
    model = nn.Sequential(WidthMean(), nn.Linear(3 * 8, 5)).eval()
    images = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        plain, tta = model(images), with_tta(model, "hflip")(images)
        upside_down = model(images.flip(-2))
    assert torch.allclose(tta, plain, atol=1e-6)
    assert not torch.allclose(upside_down, plain, atol=1e-3)  # a TTA that flipped the height would fail above


def test_with_tta_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="unknown test-time augmentation 'vflip'"):
        with_tta(nn.Identity(), "vflip")


def tta_reference(checkpoint, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(plain, hflip) float32 logits of model.pt on a uint8 batch, computed here from two passes."""
    model, meta = load_checkpoint(checkpoint)
    prepare = ModelInput(meta["mean"], meta["std"], torch.device("cpu"))
    batch = torch.from_numpy(images)
    with torch.no_grad():
        plain = model(prepare(batch))
        return plain, (plain + model(prepare(mirrored(batch)))) / 2


def test_evaluate_with_hflip_scores_the_averaged_logits(tmp_path, tiny_checkpoint, image_folder):
    from imgclf.evaluate import EvaluateConfig, evaluate_model
    from imgclf.images import load_resized

    paths = sorted(image_folder.rglob("*.png"))[::3]  # 9 images, of every class
    (tmp_path / "test.csv").write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in paths))
    (tmp_path / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    losses = {tta: evaluate_model(tiny_checkpoint, tmp_path / "test.csv", tmp_path / "classes.json",
                                  EvaluateConfig(batch_size=4, num_workers=0, device="cpu", precision="fp32",
                                                 tta=tta)).metrics["loss"] for tta in ("none", "hflip")}
    plain, tta = tta_reference(tiny_checkpoint, np.stack([load_resized(str(p), 16) for p in paths]))
    targets = torch.tensor(["abc".index(p.parent.name) for p in paths])
    assert losses["hflip"] == pytest.approx(F.cross_entropy(tta, targets).item(), rel=1e-6)
    assert losses["none"] == pytest.approx(F.cross_entropy(plain, targets).item(), rel=1e-6)
    assert losses["hflip"] != pytest.approx(losses["none"], rel=1e-6)


def test_predict_with_model_pt_and_hflip_gives_the_averaged_logits_calibrated(tiny_checkpoint):
    from imgclf.calibration import calibrated_probabilities
    from imgclf.predict import open_classifier

    data = torch.load(tiny_checkpoint, weights_only=True)
    data["temperature"] = 2.0  # the checkpoint's temperature applies to the averaged logits
    torch.save(data, tiny_checkpoint)
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 16, 16), dtype=np.uint8)
    plain, tta = tta_reference(tiny_checkpoint, images)
    got = open_classifier(tiny_checkpoint, "cpu", "fp32", "hflip").probabilities(images)
    assert np.allclose(got, calibrated_probabilities(tta, 2.0).numpy(), atol=1e-6)
    assert not np.allclose(got, calibrated_probabilities(plain, 2.0).numpy(), atol=1e-6)


def tiny_onnx(path, tta):
    """A valid model.onnx of this pipeline without torch: logits = each channel's mean pixel (classes a, b, c),
    with metadata `tta` (None: a file exported before the key existed)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", ["images"], ["pixels"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["pixels"], ["logits"], axes=[2, 3], keepdims=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.UINT8,
                                                                         ["batch", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    metadata = {"format": "imgclf.onnx/1", "arch": "none", "classes": '["a", "b", "c"]', "image_size": "16",
                "mean": "[0.5, 0.5, 0.5]", "std": "[0.5, 0.5, 0.5]", "temperature": "50.0"}
    for key, value in {**metadata, **({"tta": tta} if tta else {})}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


def predict_onnx(tmp_path, model, tta):
    params = yaml.safe_load(PARAMS.read_text())
    params["predict"].update(device="cpu", tta=tta)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_png(tmp_path / "in" / "img.png", 3)
    return run_stage("predict", "--params", str(tmp_path / "params.yaml"), "--model", str(model), "--input",
                     str(tmp_path / "in"), "--output", str(tmp_path / "out.csv"))


@pytest.mark.parametrize("exported,asked", [("hflip", "none"), (None, "hflip"), ("none", "hflip")])
def test_predict_refuses_a_model_onnx_exported_with_another_tta_in_one_line(tmp_path, exported, asked):
    model = tiny_onnx(tmp_path / "model.onnx", exported)
    code, _, err = predict_onnx(tmp_path, model, asked)
    assert code == 2 and err.strip() == (
        f"error: predict.tta: {asked}, but {model} was exported with tta {exported or 'none'}; re-run the export "
        f"stage (`dvc repro export`) to build predict.tta into it")
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("exported,asked", [("hflip", "hflip"), (None, "none")])
def test_predict_runs_a_model_onnx_whose_tta_matches(tmp_path, exported, asked):
    code, _, err = predict_onnx(tmp_path, tiny_onnx(tmp_path / "model.onnx", exported), asked)
    assert code == 0, err
    assert (tmp_path / "out.csv").read_text().count("\n") == 2  # the header and the image's row


def test_predict_outside_a_project_takes_the_model_onnx_s_own_tta(tmp_path, monkeypatch):
    from imgclf.predict import open_classifier

    model = tiny_onnx(tmp_path / "model.onnx", "hflip")
    assert open_classifier(model, "cpu", "fp32", None).classes == ["a", "b", "c"]
    write_png(tmp_path / "in" / "img.png", 3)
    code, out, err = run_stage("predict", "--model", str(model), "--input", str(tmp_path / "in"), "--output",
                               str(tmp_path / "out.csv"), cwd=tmp_path)  # no params.yaml there: shipped tta none
    assert code == 0 and "predicted 1 images" in out, err


def test_a_model_onnx_with_an_unknown_tta_is_malformed(tmp_path):
    from imgclf.errors import DataError
    from imgclf.onnx_model import OnnxClassifier

    with pytest.raises(DataError, match=r"malformed metadata \(tta 'vflip'; expected one of none, hflip\)"):
        OnnxClassifier(tiny_onnx(tmp_path / "model.onnx", "vflip"))
