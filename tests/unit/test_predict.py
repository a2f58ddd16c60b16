"""The predict stage: streaming rows, error rows for unreadable files, empty folders."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from imgclf.template import PARAMS
from tests.conftest import checkpoint_with_novelty, run_stage, write_png

ROOT = Path(__file__).resolve().parents[2]


def run_predict(model, folder, output, cwd, min_confidence=0.0, subprocess_run=False):
    """Run the predict stage outside DVC, as a user would: returncode, stdout, stderr."""
    params = yaml.safe_load(PARAMS.read_text())
    params["predict"].update(min_confidence=min_confidence, device="cpu")
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    code, out, err = run_stage("predict", "--params", str(cwd / "params.yaml"), "--model", str(model),
                               "--input", str(folder), "--output", str(output), cwd=cwd,
                               subprocess_run=subprocess_run)
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


def test_predicts_every_file_and_marks_unreadable_ones(tmp_path, tiny_checkpoint):
    folder = tmp_path / "incoming"
    for i in range(5):
        write_png(folder / "nested" / f"img{i}.png", i, size=20 + i)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    result = run_predict(tiny_checkpoint, folder, tmp_path / "out.csv", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "predicted 5 images (0 unknown: far from every training image; 0 uncertain, below min_confidence 0.0; " \
           "1 unreadable" in result.stdout
    frame = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert list(frame.columns) == ["path", "prediction", "confidence", "prob_a", "prob_b", "prob_c", "distance",
                                   "status"]
    assert len(frame) == 6
    ok = frame[frame["status"] == "ok"]
    assert set(ok["prediction"]) <= {"a", "b", "c"}
    probs = ok[["prob_a", "prob_b", "prob_c"]].astype(float)
    assert ((probs.sum(axis=1) - 1).abs() < 1e-4).all()
    assert (ok["confidence"].astype(float) == probs.max(axis=1)).all()
    broken = frame[frame["path"].str.endswith("broken.jpg")].iloc[0]
    assert broken["status"].startswith("error:") and broken["prediction"] == ""


def test_rows_below_min_confidence_are_marked_uncertain(tmp_path, tiny_checkpoint):
    folder = tmp_path / "incoming"
    for i in range(6):
        write_png(folder / f"img{i}.png", 40 * i)
    assert run_predict(tiny_checkpoint, folder, tmp_path / "all.csv", tmp_path).returncode == 0
    confidence = pd.read_csv(tmp_path / "all.csv")["confidence"]
    threshold = float(confidence.median())
    result = run_predict(tiny_checkpoint, folder, tmp_path / "out.csv", tmp_path, min_confidence=threshold)
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(tmp_path / "out.csv")
    assert (frame["status"] == "uncertain").tolist() == (frame["confidence"] < threshold).tolist()
    assert frame["status"].eq("uncertain").any() and frame["status"].eq("ok").any()
    assert frame["prediction"].notna().all()  # an uncertain row keeps its prediction for the reviewer


def test_predict_uses_the_checkpoints_temperature(tmp_path, tiny_checkpoint):
    import torch
    folder = tmp_path / "incoming"
    write_png(folder / "img.png", 7)
    run_predict(tiny_checkpoint, folder, tmp_path / "t1.csv", tmp_path)
    data = torch.load(tiny_checkpoint, weights_only=True)
    data["temperature"] = 4.0
    torch.save(data, tiny_checkpoint)
    run_predict(tiny_checkpoint, folder, tmp_path / "t4.csv", tmp_path)
    cold, warm = (pd.read_csv(tmp_path / f"{n}.csv")["confidence"][0] for n in ("t1", "t4"))
    assert 1 / 3 < warm < cold  # a higher temperature pulls the confidence towards 1/3 (3 classes)


def test_empty_folder_gives_header_only(tmp_path, tiny_checkpoint):
    (tmp_path / "empty").mkdir()
    result = run_predict(tiny_checkpoint, tmp_path / "empty", tmp_path / "out.csv", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no files found" in result.stdout
    assert (tmp_path / "out.csv").read_text() == "path,prediction,confidence,prob_a,prob_b,prob_c,distance,status\n"


def test_missing_model_is_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "in").mkdir()
    result = run_predict(tmp_path / "nope.pt", tmp_path / "in", tmp_path / "out.csv", tmp_path, subprocess_run=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: {tmp_path / 'nope.pt'}: model file not found (run the train stage first)"
    assert not (tmp_path / "out.csv").exists()


def test_evaluate_refuses_a_model_trained_on_other_classes(tmp_path, tiny_checkpoint):
    import pytest

    from imgclf.errors import DataError
    from imgclf.evaluate import EvaluateConfig, evaluate_model

    (tmp_path / "classes.json").write_text('["a", "b", "d"]')
    (tmp_path / "test.csv").write_text("path,label\nx.png,a\n")
    with pytest.raises(DataError, match="classes differ from those"):
        evaluate_model(tiny_checkpoint, tmp_path / "test.csv", tmp_path / "classes.json",
                       EvaluateConfig(batch_size=2, num_workers=0, device="cpu", precision="fp32", tta="none"))


def test_images_far_from_every_training_image_are_unknown_and_their_distance_is_in_the_row(tmp_path):
    """A bank of three images' own features (k = 1) and validation distances of at most 1e-4: those three images are
    at distance ~0, any other image is farther than the 0.99 quantile and gets status `unknown`."""
    model_path, known, others = checkpoint_with_novelty(tmp_path)
    result = run_predict(model_path, tmp_path / "in", tmp_path / "out.csv", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "predicted 5 images (2 unknown: far from every training image" in result.stdout
    frame = pd.read_csv(tmp_path / "out.csv").set_index("path")
    assert frame.loc[[p.as_posix() for p in known], "status"].tolist() == ["ok"] * 3
    assert frame.loc[[p.as_posix() for p in others], "status"].tolist() == ["unknown"] * 2
    assert (frame.loc[[p.as_posix() for p in known], "distance"] < 1e-4).all()
    assert (frame.loc[[p.as_posix() for p in others], "prediction"].isin(["a", "b", "c"])).all()  # still given


def test_the_unknown_threshold_sets_far_out_reference_distances_aside():
    """Validation images are mostly close to the training images; one of no class among them (at 0.9) must not
    raise the 0.99 quantile to itself."""
    from imgclf.classifier import Classifier

    reference = list(np.linspace(0.05, 0.15, 99)) + [0.9]
    classifier = Classifier(["a"], None, lambda images: (None, None), reference)
    assert classifier.unknown_threshold(0.99) == pytest.approx(np.quantile(reference[:99], 0.99))
    assert classifier.unknown_threshold(None) == float("inf")
    assert Classifier(["a"], None, lambda images: (None, None)).unknown_threshold(0.99) == float("inf")
