"""The CUDA and multi-process set-up, checked on the CPU: torch.cuda's queries faked, the process group recorded.

What only a GPU can show (no host sync under set_sync_debug_mode, NCCL, real CUDA generators) is in
tests/gpu; these tests fake `torch.cuda.is_available` / `device_count` / the CUDA generators.
"""

import dataclasses
import json

import pytest
import torch
import yaml
from torch import nn

from imgclf import fit as fit_module
from imgclf.distributed import World
from imgclf.errors import ConfigError
from imgclf.fit import EarlyStopping, TrainingRun, load_run_state, run_state, train_one_epoch
from imgclf.template import PARAMS
from tests.conftest import run_stage, tiny_train_config


@pytest.fixture
def gpus(monkeypatch):
    """`count` visible CUDA GPUs, as torch.cuda's queries see them (nothing is run on them)."""

    def install(count: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    return install


# --- more training processes than GPUs, and cuda:N with several processes (refused before any starts) ---

def stage_params(prepared, **train):
    """params.yaml with `train` changes, in the prepared folder; returns the stage's flags."""
    params = yaml.safe_load(PARAMS.read_text())
    params["train"].update(epochs=2, batch_size=4, **train)
    (prepared / "params.yaml").write_text(yaml.safe_dump(params))
    return ["--params", str(prepared / "params.yaml"), "--split", str(prepared / "split"), "--decoded",
            str(prepared / "decoded"), "--weights", str(prepared / "weights.json"), "--model",
            str(prepared / "m/model.pt"), "--live", str(prepared / "m/live"), "--state", str(prepared / "m/state.pt")]


@pytest.fixture
def launches(monkeypatch):
    """Records launch() calls of the train stage instead of starting processes."""
    import stages.train

    calls = []
    monkeypatch.setattr(stages.train, "launch", lambda *args, **kwargs: calls.append(args) or 0)
    return calls


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_more_processes_than_gpus_is_one_line_before_any_process_starts(prepared, gpus, launches, device):
    gpus(1)
    code, out, err = run_stage("train", *stage_params(prepared, nproc_per_node=2, device=device))
    assert (code, launches) == (2, []) and "Traceback" not in err
    assert err.strip().splitlines() == [
        "error: train.nproc_per_node: 2 training processes on this machine need 2 GPUs (NCCL: one per process), "
        "but 1 is visible; set train.nproc_per_node: 1, or train.device: cpu for CPU processes (gloo)"]


def test_a_pinned_gpu_with_several_processes_is_refused(prepared, gpus, launches):
    gpus(2)
    code, _, err = run_stage("train", *stage_params(prepared, nproc_per_node=2, device="cuda:1"))
    assert (code, launches) == (2, [])
    assert err.strip().startswith("error: train.device: cuda:1 pins one GPU, but each of the 2 training processes")


def test_as_many_processes_as_gpus_are_launched(prepared, gpus, launches):
    gpus(2)
    code, _, _ = run_stage("train", *stage_params(prepared, nproc_per_node=2, device="auto"))
    assert code == 0 and len(launches) == 1


def test_each_process_gets_its_gpu_and_one_process_per_machine_keeps_cuda_n(gpus):
    from imgclf.train import training_device

    gpus(2)
    cfg = tiny_train_config(device="cuda")
    assert [training_device(cfg, World(r, 2, r, 2)) for r in (0, 1)] == [torch.device("cuda", 0),
                                                                       torch.device("cuda", 1)]
    # torchrun over machines, one process each: cuda:1 is defined as that machine's second GPU.
    pinned = dataclasses.replace(cfg, device="cuda:1")
    assert training_device(pinned, World(1, 2, 0, 1)) == torch.device("cuda", 1)
    assert training_device(pinned, World()) == torch.device("cuda", 1)
    gpus(0)
    assert training_device(tiny_train_config(device="cpu"), World(1, 2, 1, 2)) == torch.device("cpu")
    with pytest.raises(ConfigError, match="device: cuda was asked for but no CUDA GPU is available"):
        training_device(cfg, World(1, 2, 1, 2))


# --- the process group is left on every exit path ---

def test_the_process_group_is_left_when_training_fails(prepared, monkeypatch):
    calls = []
    monkeypatch.setattr(World, "from_env", classmethod(lambda cls: World(0, 2, 0, 2)))
    monkeypatch.setattr(World, "start", lambda self, device: calls.append("start"))
    monkeypatch.setattr(World, "stop", lambda self: calls.append("stop"))
    val = prepared / "split/val.csv"
    val.write_text("\n".join(val.read_text().splitlines()[:-1]) + "\n")  # decoded from another val split
    from imgclf.errors import DataError
    from imgclf.train import train_model

    classes = json.loads((prepared / "split/classes.json").read_text())
    with pytest.raises(DataError, match="decoded from another val split"):
        train_model(tiny_train_config(), prepared / "split/train.csv", val, prepared / "decoded", classes,
                    [1.0, 1.0, 1.0], prepared / "model.pt")
    assert calls == ["start", "stop"]


# --- one read-back per training epoch ---

def test_a_training_epoch_reads_one_value_back_from_the_device(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    batches = [(torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]))] * 45  # more than the old 20-step read
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = TrainingRun(model=model, train_batches=batches, val_batches=[], prepare=lambda x: x,
                      criterion=nn.CrossEntropyLoss(), optimizer=optimizer,
                      scheduler=torch.optim.lr_scheduler.StepLR(optimizer, 1), device=torch.device("cpu"))
    reads = []
    real_item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: reads.append(self.shape) or real_item(self))
    loss = train_one_epoch(run)
    assert reads == [torch.Size([])] and loss > 0


