"""End to end: the real `dvc repro` and `dvc exp run` on a tiny demo dataset in a temporary git repo."""

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from imgclf.template import PIPELINE
from tests.conftest import DVC, TINY, copy_project, new_project, set_params, sh, stale_stages, touch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def repo(demo_project, tmp_path_factory):
    """A git + DVC repository with the pipeline, tiny params, and one committed `dvc repro` of every stage:
    this module's own copy of the session's demo project (its tests change it)."""
    return copy_project(demo_project, tmp_path_factory.mktemp("pipeline") / "project")


def test_repro_writes_every_artifact(repo):
    classes = json.loads((repo / "data/split/classes.json").read_text())
    assert classes == ["0", "1", "2"]
    splits = {n: pd.read_csv(repo / f"data/split/{n}.csv", dtype=str) for n in ("train", "val", "test")}
    for frame in splits.values():
        assert list(frame.columns) == ["path", "label"] and set(frame["label"]) == set(classes)
    labeled = sorted(p.as_posix() for p in (repo / "data/raw").rglob("*.png"))
    assert sorted(pd.concat(splits.values())["path"].map(lambda p: (repo / p).as_posix())) == labeled

    weights = json.loads((repo / "data/weights.json").read_text())
    counts = splits["train"]["label"].value_counts()
    assert {k: v["count"] for k, v in weights["classes"].items()} == counts.to_dict()

    import torch
    checkpoint = torch.load(repo / "models/model.pt", weights_only=True)
    assert checkpoint["classes"] == classes and checkpoint["arch"] == "resnet18"
    assert checkpoint["params"]["epochs"] == 2 and 1 <= checkpoint["best_epoch"] <= 2
    assert checkpoint["image_size"] == 16  # decode.image_size, used by evaluate and predict too
    decoded = json.loads((repo / "data/decoded/meta.json").read_text())
    assert {k: v["count"] for k, v in decoded["splits"].items()} == {"train": len(splits["train"]),
                                                                    "val": len(splits["val"])}

    metrics = json.loads((repo / "reports/metrics.json").read_text())
    for key in ("accuracy", "f1_weighted", "f1_macro", "precision_weighted", "recall_weighted", "loss"):
        assert 0 <= metrics[key] <= (1 if key != "loss" else 100)
    assert set(metrics["classes"]) == set(classes)
    assert sum(c["support"] for c in metrics["classes"].values()) == len(splits["test"])
    samples = pd.read_csv(repo / "reports/test_predictions.csv", dtype=str)
    assert list(samples.columns) == ["path", "actual", "predicted", "confidence"]
    assert len(samples) == len(splits["test"])
    assert "precision" in (repo / "reports/classification_report.txt").read_text()
    assert metrics["temperature"] == checkpoint["temperature"] > 0 and 0 <= metrics["ece_calibrated"] <= 1
    per_class = pd.read_csv(repo / "reports/per_class.csv", dtype={"class": str})
    assert per_class["class"].tolist() == classes
    for name in ("uncalibrated", "calibrated"):
        table = pd.read_csv(repo / f"reports/reliability/{name}.csv")
        assert table["count"].sum() == len(splits["test"])
    for name, frame in splits.items():
        counts = pd.read_csv(repo / f"reports/class_counts/{name}.csv", dtype={"class": str})
        assert dict(zip(counts["class"], counts["count"])) == frame["label"].value_counts().to_dict()
    from PIL import Image
    assert Image.open(repo / "reports/mistakes.png").format == "PNG"

    predictions = pd.read_csv(repo / "reports/predictions.csv", dtype=str)
    unlabeled = list((repo / "data/predict").iterdir())
    assert len(predictions) == len(unlabeled) > 0 and set(predictions["status"]) == {"ok"}
    assert list(predictions.columns) == ["path", "prediction", "confidence", "prob_0", "prob_1", "prob_2", "distance",
                                          "status"]

    live = json.loads((repo / "dvclive/metrics.json").read_text())
    assert live["epochs_run"] == 2 and live["best_epoch"] == checkpoint["best_epoch"]
    history = pd.read_csv(repo / "dvclive/plots/metrics/val_loss.tsv", sep="\t")
    assert len(history) == 2


def test_nothing_changed_runs_nothing(repo):
    result = sh([DVC, "repro"], repo)
    assert "Running stage" not in result.stdout
    assert stale_stages(repo) == []


