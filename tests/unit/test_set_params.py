"""`python -m imgclf.set_params key=value ...`: a text edit of each key's line, validated, idempotent."""

import re
import shutil

import pytest
import yaml

from imgclf.errors import ConfigError
from imgclf.set_params import set_values
from imgclf.template import PARAMS


@pytest.fixture
def params(tmp_path):
    shutil.copy(PARAMS, tmp_path / "params.yaml")
    return tmp_path / "params.yaml"


def test_values_change_on_their_own_lines_with_their_comments_kept(params):
    before = params.read_text().splitlines()
    done = set_values(params, ["decode.image_size=224", "train.augment.hflip=true", "train.mean=[0.5,0.5,0.5]",
                               "train.arch=timm/tf_efficientnet_lite0", "predict.unknown_quantile=null"])
    assert done[0] == f"{params}: decode.image_size 32 -> 224" and len(done) == 5
    after = params.read_text().splitlines()
    changed = [(old, new) for old, new in zip(before, after) if old != new]
    assert len(after) == len(before) and len(changed) == 5
    assert ("  image_size: 224        # every train/val image is decoded once" in after[before.index(changed[0][0])])
    data = yaml.safe_load(params.read_text())
    assert data["decode"]["image_size"] == 224 and data["train"]["augment"]["hflip"] is True
    assert data["train"]["mean"] == [0.5, 0.5, 0.5] and data["predict"]["unknown_quantile"] is None
    assert data["evaluate"]["batch_size"] == yaml.safe_load(PARAMS.read_text())["evaluate"]["batch_size"]


def test_a_second_run_changes_nothing(params):
    set_values(params, ["train.lr=0.01"])
    text, mtime = params.read_text(), params.stat().st_mtime_ns
    assert set_values(params, ["train.lr=0.01"]) == []
    assert params.read_text() == text and params.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("assignment, message", [
    ("decode.image_sise=224", "decode.image_sise: no such key in params.yaml (did you mean 'decode.image_size'?)"),
    ("train.lr=-1", "train.lr: must be > 0, got -1.0; nothing was changed"),
    ("train.augment=1", "train.augment: a group of params, not one value"),
    ("train.arch=resnet", "unknown torchvision classification model 'resnet'"),
    ("lr", "lr: expected key=value"),
])
def test_a_bad_key_or_value_is_one_line_and_the_file_stays(params, assignment, message):
    text = params.read_text()
    with pytest.raises(ConfigError, match=re.escape(message)):
        set_values(params, ["decode.image_size=64", assignment])
    assert params.read_text() == text


def test_a_blank_value_is_null_as_dvc_exp_run_writes_it(params):
    """`dvc exp run -S` rewrites params.yaml with `mean:` for null: set_params must still set it."""
    params.write_text(params.read_text().replace("  mean: null ", "  mean: "))
    assert set_values(params, ["train.mean=[0.5,0.5,0.5]"]) == [f"{params}: train.mean null -> [0.5, 0.5, 0.5]"]
    assert yaml.safe_load(params.read_text())["train"]["mean"] == [0.5, 0.5, 0.5]
