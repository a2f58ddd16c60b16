"""Mixed precision: `auto` picks native bf16 only; every evaluation path scores in float32 unless told otherwise.

On CUDA `precision: auto` is bf16, which this CPU machine cannot show directly: `cuda_like_auto`
makes `auto` mean bf16 on every device, as it does on a GPU, and CPU autocast then really runs in
bf16. An evaluation path that still followed `auto` gives different logits from float32.
"""

import json

import numpy as np
import pytest
import torch

from imgclf.checkpoint import checkpoint_classifier, load_checkpoint
from imgclf.errors import ConfigError
from imgclf.inference import autocast_dtype, predict_logits
from imgclf.template import PARAMS
from imgclf.transforms import ModelInput

CUDA = torch.device("cuda")


class Properties:
    """What torch.cuda.get_device_properties reports that is_bf16_supported reads."""

    def __init__(self, major: int, minor: int):
        self.major, self.minor = major, minor


@pytest.fixture
def fake_gpu(monkeypatch):
    """A visible CUDA GPU of a chosen compute capability, as torch.cuda's queries see it (nothing runs on it)."""

    def install(major: int, minor: int = 0, emulates_bf16: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: Properties(major, minor))
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))
        # torch's emulation probe creates a bf16 tensor on the GPU: it succeeds on a T4 or V100.
        monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: emulates_bf16)

    return install


@pytest.mark.parametrize("capability, expected", [((7, 5), torch.float16), ((7, 0), torch.float16),
                                                  ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)],
                         ids=["T4", "V100", "A100", "H100"])
def test_auto_is_bf16_only_where_the_gpu_has_it_natively(fake_gpu, capability, expected):
    fake_gpu(*capability)
    assert autocast_dtype("auto", CUDA) == expected


def test_explicit_precisions_and_the_cpu_are_unchanged(fake_gpu):
    fake_gpu(7, 5)
    assert autocast_dtype("bf16", CUDA) == torch.bfloat16 and autocast_dtype("fp16", CUDA) == torch.float16
    assert autocast_dtype("fp32", CUDA) is None and autocast_dtype("auto", torch.device("cpu")) is None




def fp32_logits(model, images: torch.Tensor, meta: dict) -> torch.Tensor:
    """The reference: the model in eval mode, float32, no autocast at all."""
    with torch.no_grad():
        return model.eval()(ModelInput(meta["mean"], meta["std"], torch.device("cpu"))(images)).float()


def test_bf16_autocast_really_changes_these_logits(tiny_checkpoint):
    """The premise of the tests below: on this model, bf16 and float32 logits differ measurably."""
    model, meta = load_checkpoint(tiny_checkpoint)
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    reference = fp32_logits(model, images, meta)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        reduced = model(ModelInput(meta["mean"], meta["std"], torch.device("cpu"))(images)).float()
    assert (reduced - reference).abs().max() > 1e-4


def test_evaluate_scores_in_fp32_by_default(cuda_like_auto, tmp_path, tiny_checkpoint, image_folder, monkeypatch):
    import torch.nn.functional as F

    from imgclf import evaluate
    from imgclf.config import load_section
    from imgclf.evaluate import EvaluateConfig, evaluate_model
    from imgclf.images import load_resized

    # An untrained checkpoint may predict one class for all 25 images: evaluate would refuse it (test_recipe).
    monkeypatch.setattr(evaluate, "refuse_if_learned_nothing", lambda *args: None)

    paths = sorted(image_folder.rglob("*.png"))
    (tmp_path / "test.csv").write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in paths))
    (tmp_path / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    cfg = load_section(PARAMS, "evaluate", EvaluateConfig)  # the shipped default
    assert cfg.precision == "fp32"
    cfg = EvaluateConfig(batch_size=4, num_workers=0, device="cpu", precision=cfg.precision, tta="none")
    result = evaluate_model(tiny_checkpoint, tmp_path / "test.csv", tmp_path / "classes.json", cfg)

    model, meta = load_checkpoint(tiny_checkpoint)
    images = torch.from_numpy(np.stack([load_resized(str(p), 16) for p in paths]))
    targets = torch.tensor(["abc".index(p.parent.name) for p in paths])
    expected = F.cross_entropy(fp32_logits(model, images, meta), targets).item()
    assert result.metrics["loss"] == pytest.approx(expected, rel=1e-6)




def test_predict_with_model_pt_gives_fp32_probabilities_by_default(cuda_like_auto, tiny_checkpoint):
    from imgclf.calibration import calibrated_probabilities

    classifier = checkpoint_classifier(tiny_checkpoint, "cpu")
    model, meta = load_checkpoint(tiny_checkpoint)
    size = classifier.geometry.input_size
    images = torch.randint(0, 256, (6, 3, size, size), dtype=torch.uint8)
    expected = calibrated_probabilities(fp32_logits(model, images, meta), meta["temperature"]).numpy()
    np.testing.assert_allclose(classifier.probabilities(images.numpy()), expected, rtol=0, atol=1e-6)


def test_predict_precision_applies_to_model_pt_only(tmp_path):
    from imgclf.predict import open_classifier

    with pytest.raises(ConfigError, match="predict.precision: bf16 applies to model.pt only"):
        open_classifier(tmp_path / "model.onnx", "cpu", "bf16")




def test_predict_logits_defaults_to_fp32(cuda_like_auto, tiny_checkpoint):
    model, meta = load_checkpoint(tiny_checkpoint)
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    logits, _ = predict_logits(model, [(images, torch.zeros(5, dtype=torch.long))],
                               ModelInput(meta["mean"], meta["std"], torch.device("cpu")), torch.device("cpu"),
                               progress=False)
    assert torch.equal(logits, fp32_logits(model, images, meta))


def test_exact_fp32_turns_tf32_off_and_restores_the_flags():
    from imgclf.inference import exact_fp32

    knobs = (torch.backends.cudnn.conv, torch.backends.cudnn.rnn, torch.backends.cuda.matmul)
    before = [knob.fp32_precision for knob in knobs]
    with exact_fp32():
        assert [knob.fp32_precision for knob in knobs] == ["ieee"] * 3
    assert [knob.fp32_precision for knob in knobs] == before
    assert isinstance(torch.backends.cudnn.allow_tf32, bool)  # torch's legacy flag is still readable after


@pytest.mark.parametrize("section", ["evaluate", "predict"])
def test_evaluation_precision_takes_no_auto(tmp_path, section):
    """Reduced precision in evaluation is an explicit choice: `auto` (training's) is one line naming the key."""
    import yaml

    from imgclf.config import load_section
    from imgclf.evaluate import EvaluateConfig
    from imgclf.predict import PredictConfig
    params = yaml.safe_load(PARAMS.read_text())
    assert params[section]["precision"] == "fp32"  # the shipped default
    params[section]["precision"] = "auto"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    config = {"evaluate": EvaluateConfig, "predict": PredictConfig}[section]
    with pytest.raises(ConfigError, match=f"{section}.precision: must be one of fp32, bf16, fp16"):
        load_section(tmp_path / "params.yaml", section, config)
