"""Temperature scaling and the expected calibration error."""

import pandas as pd
import pytest
import torch

from imgclf.calibration import (
    calibrate,
    calibrated_probabilities,
    expected_calibration_error,
    fit_temperature,
    reliability_table,
)
from imgclf.plots import mistakes_gallery, per_class_frame, worst_mistakes
from imgclf.split import class_counts


def sampled(n=4000, classes=5, seed=0):
    """Logits and labels drawn from softmax(logits): a perfectly calibrated model."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=generator) * 3
    targets = torch.multinomial(logits.softmax(1), 1, generator=generator).squeeze(1)
    return logits, targets


def test_fit_temperature_undoes_overconfidence():
    logits, targets = sampled()
    assert fit_temperature(logits * 3, targets) == pytest.approx(3.0, rel=0.1)  # 3x too sure
    assert fit_temperature(logits / 2, targets) == pytest.approx(0.5, rel=0.1)  # too unsure
    assert fit_temperature(logits, targets) == pytest.approx(1.0, rel=0.1)


def test_no_validation_mistakes_never_sharpens():
    logits = torch.tensor([[4.0, 0.0], [0.0, 3.0], [5.0, 1.0]])
    targets = torch.tensor([0, 1, 0])  # all right: the NLL would fall all the way to T -> 0
    assert fit_temperature(logits, targets) == 1.0
    assert fit_temperature(logits * 0.1, targets) == 1.0  # underconfident but flawless: left alone


def test_ece_drops_after_scaling_and_predictions_do_not_change():
    logits, targets = sampled()
    over = logits * 3
    temperature = fit_temperature(over, targets)
    before = expected_calibration_error(calibrated_probabilities(over, 1.0), targets)
    after = expected_calibration_error(calibrated_probabilities(over, temperature), targets)
    assert before > 0.1 and after < 0.03
    assert torch.equal(calibrated_probabilities(over, temperature).argmax(1), over.argmax(1))


def test_ece_by_hand():
    # Two bins used: 0.9 confidence (2 images, 1 right) and 0.6 (2 images, both right).
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    targets = torch.tensor([0, 1, 0, 1])
    table = reliability_table(probs, targets, bins=10)
    assert table["count"].tolist() == [2, 2] and table["accuracy"].tolist() == [1.0, 0.5]
    assert expected_calibration_error(probs, targets, bins=10) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)


def test_plot_frames():
    metrics = {"classes": {"a": {"precision": 1.0, "recall": 0.5, "f1": 0.667, "support": 2},
                           "b": {"precision": 0.5, "recall": 1.0, "f1": 0.667, "support": 1}}}
    assert per_class_frame(metrics)["class"].tolist() == ["a", "b"]
    assert class_counts([("x", "b"), ("y", "b"), ("z", "a")], ["a", "b", "c"]) == [("a", 1), ("b", 2), ("c", 0)]


def test_gallery_shows_the_surest_mistakes_first(tmp_path):
    from tests.conftest import write_png
    paths = [str(write_png(tmp_path / f"{i}.png", i)) for i in range(6)]
    samples = pd.DataFrame({"path": paths, "actual": ["a", "a", "b", "b", "a", "b"],
                            "predicted": ["b", "a", "a", "b", "b", "a"],
                            "confidence": [0.6, 0.99, 0.9, 0.8, 0.7, 0.95]})
    worst = worst_mistakes(samples)
    assert worst["confidence"].tolist() == [0.95, 0.9, 0.7, 0.6]
    image = mistakes_gallery(samples, columns=2)
    assert image.size[0] == 2 * 112 and image.size[1] > 2 * 112  # 2 rows of tiles with captions
    empty = mistakes_gallery(samples[samples["actual"] == samples["predicted"]])
    assert empty.size[1] == 40


def test_calibration_never_raises_validation_ece():
    """Tiny validation sets, nearly separated (0 to 2 mistakes): the NLL-optimal temperature sometimes raises the
    binned ECE; then temperature 1 is shipped, and the log says why."""
    generator = torch.Generator().manual_seed(0)
    rejected = 0
    for _ in range(60):
        n = int(torch.randint(6, 20, (1,), generator=generator))
        logits = torch.randn(n, 3, generator=generator) * float(torch.rand(1, generator=generator) * 6 + 0.5)
        targets = logits.argmax(1)
        for i in range(int(torch.randint(0, 3, (1,), generator=generator))):
            targets[i] = (targets[i] + 1) % 3
        result = calibrate(logits, targets)
        fitted_ece = expected_calibration_error(calibrated_probabilities(logits, result.fitted), targets)
        assert result.ece <= result.ece_uncalibrated + 1e-12
        if fitted_ece > result.ece_uncalibrated:
            rejected += 1
            assert result.temperature == 1.0 and result.rejected and result.worse_ece == fitted_ece
            assert result.describe().startswith(f"temperature 1 (the fitted {result.fitted:.3f} raised validation ECE")
        else:
            assert result.temperature == result.fitted and not result.rejected
    assert rejected >= 3  # the case this guards against does occur on such sets


def test_perfectly_separated_validation_keeps_temperature_1():
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 4.0], [2.5, 0.0, 0.5]])
    result = calibrate(logits, torch.tensor([0, 1, 2, 0]))
    assert result.temperature == 1.0 and result.ece <= result.ece_uncalibrated
