"""A team shares the project through a real DVC remote (a local directory) and a git remote."""

import json

import yaml

from tests.conftest import DVC, copy_project, sh


def test_push_clone_pull_gives_an_up_to_date_pipeline_and_the_same_model(tmp_path, demo_project):
    origin, storage, repo, clone = (tmp_path / n for n in ("origin.git", "storage", "alice", "bob"))
    sh(["git", "init", "-q", "--bare", str(origin)], tmp_path)
    copy_project(demo_project, repo)  # the pipeline after a full `dvc repro` on tiny params
    sh([DVC, "remote", "add", "-d", "storage", str(storage)], repo)
    assert "Running stage" not in sh([DVC, "repro"], repo).stdout  # the copy is up to date
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "pipeline and results"], repo)
    sh(["git", "remote", "add", "origin", str(origin)], repo)
    sh(["git", "push", "-q", "origin", "HEAD:main"], repo)
    sh([DVC, "push"], repo)
    assert not sh(["git", "status", "--porcelain"], repo).stdout.strip()  # everything needed is committed

    sh(["git", "clone", "-q", "-b", "main", str(origin), str(clone)], tmp_path)
    sh([DVC, "pull"], clone)
    assert "up to date" in sh([DVC, "status"], clone).stdout
    assert "Running stage" not in sh([DVC, "repro"], clone).stdout
    assert (clone / "models/model.pt").read_bytes() == (repo / "models/model.pt").read_bytes()
    assert (clone / "reports/metrics.json").read_text() == (repo / "reports/metrics.json").read_text()

    # An experiment travels the same way: its git refs by `dvc exp push`, its data by the DVC remote.
    sh([DVC, "exp", "run", "-n", "faster-lr", "-S", "train.lr=0.002"], repo)
    sh([DVC, "exp", "push", "origin", "faster-lr"], repo)
    sh([DVC, "exp", "pull", "origin", "faster-lr"], clone)
    shown = json.loads(sh([DVC, "exp", "show", "--json"], clone).stdout)
    assert "faster-lr" in json.dumps(shown) and "0.002" in json.dumps(shown)
    sh([DVC, "exp", "apply", "faster-lr"], clone)
    assert yaml.safe_load((clone / "params.yaml").read_text())["train"]["lr"] == 0.002
    assert "Running stage" not in sh([DVC, "repro"], clone).stdout  # its outputs came from the remote
