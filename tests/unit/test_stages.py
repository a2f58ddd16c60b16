"""Every stage script: Ctrl-C is one line and exit status 130; a user error is one line and exit status 2."""

import importlib

import pytest

from tests.conftest import run_stage

STAGES = ["demo", "split", "decode", "compute_weights", "train", "evaluate", "export", "predict"]


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("name", STAGES)
def test_ctrl_c_is_one_line_and_exit_130(name, monkeypatch, tmp_path):
    # The predict stage's main() is imgclf.predict's (it is also the `imgclf-predict` command).
    module = "imgclf.predict" if name == "predict" else f"stages.{name}"
    monkeypatch.setattr(importlib.import_module(module), "load_section", interrupt)
    code, out, err = run_stage(name, cwd=tmp_path)
    lines = err.strip().splitlines()
    assert code == 130 and len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith(f"interrupted: stage {name} stopped by Ctrl-C; nothing was left half-written")
    if name == "train":
        assert "rerun `dvc repro` to resume" in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", STAGES)
def test_missing_params_file_is_one_line_and_exit_2(name, tmp_path):
    code, _, err = run_stage(name, "--params", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert code == 2 and err.strip() == f"error: {tmp_path / 'nope.yaml'}: cannot read params file (No such file " \
                                        f"or directory)"


def test_an_error_under_dvc_says_how_to_restore_what_dvc_deleted(monkeypatch, tmp_path):
    from imgclf.entry import recovery_hint
    from imgclf.template import PIPELINE

    assert recovery_hint() == ""  # not under DVC: nothing was deleted
    (tmp_path / "dvc.yaml").write_text(PIPELINE.read_text())
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("DVC_STAGE", "train")
    assert recovery_hint() == (" (DVC removed this stage's previous outputs before running it: `dvc checkout train` "
                               "restores models/model.pt from DVC's cache, and `git restore dvclive` the rest)")
    monkeypatch.setenv("DVC_STAGE", "export")
    assert "`dvc checkout export` restores models/model.onnx from DVC's cache, and `git restore reports/export.json`" \
        in recovery_hint()
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "elsewhere"))  # unreadable dvc.yaml: the hint still works
    assert recovery_hint().endswith("`dvc checkout export` restores them from DVC's cache)")


def test_a_ctrl_c_while_the_worker_pool_starts_terminates_its_workers(monkeypatch):
    """Ctrl-C in the middle of Pool() (its workers half forked) is raised once the pool exists, which is then
    terminated: no worker is left orphaned (one would hold the terminal's pipes and block the caller)."""
    import multiprocessing
    import os
    import signal
    import threading

    from imgclf.workers import worker_pool

    context = multiprocessing.get_context("fork")
    make_pool, started, pools = type(context).Pool, [], []

    def pool_then_ctrl_c(self, *args, **kwargs):
        pool = make_pool(self, *args, **kwargs)
        pools.append(pool)  # kept alive, as a stage about to leave by os._exit (no finaliser would run)
        started.extend(pool._pool)  # the worker processes
        os.kill(os.getpid(), signal.SIGINT)  # arrives while the pool is being made: held back
        return pool

    monkeypatch.setattr(type(context), "Pool", pool_then_ctrl_c)
    # Python's own Ctrl-C handler, even when the tests run in the background of a shell (SIGINT ignored).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    # A thread with SIGINT unblocked, as torch's and tqdm's are: the kernel may hand the signal to it.
    waiting = threading.Event()
    other = threading.Thread(target=waiting.wait, args=(30,), daemon=True)
    other.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            worker_pool(2)
        handler_after = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)
        waiting.set()
    assert len(started) == 2 and not any(worker.is_alive() for worker in started)  # terminated and joined
    assert handler_after is signal.default_int_handler  # Ctrl-C handled as before again
