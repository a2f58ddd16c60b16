"""model.pt: round trip, and refusal of unsafe or inconsistent files."""

import pickle

import pytest
import torch

from imgclf.checkpoint import FORMAT, load_checkpoint
from imgclf.errors import DataError


def test_round_trip_gives_the_same_outputs(tiny_checkpoint):
    model, meta = load_checkpoint(tiny_checkpoint)
    again, _ = load_checkpoint(tiny_checkpoint)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert meta["classes"] == ["a", "b", "c"] and meta["image_size"] == 16 and meta["arch"] == "resnet18"
    assert not model.training
    raw = torch.load(tiny_checkpoint, weights_only=True)  # plain data: safe loading works
    assert raw["format"] == FORMAT


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_refused_and_runs_no_code(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "model.pt"
    torch.save({"format": FORMAT, "payload": _Exploit(marker)}, path, pickle_module=pickle)
    assert not marker.exists()
    with pytest.raises(DataError, match="refused to load model file"):
        load_checkpoint(path)
    assert not marker.exists()


def _rewrite(path, **changes):
    data = torch.load(path, weights_only=True)
    data.update(changes)
    torch.save(data, path)


def test_class_count_mismatch_is_an_error(tiny_checkpoint):
    _rewrite(tiny_checkpoint, classes=["a", "b"])
    with pytest.raises(DataError, match="do not match resnet18 with 2 classes"):
        load_checkpoint(tiny_checkpoint)


def test_non_finite_weights_are_an_error(tiny_checkpoint):
    data = torch.load(tiny_checkpoint, weights_only=True)
    data["state_dict"]["conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(data, tiny_checkpoint)
    with pytest.raises(DataError, match="NaN or infinity"):
        load_checkpoint(tiny_checkpoint)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(DataError, match="model file not found"):
        load_checkpoint(tmp_path / "none.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(DataError, match="not a model file of this pipeline"):
        load_checkpoint(tmp_path / "other.pt")
