"""params.yaml validation: unknown, missing, mistyped and out-of-range keys are one-line errors."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from imgclf.compute_weights import ComputeWeightsConfig
from imgclf.config import load_section
from imgclf.decode import DecodeConfig
from imgclf.demo import DemoConfig
from imgclf.errors import ConfigError
from imgclf.evaluate import EvaluateConfig
from imgclf.predict import PredictConfig
from imgclf.split import SplitConfig
from imgclf.template import PARAMS
from imgclf.train import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = {"demo": DemoConfig, "split": SplitConfig, "decode": DecodeConfig, "compute_weights": ComputeWeightsConfig,
            "train": TrainConfig, "evaluate": EvaluateConfig, "predict": PredictConfig}


def params_with(tmp_path, section, **changes):
    """Copy the repository's params.yaml with `section` keys changed (None deletes a key)."""
    data = yaml.safe_load(PARAMS.read_text())
    for key, value in changes.items():
        target = data[section]
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        if value is None:
            del target[leaf]
        else:
            target[leaf] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("section", SECTIONS)
def test_repository_params_are_valid(section):
    config = load_section(PARAMS, section, SECTIONS[section])
    assert isinstance(config, SECTIONS[section])


@pytest.mark.parametrize("section,changes,message", [
    ("train", {"lrr": 0.1}, "train.lrr: unknown key (did you mean 'train.lr'?)"),
    ("train", {"lr": None}, "train.lr: missing key"),
    ("train", {"lr": 0}, "train.lr: must be > 0"),
    ("train", {"lr": -1e-3}, "train.lr: must be > 0"),
    ("train", {"epochs": 2.5}, "train.epochs: must be an integer"),
    ("train", {"epochs": True}, "train.epochs: must be an integer"),
    ("train", {"lr": "fast"}, "train.lr: must be a number"),
    ("train", {"optimizer": "adagrad"}, "train.optimizer: must be one of adam, adamw, sgd"),
    ("train", {"arch": "resnet19"}, "train.arch: unknown torchvision classification model 'resnet19'"),
    ("train", {"augment.hflip": "yes"}, "train.augment.hflip: must be true or false"),
    ("train", {"augment.flip": True}, "train.augment.flip: unknown key"),
    ("train", {"pretrained": "missing.pth"}, "train.pretrained: must be none, default or an existing"),
    ("train", {"dropout": 1.0}, "train.dropout: must be < 1"),
    ("split", {"train": 1.2}, "split.train: must be < 1"),
    ("split", {"train": 0.0}, "split.train: must be > 0"),
    ("split", {"train": 0.6}, "must sum to 1"),
    ("compute_weights", {"scheme": "log"}, "compute_weights.scheme: must be one of"),
    ("evaluate", {"batch_size": 0}, "evaluate.batch_size: must be >= 1"),
])
def test_bad_params_name_the_file_and_key(tmp_path, section, changes, message):
    path = params_with(tmp_path, section, **changes)
    with pytest.raises(ConfigError) as err:
        load_section(path, section, SECTIONS[section])
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_suggests_close_architecture(tmp_path):
    with pytest.raises(ConfigError, match="did you mean resnet18"):
        load_section(params_with(tmp_path, "train", arch="reznet18"), "train", TrainConfig)


def test_exponent_without_dot_is_a_number(tmp_path):
    path = tmp_path / "params.yaml"
    text = (PARAMS).read_text().replace("lr: 0.0005", "lr: 1e-3")
    path.write_text(text)
    assert yaml.safe_load(text)["train"]["lr"] == "1e-3"  # PyYAML's reading, the reason for the rule
    assert load_section(path, "train", TrainConfig).lr == 0.001


def test_yaml_python_tags_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "params.yaml"
    path.write_text(f"split: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_section(path, "split", SplitConfig)
    assert not marker.exists()


def test_missing_section_and_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: {}\n")
    with pytest.raises(ConfigError, match="missing section 'split'"):
        load_section(path, "split", SplitConfig)
    with pytest.raises(ConfigError, match="cannot read params file"):
        load_section(tmp_path / "nope.yaml", "split", SplitConfig)


def test_stage_reports_bad_param_in_one_line_before_writing(tmp_path, image_folder):
    path = params_with(tmp_path, "split", seed=-1)
    out = tmp_path / "split"
    result = subprocess.run([sys.executable, str(ROOT / "stages/split.py"), "--params", str(path),
                             "--raw", str(image_folder), "--out", str(out)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {path}: split.seed: must be >= 0, got -1"
    assert not out.exists()