def test_each_param_and_module_makes_only_its_readers_stale(repo):
    """`dvc status` names the stages whose own params or code changed (their downstream reruns too)."""
    original = (repo / "params.yaml").read_text()
    try:
        for changes, stale in [({"train": {"lr": 0.002}}, ["train"]),
                               ({"evaluate": {"batch_size": 64}}, ["evaluate"]),
                               ({"predict": {"batch_size": 8}}, ["predict"]),
                               ({"split": {"seed": 7}}, ["split"]),
                               ({"decode": {"image_size": 24}}, ["audit", "decode"]),  # the audit's features too
                               ({"audit": {"folds": 3}}, ["audit"]),
                               ({"compute_weights": {"scheme": "none"}}, ["compute_weights"])]:
            set_params(repo, changes)
            assert stale_stages(repo) == stale, changes
            (repo / "params.yaml").write_text(original)
        # train reads weights.json through weights_file.py, not the module that writes it
        for module, stale in [("imgclf/compute_weights.py", ["compute_weights"]),
                              ("imgclf/weights_file.py", ["train"]),
                              ("imgclf/store/reader.py", ["train"]),  # the store's reader is train's alone
                              ("imgclf/store/writer.py", ["decode"])]:  # and its writer decode's
            touch(repo / module)
            assert stale_stages(repo) == stale, module
            sh(["git", "checkout", "--", module], repo)
    finally:
        (repo / "params.yaml").write_text(original)
        sh(["git", "checkout", "--", "imgclf"], repo)
    assert stale_stages(repo) == []


def test_editing_the_split_module_reruns_split_alone_and_no_training(repo):
    """The split stage's own logic is a dependency of split only: its outputs, unchanged, stop the rerun there."""
    try:
        touch(repo / "imgclf/split.py")
        assert stale_stages(repo) == ["split"]
        result = sh([DVC, "repro"], repo)
        assert "Running stage 'split'" in result.stdout
        for stage in ("decode", "compute_weights", "train", "evaluate", "predict"):
            assert f"Running stage '{stage}'" not in result.stdout, stage
    finally:
        sh(["git", "checkout", "--", "imgclf/split.py"], repo)
        sh([DVC, "commit", "-f", "split"], repo)
    assert stale_stages(repo) == []


def test_experiment_reruns_only_training_and_reports_the_change(repo):
    result = sh([DVC, "exp", "run", "-S", "train.lr=0.01"], repo)
    for stage in ("demo", "split", "decode", "compute_weights"):
        assert f"Stage '{stage}' didn't change, skipping" in result.stdout
        assert f"Running stage '{stage}'" not in result.stdout
    for stage in ("train", "evaluate", "predict"):
        assert f"Running stage '{stage}'" in result.stdout

    params = json.loads(sh([DVC, "params", "diff", "--json"], repo).stdout)
    lr = params["params.yaml"]["train.lr"]
    assert (lr["old"], lr["new"]) == (0.0005, 0.01)
    metrics = json.loads(sh([DVC, "metrics", "diff", "--json"], repo).stdout)
    assert "reports/metrics.json" in metrics and "dvclive/metrics.json" in metrics
    assert metrics["dvclive/metrics.json"]["train_loss"]["diff"] != 0

    shown = json.loads(sh([DVC, "exp", "show", "--json"], repo).stdout)
    assert "f1_macro" in json.dumps(shown) and "0.01" in json.dumps(shown)

    out = repo / "plots_html"
    sh([DVC, "plots", "show", "-o", str(out)], repo)
    html = (out / "index.html").read_text()
    for title in ("Loss per epoch", "Validation F1", "Learning rate", "Test confusion matrix (counts)",
                  "Test confusion matrix (normalised", "Test F1 per class", "Images per class in each split",
                  "Reliability diagram", "mistakes.png"):
        assert title in html, title

    # The README's way back to the committed baseline: its params, code and outputs, nothing stale.
    sh(["bash", "-c", readme_line("git restore . && dvc checkout")], repo)
    assert json.loads(sh([DVC, "params", "diff", "--json"], repo).stdout) == {}
    assert json.loads(sh([DVC, "metrics", "diff", "--json"], repo).stdout) == {}
    assert json.loads(sh([DVC, "status", "--json"], repo).stdout) == {}
    assert "0.01" in json.dumps(json.loads(sh([DVC, "exp", "show", "--json"], repo).stdout))  # still listed


