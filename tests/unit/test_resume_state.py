"""The resume state: where a run continues, what is never resumed (other params, devices, foreign or unsafe files),
and how often it is saved. The bit-identical resumes themselves are tests/e2e/test_resume_exact.py."""

import pickle

import pytest
import torch

from imgclf.resume import FORMAT, EverySeconds, StateWriter
from tests.conftest import tiny_train_config
from tests.resume_helpers import Killed, run


def test_resume_says_where_it_continues(prepared, capsys):
    state = prepared / "state.pt"
    with pytest.raises(Killed):
        run(prepared, tiny_train_config(epochs=3), "m", state, kill_at=2)
    capsys.readouterr()
    run(prepared, tiny_train_config(epochs=3), "m", state)
    assert f"resuming from epoch 2 of 3 (saved in {state})" in capsys.readouterr().out
    assert not state.exists()


@pytest.mark.parametrize("content", [b"not a state", pickle.dumps({"format": FORMAT}),
                                     b"\x80\x04\x95" + b"\x00" * 20])
def test_unreadable_or_foreign_state_is_ignored_with_a_warning(prepared, capsys, content):
    state = prepared / "state.pt"
    state.write_bytes(content)
    result, _ = run(prepared, tiny_train_config(epochs=1), "m", state)
    out = capsys.readouterr().out
    assert "warning:" in out and "not a resumable training state" in out and result.epochs_run == 1


def test_a_pickled_payload_in_the_state_file_is_never_executed(prepared, capsys, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"format": FORMAT, "params": {}, "inputs": {}, "x": Payload()}, prepared / "state.pt")
    run(prepared, tiny_train_config(epochs=1), "m", prepared / "state.pt")
    assert not marker.exists() and "warning:" in capsys.readouterr().out


def test_a_cpu_runs_state_met_on_cuda_starts_fresh_and_says_why(prepared, capsys):
    """The other direction, at the decision itself: the same params and inputs, a CUDA set-up now."""
    from imgclf.resume import Fingerprint, load_state

    state = prepared / "state.pt"
    with pytest.raises(Killed):
        run(prepared, tiny_train_config(epochs=2, device="auto"), "m", state, kill_at=1)
    saved = torch.load(state, weights_only=True)
    same = Fingerprint(saved["params"], saved["inputs"], {"device": "cpu", "autocast": "float32"})
    assert load_state(state, same)["epoch"] == 1
    capsys.readouterr()
    on_gpu = Fingerprint(saved["params"], saved["inputs"], {"device": "cuda", "autocast": "bfloat16"})
    assert load_state(state, on_gpu) is None
    assert "device (cpu -> cuda), autocast (float32 -> bfloat16) changed" in capsys.readouterr().out


def test_the_train_stage_saves_its_state_on_the_interval(prepared):
    saves = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StateWriter, "__call__", lambda writer, state: saves.append(state["epoch"]))
        run(prepared, tiny_train_config(epochs=2, state_every=0), "every", prepared / "a.pt")
        assert saves == [1, 2]
        saves.clear()
        run(prepared, tiny_train_config(epochs=2, state_every=1e6), "interval", prepared / "b.pt")
        assert saves == []  # two short epochs: a kill would lose less than the interval


def test_state_every_saves_short_epochs_on_an_interval_and_long_ones_every_epoch():
    # 0: every epoch, whatever their length.
    assert saved_epochs(0, [0.1] * 5) == [1, 2, 3, 4, 5]
    # 10 s epochs, 30 s interval: saved when one more epoch would pass 30 s since the last save
    # (epochs 3, 6, 9 at 30, 60, 90 s): a kill loses at most 30 s.
    assert saved_epochs(30, [10] * 9) == [3, 6, 9]
    # Epochs longer than half the interval: every epoch (waiting for the next would lose more).
    assert saved_epochs(30, [16] * 4) == [1, 2, 3, 4]
    assert saved_epochs(30, [100] * 3) == [1, 2, 3]
    # Epochs that grow: the last one's length is the estimate of the next.
    assert saved_epochs(30, [5, 5, 5, 20, 20]) == [4, 5]


def saved_epochs(seconds, epoch_lengths):
    clock, saved = FakeClock(), []
    every = EverySeconds(lambda state: saved.append(state["epoch"]), seconds, clock=clock)
    for epoch, length in enumerate(epoch_lengths, start=1):
        clock.now += length
        every({"epoch": epoch})
    return saved


class FakeClock:
    """A clock the test moves: `epoch(seconds)` is one epoch of training."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now
