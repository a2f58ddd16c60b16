"""`python -m imgclf.own_data`: the demo's stage, params, lock entry and images go; nothing of the user's does."""

import shutil

import yaml

from imgclf.own_data import switch_to_own_data
from imgclf.template import PARAMS, PIPELINE
from tests.conftest import write_png


def demo_project(root):
    """A project as shipped, after the demo ran: its digits, its unlabeled images and a dvc.lock entry."""
    shutil.copy(PIPELINE, root / "dvc.yaml")
    shutil.copy(PARAMS, root / "params.yaml")
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {
        "demo": {"cmd": "python -m stages.demo"}, "split": {"cmd": "python -m stages.split"}}}))
    (root / "data").mkdir()
    (root / "data/.gitignore").write_text("/raw\n/predict\n/split\n")
    for digit in range(3):
        write_png(root / f"data/raw/{digit}/digit_{digit:04d}.png", digit)
    write_png(root / "data/predict/image_0000.png", 9)


def test_the_demo_goes_and_the_users_files_stay(tmp_path):
    demo_project(tmp_path)
    write_png(tmp_path / "data/raw/cat/IMG_0001.png", 1)  # the user copied a photo in before switching
    pipeline_before = (tmp_path / "dvc.yaml").read_text()

    done = switch_to_own_data(tmp_path)

    assert any("removed the `demo` stage" in line for line in done)
    assert any("kept 1 files that the demo did not write, e.g. data/raw/cat/IMG_0001.png" in line for line in done)
    pipeline = yaml.safe_load((tmp_path / "dvc.yaml").read_text())
    shipped = yaml.safe_load(pipeline_before)
    assert pipeline["stages"] == {k: v for k, v in shipped["stages"].items() if k != "demo"}
    assert pipeline["plots"] == shipped["plots"]
    assert "demo" not in yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert list(yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]) == ["split"]
    assert (tmp_path / "data/.gitignore").read_text() == "/split\n"
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "data").rglob("*.png")) == \
        ["data/raw/cat/IMG_0001.png"]
    assert (tmp_path / "data/predict").is_dir()  # for `dvc add data/predict`, even with nothing to predict
    assert switch_to_own_data(tmp_path) == []  # a second run does nothing


def files_under(root):
    """Every file under `root`: relative path -> (bytes, modification time)."""
    return {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def test_a_second_run_changes_no_file_before_or_after_dvc_add(tmp_path):
    demo_project(tmp_path)
    switch_to_own_data(tmp_path)
    once = files_under(tmp_path)
    assert switch_to_own_data(tmp_path) == [] and files_under(tmp_path) == once  # before `dvc add`

    # What `dvc add data/raw data/predict` writes: the .dvc files, and the ignore lines for the user's own data.
    write_png(tmp_path / "data/raw/cat/IMG_0001.png", 1)
    for name in ("raw", "predict"):
        (tmp_path / f"data/{name}.dvc").write_text(f"outs:\n- path: {name}\n")
    (tmp_path / "data/.gitignore").write_text("/split\n/raw\n/predict\n")
    added = files_under(tmp_path)
    assert switch_to_own_data(tmp_path) == [] and files_under(tmp_path) == added  # the ignore lines stay
