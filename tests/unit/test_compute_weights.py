"""Class-weight schemes, and compute_weights reading labels without touching an image."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from imgclf.compute_weights import class_weights, count_labels, weights_document
from imgclf.errors import DataError
from imgclf.template import PARAMS
from imgclf.weights_file import read_weights

ROOT = Path(__file__).resolve().parents[2]
COUNTS = [100, 50, 10]


def test_inverse_is_n_over_count_and_proportional_to_sklearn_balanced():
    weights = class_weights(COUNTS, "inverse")
    assert weights == pytest.approx([160 / 100, 160 / 50, 160 / 10])
    labels = np.repeat([0, 1, 2], COUNTS)
    balanced = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    assert np.asarray(weights) == pytest.approx(balanced * 3)


def test_sqrt_inverse_and_none():
    assert class_weights(COUNTS, "sqrt_inverse") == pytest.approx([math.sqrt(1.6), math.sqrt(3.2), 4.0])
    assert class_weights(COUNTS, "none") == [1.0, 1.0, 1.0]


def test_effective_number_of_samples():
    beta = 0.99
    raw = [(1 - beta) / (1 - beta ** n) for n in COUNTS]
    expected = [w * 3 / sum(raw) for w in raw]
    weights = class_weights(COUNTS, "effective", beta)
    assert weights == pytest.approx(expected)
    assert sum(weights) == pytest.approx(3)
    assert weights[0] < weights[1] < weights[2]
    # beta -> 0: every class counts as one sample, all weights equal.
    assert class_weights(COUNTS, "effective", 1e-9) == pytest.approx([1, 1, 1])


def test_empty_class_is_an_error():
    with pytest.raises(DataError):
        class_weights([3, 0], "inverse")


def test_count_labels_in_class_order():
    assert count_labels(["b", "a", "b", "c", "b"], ["a", "b", "c", "d"]) == [1, 3, 1, 0]


def test_read_weights_requires_same_classes(tmp_path):
    path = tmp_path / "weights.json"
    path.write_text(json.dumps(weights_document(["a", "b"], [2, 1], "inverse", 0.9)))
    assert read_weights(path, ["a", "b"]) == pytest.approx([1.5, 3.0])
    with pytest.raises(DataError, match="differ from the split's classes"):
        read_weights(path, ["a", "c"])
    with pytest.raises(DataError, match="not found"):
        read_weights(tmp_path / "missing.json", ["a"])


def test_stage_never_opens_an_image(tmp_path):
    # The paths do not exist: the stage can only succeed by reading labels from the CSV.
    (tmp_path / "train.csv").write_text("path,label\n" + "".join(
        f"nowhere/{label}/{i}.png,{label}\n" for label, n in (("x", 6), ("y", 2)) for i in range(n)))
    (tmp_path / "classes.json").write_text('["x", "y"]')
    result = subprocess.run([sys.executable, str(ROOT / "stages/compute_weights.py"), "--params",
                             str(PARAMS), "--train", "train.csv", "--classes", "classes.json",
                             "--out", "weights.json"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "weights.json").read_text())
    assert document["scheme"] == "inverse"
    assert document["classes"] == {"x": {"count": 6, "weight": 8 / 6}, "y": {"count": 2, "weight": 4.0}}
