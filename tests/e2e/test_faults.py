"""Faults: SIGKILL during training never leaves a half-written model.pt; CPU runs are deterministic."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from imgclf.checkpoint import load_checkpoint
from imgclf.evaluate import EvaluateConfig, evaluate_model
from imgclf.template import PARAMS
from imgclf.train import train_model
from tests.conftest import tiny_train_config as tiny_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def prepared(prepared):
    """The shared prepared folder plus a params.yaml with tiny train params."""
    params = yaml.safe_load(PARAMS.read_text())
    params["train"].update(batch_size=8, epochs=3, device="cpu")
    (prepared / "params.yaml").write_text(yaml.safe_dump(params))
    return prepared


def start_train(workdir: Path) -> subprocess.Popen:
    """Start the real train stage script."""
    return subprocess.Popen([sys.executable, str(ROOT / "stages/train.py"), "--params", "params.yaml",
                             "--split", "split", "--decoded", "decoded", "--weights", "weights.json",
                             "--model", "models/model.pt",
                             "--live", "live"], cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_sigkill_leaves_the_previous_model_or_none_and_the_next_run_completes(prepared):
    models = prepared / "models"
    first = start_train(prepared)
    # Kill the first run exactly while it writes model.pt: its temporary file exists.
    caught = False
    while first.poll() is None:
        if any(name.endswith(".tmp") for name in os.listdir(models)) if models.exists() else False:
            first.send_signal(signal.SIGKILL)
            caught = True
            break
        time.sleep(0.0005)
    first.wait()
    assert caught, "the writer finished before the test saw its temporary file"
    assert not (models / "model.pt").exists()  # no model rather than a half-written one

    assert start_train(prepared).wait() == 0
    previous = (models / "model.pt").read_bytes()
    load_checkpoint(models / "model.pt")
    params = yaml.safe_load((prepared / "params.yaml").read_text())
    params["train"]["seed"] += 1  # a run that completed now would write different bytes
    (prepared / "params.yaml").write_text(yaml.safe_dump(params))
    for delay in (1.0, 3.0):  # kills at start-up and mid-training: the previous complete model stays
        run = start_train(prepared)
        time.sleep(delay)
        run.send_signal(signal.SIGKILL)
        assert run.wait() == -signal.SIGKILL
        assert (models / "model.pt").read_bytes() == previous
    assert start_train(prepared).wait() == 0
    load_checkpoint(models / "model.pt")
    assert (models / "model.pt").read_bytes() != previous
    assert sorted(os.listdir(models)) == ["model.pt"]  # killed runs' temporary files are cleaned up


def test_two_cpu_runs_give_equal_weights_and_metrics(prepared):
    classes = json.loads((prepared / "split/classes.json").read_text())
    runs = []
    for n in range(2):
        model_path = prepared / f"model{n}.pt"
        train_model(tiny_config(epochs=2), prepared / "split/train.csv", prepared / "split/val.csv",
                    prepared / "decoded", classes, [1.0, 2.0, 3.0], model_path)
        result = evaluate_model(model_path, prepared / "split/test.csv", prepared / "split/classes.json",
                                EvaluateConfig(batch_size=4, num_workers=0, device="cpu", precision="fp32", tta="none"))
        metrics, samples = result.metrics, result.samples
        runs.append((torch.load(model_path, weights_only=True)["state_dict"], metrics, samples))
    (weights_a, metrics_a, samples_a), (weights_b, metrics_b, samples_b) = runs
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert metrics_a == metrics_b and samples_a.equals(samples_b)
