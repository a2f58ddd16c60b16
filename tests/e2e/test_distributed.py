"""torchrun DDP on the CPU (gloo): 2 processes from one stage, 2 "machines", failures, resume."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from imgclf.template import PARAMS
from tests.conftest import ROOT

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture
def workdir(prepared):
    """The prepared inputs plus params for 4 epochs of resnet18 in 2 CPU processes."""
    params = yaml.safe_load(PARAMS.read_text())
    params["train"].update(batch_size=4, epochs=4, patience=4, device="cpu", nproc_per_node=2,
                           state_every=0)  # the state after every epoch: the resume tests kill at given epochs
    (prepared / "params.yaml").write_text(yaml.safe_dump(params))
    return prepared


def train_args(name: str) -> list[str]:
    """The train stage's flags, its outputs under `name`/."""
    return ["--params", "params.yaml", "--split", "split", "--decoded", "decoded", "--weights", "weights.json",
            "--model", f"{name}/model.pt", "--live", f"{name}/live", "--state", f"{name}/state.pt"]


def start(workdir: Path, name: str) -> subprocess.Popen:
    """The stage as dvc.yaml runs it; with nproc_per_node 2 it starts its 2 processes itself."""
    return subprocess.Popen([sys.executable, "-m", "stages.train", *train_args(name)], cwd=workdir, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(process: subprocess.Popen) -> tuple[str, str]:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return out, err


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


def test_two_processes_write_one_model_and_validate_every_sample_once(workdir):
    out, _ = finish(start(workdir, "ddp"))
    assert "2 processes of batch 4" in out and out.count("epoch 1/4:") == 1  # rank 0 alone prints
    assert sorted(os.listdir(workdir / "ddp")) == ["live", "model.pt"]
    summary = json.loads((workdir / "ddp/live/metrics.json").read_text())
    assert summary["epochs_run"] == 4
    assert len((workdir / "ddp/live/plots/metrics/val_loss.tsv").read_text().splitlines()) == 1 + 4

    # The same weights scored in one process: the same validation loss and F1 as the 2 processes logged.
    from imgclf.checkpoint import load_checkpoint
    from imgclf.fit import validate
    from imgclf.split_files import read_split
    from imgclf.store.reader import StoredSplit
    from imgclf.train_data import make_val_batches
    from imgclf.transforms import ModelInput

    model, meta = load_checkpoint(workdir / "ddp/model.pt")
    frame = read_split(workdir / "split/val.csv", meta["classes"])
    batches = make_val_batches(StoredSplit(workdir / "decoded", "val", frame["path"]), frame["target"], 3,
                               torch.device("cpu"))
    loss, f1 = validate(model, batches, ModelInput(meta["mean"], meta["std"], torch.device("cpu")),
                        torch.device("cpu"))
    assert loss == pytest.approx(summary["val_loss"], rel=1e-5, abs=1e-6)
    assert f1 == pytest.approx(summary["val_f1"], abs=1e-9)


def _rank_worker(rank: int, workdir: str, port: int, epochs: int, arch: str = "resnet18") -> None:
    """One of two processes: train, recording a checksum of its parameters after every epoch."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from imgclf import fit as fit_module
    from imgclf.train import train_model
    from tests.conftest import tiny_train_config

    sums, real = [], fit_module.validate

    def validate_and_record(model, *args, **kwargs):
        result = real(model, *args, **kwargs)  # after the epoch's training, with rank 0's buffers
        sums.append([float(t.double().sum()) for t in model.state_dict().values()])
        return result

    fit_module.validate = validate_and_record
    work = Path(workdir)
    classes = json.loads((work / "split/classes.json").read_text())
    train_model(tiny_train_config(epochs=epochs, batch_size=4, arch=arch), work / "split/train.csv",
                work / "split/val.csv", work / "decoded", classes, [1.0, 2.0, 3.0], work / f"rank{rank}.pt")
    (work / f"sums{rank}.json").write_text(json.dumps(sums))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("arch", ["resnet18", "timm/tf_efficientnet_lite0"])
def test_parameters_are_identical_on_both_ranks_after_every_epoch(workdir, arch):
    torch.multiprocessing.spawn(_rank_worker, args=(str(workdir), free_port(), 3, arch), nprocs=2, join=True)
    sums = [json.loads((workdir / f"sums{rank}.json").read_text()) for rank in (0, 1)]
    assert len(sums[0]) == 3 and sums[0] == sums[1]
    assert (workdir / "rank0.pt").exists() and not (workdir / "rank1.pt").exists()  # rank 0 alone writes


def test_an_error_ends_every_process_with_one_line(workdir):
    (workdir / "split/val.csv").write_text("\n".join((workdir / "split/val.csv").read_text().splitlines()[:-1]) + "\n")
    run = start(workdir, "broken")
    _, err = run.communicate(timeout=120)
    assert run.returncode == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [line for line in err.strip().splitlines() if line.strip()][-1:]  # exactly one line
    assert "decoded from another val split" in errors[0]
    assert not (workdir / "broken/model.pt").exists()


def workers_of(process: subprocess.Popen) -> dict[int, psutil.Process]:
    """The training processes a launcher started, by rank."""
    found = {}
    for child in psutil.Process(process.pid).children(recursive=True):
        try:
            rank = child.environ().get("RANK")
        except psutil.Error:
            continue
        if rank is not None and "stages.train" in " ".join(child.cmdline()):
            found[int(rank)] = child
    return found


def test_a_killed_process_ends_the_run_within_seconds(workdir):
    run = start(workdir, "killed")
    deadline = time.time() + 120
    while len(workers_of(run)) < 2 and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # training under way
    workers = workers_of(run)
    workers[1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    _, err = run.communicate(timeout=120)
    assert time.time() - killed_at < 60
    assert run.returncode == 2 and "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: training process of rank 1 died (SIGKILL)")
    assert not workers[0].is_running() or workers[0].status() == psutil.STATUS_ZOMBIE  # rank 0 stopped too


def test_a_killed_two_process_run_resumes_from_its_last_epoch(workdir):
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["train"].update(epochs=10, patience=10)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    finish(start(workdir, "reference"))
    run = start(workdir, "resumed")
    state = workdir / "resumed/state.pt"
    while run.poll() is None:
        if state.exists() and torch.load(state, weights_only=True)["epoch"] >= 2:
            break
        time.sleep(0.05)
    assert run.poll() is None, "the run ended before it could be killed"
    os.killpg(run.pid, signal.SIGKILL)  # the launcher and both processes, as a lost machine
    run.wait()
    out, _ = finish(start(workdir, "resumed"))
    assert "resuming from epoch" in out
    a, b = weights(workdir / "reference/model.pt"), weights(workdir / "resumed/model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # each rank's random state was restored too


def test_two_machines_of_one_process_each(workdir):
    """Two torchrun agents on localhost meeting by c10d rendezvous: what two machines on shared storage do."""
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["train"]["nproc_per_node"] = 1  # one process per "machine": torchrun starts them, not the stage
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    endpoint = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "imgclf-test",
               "--rdzv-conf", "join_timeout=60", "--max-restarts", "0", "-m", "stages.train", *train_args("nodes")]
    machines = [subprocess.Popen(command, cwd=workdir, env={**ENV, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for machine in machines:
        _, err = machine.communicate(timeout=300)
        assert machine.returncode == 0, err
    assert sorted(os.listdir(workdir / "nodes")) == ["live", "model.pt"]
    summary = json.loads((workdir / "nodes/live/metrics.json").read_text())
    history = (workdir / "nodes/live/plots/metrics/val_loss.tsv").read_text().splitlines()
    assert len(history) == 1 + summary["epochs_run"]


def test_frozen_backbone_epochs_run_under_two_processes(workdir):
    """train.freeze_epochs with DDP: the documented fine-tuning recipe on several GPUs, here 2 CPU processes."""
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["train"].update(freeze_epochs=1)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    out, err = finish(start(workdir, "frozen"))
    assert "Traceback" not in err and "Expected to have finished reduction" not in err
    summary = json.loads((workdir / "frozen/live/metrics.json").read_text())
    assert summary["epochs_run"] == 4 and (workdir / "frozen/model.pt").exists()


def _freeze_worker(rank: int, workdir: str, port: int, cache_features: bool) -> None:
    """One of two processes training with freeze_epochs=2: parameter checksums after every epoch, backbone and head."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from imgclf import fit as fit_module
    from imgclf.model import output_layer
    from imgclf.train import train_model
    from tests.conftest import tiny_train_config

    sums, real_epoch = [], fit_module.run_epoch

    def checksums(model):
        head = {id(p) for p in output_layer(model)[1].parameters()}
        parts = {"head": 0.0, "backbone": 0.0}
        for parameter in model.parameters():
            parts["head" if id(parameter) in head else "backbone"] += float(parameter.detach().double().sum())
        return parts

    def recorded_epoch(run, *args, **kwargs):
        if not sums:
            sums.append(checksums(run.model))  # the weights before any step
        metrics = real_epoch(run, *args, **kwargs)
        sums.append(checksums(run.model))
        return metrics

    fit_module.run_epoch = recorded_epoch
    work = Path(workdir)
    classes = json.loads((work / "split/classes.json").read_text())
    train_model(tiny_train_config(epochs=3, batch_size=4, freeze_epochs=2, cache_features=cache_features),
                work / "split/train.csv", work / "split/val.csv", work / "decoded", classes, [1.0, 2.0, 3.0],
                work / f"frozen{rank}.pt")
    (work / f"frozen_sums{rank}.json").write_text(json.dumps(sums))


@pytest.mark.parametrize("cache_features", [True, False], ids=["features_once", "through_the_backbone"])
def test_freezing_under_ddp_trains_the_head_only_then_everything_identically_on_both_ranks(workdir, cache_features):
    torch.multiprocessing.spawn(_freeze_worker, args=(str(workdir), free_port(), cache_features), nprocs=2,
                                join=True)
    sums = [json.loads((workdir / f"frozen_sums{rank}.json").read_text()) for rank in (0, 1)]
    assert len(sums[0]) == 1 + 3 and sums[0] == sums[1]  # before training, then after each epoch
    start, frozen1, frozen2, unfrozen = sums[0]
    assert start["backbone"] == frozen1["backbone"] == frozen2["backbone"]  # frozen: not a single step
    assert start["head"] != frozen1["head"] != frozen2["head"]  # the head trains
    assert unfrozen["backbone"] != frozen2["backbone"]  # unfrozen at epoch 3: the new DDP steps it


class Killed(Exception):
    """Stands in for every process dying after an epoch (the SIGKILL test above does it for real)."""


def _resume_worker(rank: int, workdir: str, port: int, phase: str) -> None:
    """One of two processes, each with its own state file (machines without a shared .cache); `phase`
    kill: stop both after epoch 2's state is saved; run: train to the end and record the history."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import datetime

    from imgclf import distributed
    from imgclf import fit as fit_module
    from imgclf.train import train_model
    from tests.conftest import tiny_train_config

    distributed.TIMEOUT = datetime.timedelta(seconds=30)  # ranks that disagree fail in 30 s, not 5 minutes
    if phase == "kill":
        real_state = fit_module.run_state

        def die_after_epoch_2(run, stopper, history, epoch):
            if epoch > 2:
                raise Killed
            return real_state(run, stopper, history, epoch)

        fit_module.run_state = die_after_epoch_2
    work = Path(workdir)
    classes = json.loads((work / "split/classes.json").read_text())
    try:
        result = train_model(tiny_train_config(epochs=4, batch_size=4, patience=4), work / "split/train.csv",
                             work / "split/val.csv", work / "decoded", classes, [1.0, 2.0, 3.0],
                             work / f"{phase}.pt", state_path=work / f"state{rank}.pt")
    except Killed:
        return
    (work / f"{phase}_history{rank}.json").write_text(json.dumps(result.history))


def test_rank_zero_decides_whether_to_resume_and_the_others_follow(workdir):
    """Two processes on "machines" without a shared .cache: a state file on one rank only."""
    def run(phase):
        torch.multiprocessing.spawn(_resume_worker, args=(str(workdir), free_port(), phase), nprocs=2, join=True)

    run("kill")
    saved = workdir / "saved_state.pt"
    (workdir / "state0.pt").rename(saved)
    assert torch.load(saved, weights_only=True)["epoch"] == 2 and not (workdir / "state1.pt").exists()

    # Rank 1 alone holds a state: rank 0 has none and decides for all to start fresh.
    (workdir / "state1.pt").write_bytes(saved.read_bytes())
    run("fresh")
    # Rank 0 alone holds the state: every rank resumes from it, rank 1 receiving it from rank 0.
    (workdir / "state1.pt").unlink()
    (workdir / "state0.pt").write_bytes(saved.read_bytes())
    run("resumed")

    fresh = [json.loads((workdir / f"fresh_history{rank}.json").read_text()) for rank in (0, 1)]
    resumed = [json.loads((workdir / f"resumed_history{rank}.json").read_text()) for rank in (0, 1)]
    assert len(fresh[0]) == 4 and fresh[0] == resumed[0]  # rank 0's history, the one logged
    # Every rank validated the same weights at every epoch (train_loss is each process's own).
    validated = [[(h["epoch"], h["val_loss"], h["val_f1"]) for h in history] for history in fresh + resumed]
    assert validated[0] == validated[1] == validated[2] == validated[3]
    a, b = weights(workdir / "fresh.pt"), weights(workdir / "resumed.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the resumed run is the uninterrupted one, bit for bit
    assert not (workdir / "state0.pt").exists()  # rank 0 removes its state when done
