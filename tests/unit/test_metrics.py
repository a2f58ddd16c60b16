"""Metrics against hand-computed values and scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from imgclf.metrics import classification_metrics, report_text, weighted_f1

Y_TRUE = [0, 0, 1, 1, 1, 2]
Y_PRED = [0, 1, 1, 1, 1, 0]


def test_hand_computed_values():
    metrics = classification_metrics(Y_TRUE, Y_PRED, ["a", "b", "c"], loss=0.25)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    a, b, c = (metrics["classes"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == pytest.approx((0.5, 0.5, 0.5, 2))
    assert (b["precision"], b["recall"], b["support"]) == pytest.approx((0.75, 1.0, 3))
    assert b["f1"] == pytest.approx(2 * 0.75 / 1.75)
    assert (c["precision"], c["recall"], c["f1"]) == (0.0, 0.0, 0.0)
    assert metrics["f1_macro"] == pytest.approx((0.5 + 6 / 7 + 0) / 3)
    assert metrics["f1_weighted"] == pytest.approx((2 * 0.5 + 3 * 6 / 7) / 6)
    assert metrics["loss"] == 0.25


def test_agrees_with_sklearn_on_random_labels():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    metrics = classification_metrics(y_true, y_pred, list("wxyz"), loss=1.0)
    assert metrics["f1_weighted"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
    assert metrics["f1_macro"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert metrics["precision_weighted"] == pytest.approx(precision_score(y_true, y_pred, average="weighted"))
    assert metrics["recall_weighted"] == pytest.approx(recall_score(y_true, y_pred, average="weighted"))
    assert weighted_f1(y_true, y_pred) == pytest.approx(metrics["f1_weighted"])


def test_class_absent_from_test_set_still_reported():
    metrics = classification_metrics([0, 0], [0, 0], ["a", "b"], loss=0.0)
    assert metrics["classes"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert "b" in report_text([0, 0], [0, 0], ["a", "b"])
