"""The decode store through the real `dvc`: only new images are decoded (also in a queued experiment), old shards
keep their file (one inode: workspace, DVC's cache and the pool), a lost pool is refilled from DVC's cache, and
`dvc status` stays exact."""

import json
import re
import shutil

import pandas as pd
import yaml

from imgclf.template import PIPELINE
from tests.conftest import DVC, ROOT, TINY, new_project, set_params, sh, write_png


def decode_summary(output: str) -> tuple[int, int]:
    """(decoded, reused) from the decode stage's summary line."""
    match = re.search(r"decode: (\d+) new images decoded, (\d+) reused", output)
    assert match, output
    return int(match.group(1)), int(match.group(2))


def train_val(repo) -> set[str]:
    """Paths in the train and val split CSVs: what the store holds."""
    return {p for name in ("train", "val") for p in pd.read_csv(repo / f"data/split/{name}.csv", dtype=str)["path"]}


def shards(repo) -> dict[str, tuple[int, int]]:
    """{shard file name: (inode, link count)} of the workspace store."""
    return {p.name: (p.stat().st_ino, p.stat().st_nlink) for p in (repo / "data/decoded/shards").iterdir()}


def status(repo) -> dict:
    """`dvc status` of the decode stage and the stages it depends on."""
    return json.loads(sh([DVC, "status", "--with-deps", "decode", "--json"], repo).stdout)


def add_images(repo, start: int, stop: int) -> None:
    """PNGs start..stop-1 in each of the three classes."""
    for k, label in enumerate(("cat", "dog", "owl")):
        for i in range(start, stop):
            write_png(repo / "data/raw" / label / f"{label}{i:03d}.png", 1000 * k + i)


def test_adding_images_decodes_only_them_through_dvc_and_a_queued_experiment(tmp_path):
    repo = tmp_path / "store"
    repo.mkdir()
    pipeline = yaml.safe_load(PIPELINE.read_text())
    del pipeline["stages"]["demo"]  # your own images, tracked with `dvc add`
    new_project(repo, pipeline)
    shutil.copy(ROOT / ".dvc/config", repo / ".dvc/config")  # cache.type as the project ships it
    set_params(repo, TINY)
    add_images(repo, 0, 30)
    write_png(repo / "data/predict/new.png", 7)
    sh([DVC, "add", "data/raw", "data/predict"], repo)
    first = sh([DVC, "repro", "decode"], repo)
    assert decode_summary(first.stdout) == (len(train_val(repo)), 0)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "first data"], repo)
    before, old_paths = shards(repo), train_val(repo)
    # Stored once: the workspace file, DVC's cache object and the pool's link are one inode.
    assert before and all(links == 3 for _, links in before.values())

    add_images(repo, 30, 33)  # +10%
    sh([DVC, "add", "data/raw"], repo)
    assert "split" in status(repo)  # then the split's CSVs change, and with them the decode stage's deps
    grown = sh([DVC, "repro", "decode"], repo)
    assert decode_summary(grown.stdout) == (len(train_val(repo) - old_paths), len(old_paths))
    after = shards(repo)
    assert all(after[name][0] == inode for name, (inode, _) in before.items())  # the same files, not copies
    assert status(repo) == {}
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "+10%"], repo)

    set_params(repo, {"decode": {"storage": "jpeg"}})  # a decode param: exactly the decode stage is stale
    assert set(status(repo)) == {"decode"}
    sh(["git", "checkout", "params.yaml"], repo)
    assert status(repo) == {}

    # A queued experiment runs in a temporary copy of the workspace: it finds the shards in the pool.
    present = len(train_val(repo))
    add_images(repo, 33, 35)
    sh([DVC, "add", "data/raw"], repo)
    sh([DVC, "exp", "run", "--queue", "-n", "more", "decode"], repo)
    sh([DVC, "queue", "start"], repo)
    logs = sh([DVC, "queue", "logs", "-f", "more"], repo).stdout
    decoded, reused = decode_summary(logs)
    assert decoded <= 6 and reused == present

    # Removing images decodes nothing, even without the pool (a fresh clone after `dvc pull` has none): the
    # stage links the last dvc.lock's shards in from DVC's cache.
    shutil.rmtree(repo / ".dvc/cache/imgclf-decoded")
    sh(["git", "checkout", "data/raw.dvc"], repo)
    sh([DVC, "checkout", "data/raw"], repo)
    for label in ("cat", "dog", "owl"):
        (repo / "data/raw" / label / f"{label}000.png").unlink()
    sh([DVC, "add", "data/raw"], repo)
    shrunk = sh([DVC, "repro", "decode"], repo)
    assert decode_summary(shrunk.stdout)[0] == 0