# --- resuming with a different number of visible GPUs ---

class FakeCudaGenerators:
    """torch.cuda's per-GPU generators for `count` visible GPUs, as plain tensors (set_rng_state checks the index)."""

    def __init__(self, monkeypatch, count: int):
        self.count, self.states = count, {}
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        for module in (torch.cuda, torch.cuda.random):  # get/set_rng_state_all call the latter's
            monkeypatch.setattr(module, "get_rng_state", lambda device="cuda": self.get(device))
            monkeypatch.setattr(module, "set_rng_state", lambda state, device="cuda": self.set(state, device))

    def index(self, device) -> int:
        index = device if isinstance(device, int) else torch.device(device).index
        index = 0 if index is None else index
        if index >= self.count:
            raise RuntimeError("CUDA error: invalid device ordinal")
        return index

    def get(self, device) -> torch.Tensor:
        index = self.index(device)
        return self.states.get(index, torch.full((16,), index, dtype=torch.uint8))

    def set(self, state: torch.Tensor, device) -> None:
        self.states[self.index(device)] = state.clone()


def cuda_run(device: torch.device) -> TrainingRun:
    """A tiny TrainingRun whose device is `device` (its model stays on the CPU: nothing runs)."""
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return TrainingRun(model=model, train_batches=[], val_batches=[], prepare=lambda x: x,
                       criterion=nn.CrossEntropyLoss(), optimizer=optimizer,
                       scheduler=torch.optim.lr_scheduler.StepLR(optimizer, 1), device=device, precision="fp32",
                       generator=torch.Generator().manual_seed(0))


def test_a_state_saved_with_two_gpus_visible_resumes_with_one(monkeypatch):
    cuda = FakeCudaGenerators(monkeypatch, count=2)
    cuda.states = {0: torch.full((16,), 7, dtype=torch.uint8), 1: torch.full((16,), 9, dtype=torch.uint8)}
    run = cuda_run(torch.device("cuda", 0))
    state = run_state(run, EarlyStopping(3), [], 1)
    cuda.count, cuda.states = 1, {}  # CUDA_VISIBLE_DEVICES=0 on the rerun
    load_run_state(run, EarlyStopping(3), state)
    assert torch.equal(cuda.states[0], torch.full((16,), 7, dtype=torch.uint8))  # the training GPU's own


def test_a_disabled_loss_scalers_empty_state_does_not_break_loading(monkeypatch):
    run = cuda_run(torch.device("cpu"))
    state = run_state(run, EarlyStopping(3), [], 1)
    assert state["scaler"] == {}  # fp32: the scaler is disabled and saves nothing
    run.scaler = torch.amp.GradScaler("cpu", enabled=True)  # as fp16 on CUDA would have it
    load_run_state(run, EarlyStopping(3), state)
    assert run.scaler.is_enabled()


def test_set_frozen_rebuilds_the_stepped_model_under_ddp_when_the_trainable_set_changes(monkeypatch):
    """DDP registers its gradient hooks for the parameters that train when it is built: the stepped model is built
    again when freezing starts and when it ends, and what it returns is what trains from then on."""
    from imgclf.distributed import World

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 6), nn.Linear(6, 3))
    data = [(torch.randn(4, 3, 2, 1), torch.tensor([0, 1, 2, 0]))]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stepped_by_epoch, wrappers = [], []

    class Wrapper(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            stepped_by_epoch.append(self)
            return self.inner(x)

    monkeypatch.setattr(fit_module.TrainingRun, "_wrap",
                        lambda run: wrappers.append(Wrapper(run.model)) or wrappers[-1])
    monkeypatch.setattr(fit_module, "validate", lambda *args, **kwargs: (1.0, 0.0))
    run = TrainingRun(model=model, train_batches=data, val_batches=data, prepare=lambda x: x,
                      criterion=nn.CrossEntropyLoss(), optimizer=optimizer,
                      scheduler=torch.optim.lr_scheduler.StepLR(optimizer, 1), device=torch.device("cpu"),
                      world=World(rank=0, world_size=2))
    fit_module.fit(run, epochs=4, patience=9, monitor="val_loss", freeze_epochs=2)
    # Built once, again when epoch 1 froze the backbone, and again when epoch 3 unfroze it.
    assert len(wrappers) == 3 and stepped_by_epoch == [wrappers[1], wrappers[1], wrappers[2], wrappers[2]]
