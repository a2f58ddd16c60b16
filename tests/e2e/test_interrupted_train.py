"""The real train stage killed (SIGKILL) or interrupted (Ctrl-C) and rerun: it resumes, bit-identical."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from imgclf.template import PARAMS
from tests.conftest import ROOT, make_image_folder, prepare_inputs, write_png

EPOCHS = 6


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The prepared inputs plus a params.yaml training resnet18 for 6 epochs on the CPU, and in reference/ a run
    of them never interrupted: built once for the module (the CPU training is deterministic)."""
    root = tmp_path_factory.mktemp("interrupted")
    prepare_inputs(root, make_image_folder(root / "raw"))
    params = yaml.safe_load(PARAMS.read_text())
    params["train"].update(batch_size=8, epochs=EPOCHS, patience=3, device="cpu", lr=0.002,
                           state_every=0)  # the state after every epoch: the tests kill at given epochs
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    finish(start(root, "reference"))
    return root


@pytest.fixture
def workdir(inputs, tmp_path):
    """This test's own copy of the inputs (and of the reference run)."""
    return Path(shutil.copytree(inputs, tmp_path / "work"))


def start(workdir: Path, name: str) -> subprocess.Popen:
    """Start the train stage as dvc.yaml runs it, its outputs named after `name`."""
    args = [sys.executable, "-m", "stages.train", "--params", "params.yaml", "--split", "split", "--decoded",
            "decoded", "--weights", "weights.json", "--model", f"{name}/model.pt", "--live", f"{name}/live",
            "--state", f"{name}/.cache/train_state.pt"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(args, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=ctrl_c_reaches_it)


def ctrl_c_reaches_it() -> None:
    """In the child before exec: SIGINT back to its default, so that Python turns it into KeyboardInterrupt.

    A test run started in the background of a non-interactive shell (`pytest &`) inherits SIGINT
    ignored, as every process it starts would: the stage would then rightly never see the Ctrl-C.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def saved_epoch(state: Path) -> int:
    """The last epoch in the state file (0 if none yet); the file is replaced atomically, so always whole."""
    try:
        return torch.load(state, weights_only=True, mmap=True)["epoch"]  # mmap: the tensors are not read
    except FileNotFoundError:
        return 0


def finish(process: subprocess.Popen) -> tuple[str, str]:
    """Wait for a run that must succeed; its stdout and stderr."""
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return out, err


def outcome(run_dir: Path) -> tuple[dict, dict, dict]:
    """(weights, DVCLive summary, per-epoch DVCLive history) of a finished run."""
    weights = torch.load(run_dir / "model.pt", weights_only=True)["state_dict"]
    summary = yaml.safe_load((run_dir / "live/metrics.json").read_text())
    history = {name: pd.read_csv(run_dir / f"live/plots/metrics/{name}.tsv", sep="\t")[["step", name]]
               for name in ("train_loss", "val_loss", "val_f1", "lr")}
    return weights, summary, history


@pytest.fixture(scope="module")
def reference(inputs):
    """A run never interrupted: one for the module, the same for every test (they compare bit for bit)."""
    return outcome(inputs / "reference")


def assert_same_as(reference, run_dir: Path) -> None:
    """Bit-identical weights, the same best epoch and epochs run, the same history without gaps or repeats."""
    weights, summary, history = outcome(run_dir)
    ref_weights, ref_summary, ref_history = reference
    assert all(torch.equal(weights[k], ref_weights[k]) for k in ref_weights)
    assert (summary["best_epoch"], summary["epochs_run"]) == (ref_summary["best_epoch"], ref_summary["epochs_run"])
    for name, frame in history.items():
        assert frame["step"].tolist() == list(range(ref_summary["epochs_run"]))
        assert frame.equals(ref_history[name]), name
    assert not (run_dir / ".cache/train_state.pt").exists()


def test_killed_after_an_epoch_resumes_bit_identical(workdir, reference):
    run = start(workdir, "killed")
    state = workdir / "killed/.cache/train_state.pt"
    while saved_epoch(state) < 3 and run.poll() is None:
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert saved_epoch(state) >= 3 and not (workdir / "killed/model.pt").exists()
    out, _ = finish(start(workdir, "killed"))
    assert f"resuming from epoch {saved_epoch_line(out)} of {EPOCHS}" in out
    assert_same_as(reference, workdir / "killed")


def saved_epoch_line(out: str) -> int:
    """The k of `resuming from epoch k of N` in a run's output."""
    line = next(line for line in out.splitlines() if line.startswith("resuming from epoch"))
    return int(line.split()[3])


def test_killed_during_an_epoch_and_while_writing_the_state(workdir, reference):
    state_dir = workdir / "killed/.cache"
    run = start(workdir, "killed")
    caught = False
    while run.poll() is None:  # kill exactly while a state is being written: its temporary file exists
        if state_dir.exists() and any(name.endswith(".tmp") for name in os.listdir(state_dir)):
            run.send_signal(signal.SIGKILL)
            caught = True
            break
        time.sleep(0.0005)
    run.wait()
    assert caught, "the run ended before the test saw a state being written"
    saved = saved_epoch(state_dir / "train_state.pt")  # the previous state, whole (or none yet)
    run = start(workdir, "killed")  # resumes; then killed in the middle of the next epoch
    while saved_epoch(state_dir / "train_state.pt") <= saved and run.poll() is None:
        time.sleep(0.01)
    time.sleep(0.05 + np.random.default_rng().uniform(0, 0.2))
    run.send_signal(signal.SIGKILL)
    run.wait()
    finish(start(workdir, "killed"))
    assert_same_as(reference, workdir / "killed")
    assert sorted(os.listdir(state_dir)) == []  # no temporary file left behind


def test_ctrl_c_prints_one_line_exits_130_and_the_rerun_resumes(workdir, reference):
    run = start(workdir, "stopped")
    state = workdir / "stopped/.cache/train_state.pt"
    while saved_epoch(state) < 2 and run.poll() is None:
        time.sleep(0.02)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("interrupted: stage train stopped by Ctrl-C")
    assert "rerun `dvc repro` to resume" in err
    assert not (workdir / "stopped/model.pt").exists() and saved_epoch(state) >= 2
    assert not [n for n in os.listdir(state.parent) if n.endswith(".tmp")]
    out, _ = finish(start(workdir, "stopped"))
    assert "resuming from epoch" in out
    assert_same_as(reference, workdir / "stopped")


def test_ctrl_c_in_split_stops_its_worker_processes_quietly(tmp_path):
    raw = tmp_path / "raw"
    for i in range(70):  # enough for the process pool
        write_png(raw / f"c{i % 3}" / f"{i:04d}.png", i)
    os.mkfifo(raw / "c0" / "never_written.png")  # a worker blocks opening it: validation is surely under way
    args = [sys.executable, "-m", "stages.split", "--params", str(PARAMS), "--raw", str(raw),
            "--out", str(tmp_path / "split"), "--counts", str(tmp_path / "counts"),
            "--validation-cache", str(tmp_path / "cache.json")]
    run = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True, preexec_fn=ctrl_c_reaches_it)
    # Its worker processes exist once validation is under way (after start-up and its Ctrl-C handling are
    # set up): waiting for them, not for a fixed time, keeps a loaded machine from interrupting the import.
    children = Path(f"/proc/{run.pid}/task/{run.pid}/children")
    deadline = time.monotonic() + 60
    while run.poll() is None and not children.read_text().split() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.poll() is None and children.read_text().split()
    os.killpg(run.pid, signal.SIGINT)  # as a terminal does: the whole process group
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "interrupted: stage split stopped by Ctrl-C" in err
    assert not (tmp_path / "split").exists() and not (tmp_path / "cache.json").exists()
