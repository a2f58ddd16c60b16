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
