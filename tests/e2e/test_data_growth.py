"""Data that grows: through `dvc add` + `dvc repro`, no earlier image changes split, and only new files are decoded."""

import json

import pandas as pd
import yaml

from imgclf.template import PIPELINE
from tests.conftest import DVC, TINY, new_project, set_params, sh, write_png


def splits_of(repo) -> dict[str, str]:
    """{path: split} from the split CSVs."""
    return {path: name for name in ("train", "val", "test")
            for path in pd.read_csv(repo / f"data/split/{name}.csv", dtype=str)["path"]}


def test_growing_the_data_by_ten_percent_moves_no_earlier_image(tmp_path):
    repo = tmp_path / "grow"
    repo.mkdir()
    pipeline = yaml.safe_load(PIPELINE.read_text())
    del pipeline["stages"]["demo"]  # your own images, tracked with `dvc add`, as the README says
    new_project(repo, pipeline)
    set_params(repo, {**TINY, "train": {**TINY["train"], "epochs": 1}})
    raw = repo / "data/raw"
    for k, label in enumerate(("cat", "dog", "owl")):
        for i in range(40):
            write_png(raw / label / f"{label}{i:03d}.png", 1000 * k + i)
    write_png(repo / "data/predict/new.png", 7)
    sh([DVC, "add", "data/raw", "data/predict"], repo)
    sh([DVC, "repro"], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "first data"], repo)
    before = splits_of(repo)

    for k, label in enumerate(("cat", "dog", "owl")):
        for i in range(40, 44):  # +10% per class
            write_png(raw / label / f"{label}{i:03d}.png", 1000 * k + i)
    sh([DVC, "add", "data/raw"], repo)
    result = sh([DVC, "repro"], repo)
    assert "validate images: 12 new or changed, 120 unchanged" in result.stdout + result.stderr
    after = splits_of(repo)
    assert len(after) == 132 and all(after[path] == split for path, split in before.items())
    old_test = {p for p, s in before.items() if s == "test"}
    assert old_test <= {p for p, s in after.items() if s == "test"}

    # docs/data.md: the new model scored on exactly the old test images.
    sh([DVC, "get", ".", "data/split", "--rev", "HEAD", "-o", "old_split"], repo)
    sh(["python", "stages/evaluate.py", "--split", "old_split", "--metrics", "old/metrics.json", "--samples",
        "old/test_predictions.csv", "--report", "old/report.txt", "--per-class", "old/per_class.csv",
        "--reliability", "old/reliability", "--mistakes", "old/mistakes.png"], repo)
    metrics = json.loads((repo / "old/metrics.json").read_text())
    assert sum(c["support"] for c in metrics["classes"].values()) == len(old_test)