def readme_line(command: str) -> str:
    """`command` as the README's experiments block has it (so the README cannot drift from what is tested)."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## Experiments"):]
    assert command in block, f"the README's experiments block no longer says `{command}`"
    return command.replace("dvc ", f"{DVC} ", 1) if command.startswith("dvc ") else command.replace("&& dvc ",
                                                                                                     f"&& {DVC} ")


def experiments_in(shown):
    """(params, metrics) of every experiment in `dvc exp show --json` (baselines hold `experiments` ranges)."""
    found = []
    for baseline in shown:
        for exp_range in baseline.get("experiments") or []:
            for state in exp_range["revs"]:
                data = state.get("data") or {}
                params = data.get("params", {}).get("params.yaml", {}).get("data", {})
                metrics = {name: value.get("data", {}) for name, value in (data.get("metrics") or {}).items()}
                found.append((params, metrics))
    return found


def test_queued_sweep_runs_every_combination_with_the_queued_code(repo):
    """Each queued run ends with our metrics in `dvc exp show`, computed by the code of its own commit.

    A module is edited only for the queue: the workspace is reverted before the queue starts, so the
    marker metric can only come from the queued copy's code, never from the workspace's.
    """
    evaluate = repo / "imgclf/evaluate.py"
    original = evaluate.read_text()
    marked = original.replace("    return Evaluation(metrics,",
                              "    metrics[\"queued_code\"] = 1.0\n    return Evaluation(metrics,")
    assert marked != original
    evaluate.write_text(marked)
    try:
        sh([DVC, "exp", "run", "--queue", "-S", "train.lr=0.001,0.0005"], repo)
    finally:
        evaluate.write_text(original)
    sh([DVC, "queue", "start"], repo)
    deadline = time.time() + 900
    while time.time() < deadline:
        status = sh([DVC, "queue", "status"], repo).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    assert "Failed" not in status, status
    runs = experiments_in(json.loads(sh([DVC, "exp", "show", "--json"], repo).stdout))
    grid = {p["train"]["lr"]: m for p, m in runs if p["train"]["lr"] in (0.001, 0.0005)}
    assert set(grid) == {0.001, 0.0005}  # besides the earlier lr=0.01 experiment
    for metrics in grid.values():
        assert {"f1_weighted", "f1_macro", "ece"} <= set(metrics["reports/metrics.json"])
        assert metrics["reports/metrics.json"]["queued_code"] == 1.0
        assert {"best_epoch", "epochs_run"} <= set(metrics["dvclive/metrics.json"])
    assert "queued_code" not in evaluate.read_text()


def test_bad_param_stops_the_pipeline_with_one_line_that_says_how_to_recover(repo):
    # From the last commit (an earlier test left an uncommitted experiment in the workspace): git keeps
    # the `cache: false` outputs of committed runs only.
    sh(["git", "reset", "-q", "--hard"], repo)
    sh([DVC, "checkout", "-f"], repo)
    assert stale_stages(repo) == []
    original = (repo / "params.yaml").read_text()
    model = (repo / "models/model.pt").read_bytes()
    try:
        set_params(repo, {"train": {"lr": -1}})
        result = sh([DVC, "repro", "train"], repo, check=False)
        assert result.returncode != 0
        line = next(x for x in (result.stderr + result.stdout).splitlines() if x.startswith("error: "))
        assert line == ("error: params.yaml: train.lr: must be > 0, got -1.0 (DVC removed this stage's previous "
                        "outputs before running it: `dvc checkout train` restores models/model.pt from DVC's cache, "
                        "and `git restore dvclive` the rest)")
        assert "Traceback" not in result.stderr + result.stdout
        assert not (repo / "models/model.pt").exists()  # DVC's rule: outputs go before the stage runs
    finally:
        (repo / "params.yaml").write_text(original)
    sh([DVC, "checkout", "train"], repo)  # what the line says: the cached outputs,
    assert (repo / "models/model.pt").read_bytes() == model
    assert stale_stages(repo) == ["train"]  # ... but dvclive/ (cache: false) is still gone,
    sh(["git", "restore", "dvclive"], repo)  # ... and git has it
    assert stale_stages(repo) == [], sh([DVC, "status"], repo).stdout


def test_misspelt_experiment_key_fails_clearly(repo):
    result = sh([DVC, "exp", "run", "-S", "train.lrr=0.1"], repo, check=False)
    assert result.returncode != 0
    assert "train.lrr" in result.stderr + result.stdout


def test_repro_on_a_dirty_folder_trains_on_the_good_images_and_reports_the_rest(tmp_path):
    from tests.conftest import write_png
    from tests.unit.test_bad_images import encoded, mode_images, photo, png_header_only

    repo = tmp_path / "dirty"
    repo.mkdir()
    pipeline = yaml.safe_load(PIPELINE.read_text())
    del pipeline["stages"]["demo"]  # the user's own data instead of the demo
    new_project(repo, pipeline)
    set_params(repo, {**TINY, "train": {**TINY["train"], "epochs": 1}})

    raw = repo / "data/raw"
    for k, label in enumerate(("cat", "dog", "owl")):
        for i in range(8):
            write_png(raw / label / f"{label}{i}.png", 100 * k + i)
    bad = {"cat/empty.jpg": b"", "cat/page.jpg": b"<html>moved</html>",
           "dog/half.jpg": encoded(photo((128, 128)), "JPEG")[:2000],
           "dog/bomb.png": None, "owl/notes.txt": b"field notes"}
    for name, data in bad.items():
        if data is None:
            png_header_only(raw / name, 100_000, 100_000)
        else:
            (raw / name).write_bytes(data)
    for name, data in mode_images():  # every mode, in one class
        (raw / "owl" / name).write_bytes(data)
    (raw / "cat" / "cat0_copy.png").write_bytes((raw / "cat/cat0.png").read_bytes())  # duplicate in class
    (raw / "dog" / "looks_like_owl.png").write_bytes((raw / "owl/owl3.png").read_bytes())  # conflict
    write_png(raw / ".ipynb_checkpoints" / "x.png", 5)
    write_png(raw / "__MACOSX" / "cat" / "x.png", 6)
    predict = repo / "data/predict"
    for i in range(3):
        write_png(predict / f"new{i}.png", 50 + i)
    (predict / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (predict / "cmyk.jpg").write_bytes(mode_images()[0][1])

    sh([DVC, "repro"], repo)

    classes = json.loads((repo / "data/split/classes.json").read_text())
    assert classes == ["cat", "dog", "owl"]
    rejected = pd.read_csv(repo / "data/split/rejected.csv")
    reasons = {Path(p).relative_to(raw).as_posix() if Path(p).is_relative_to(raw) else p: r
               for p, r in zip(rejected["path"].map(lambda p: repo / p), rejected["reason"])}
    assert reasons["cat/empty.jpg"] == "empty file"
    assert reasons["cat/page.jpg"].startswith("UnidentifiedImageError")
    assert "truncated" in reasons["dog/half.jpg"].lower()
    assert reasons["dog/bomb.png"].startswith("DecompressionBombError")
    assert reasons["owl/notes.txt"] == "unsupported file extension"
    assert reasons["dog/looks_like_owl.png"].startswith("label conflict")
    assert reasons["owl/owl3.png"].startswith("label conflict")
    assert reasons[".ipynb_checkpoints"] == reasons["__MACOSX"] == "hidden or system folder, skipped"
    assert len(reasons) == 9
    splits = pd.concat(pd.read_csv(repo / f"data/split/{n}.csv").assign(split=n) for n in ("train", "val", "test"))
    modes = {Path(p).name for p in splits["path"]} & {name for name, _ in mode_images()}
    assert modes == {name for name, _ in mode_images()}  # every mode was accepted and trained on
    where = dict(zip(splits["path"].map(lambda p: Path(p).name), splits["split"]))
    assert where["cat0.png"] == where["cat0_copy.png"]

    predictions = pd.read_csv(repo / "reports/predictions.csv", keep_default_na=False)
    status = dict(zip(predictions["path"].map(lambda p: Path(p).name), predictions["status"]))
    assert status["broken.jpg"].startswith("error:") and status["cmyk.jpg"] == "ok"
    assert sum(s == "ok" for s in status.values()) == 4
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert set(metrics["classes"]) == {"cat", "dog", "owl"}
