"""The README's own-data commands, taken from README.md itself and run verbatim on a fresh project."""

import json
import re
import subprocess

import yaml

from imgclf.template import PIPELINE
from tests.conftest import DVC, ROOT, TINY, new_project, offline_hub_with_lite0, set_params, sh, write_png

PHOTOS, UNLABELED = "/path/to/your/photos", "/path/to/unlabeled"


def readme_block(heading: str) -> str:
    """The first ```bash block under the README's `heading`."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading):]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def test_the_readmes_own_data_commands_train_exactly_the_users_classes(tmp_path, monkeypatch):
    block = readme_block("## Using your own images")
    assert PHOTOS in block and UNLABELED in block  # the two paths a user replaces
    # `train.pretrained=default` downloads timm's weights once; here they are already in the Hub's cache.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(offline_hub_with_lite0(tmp_path / "hub")))

    # A fresh clone on which the user already ran the demo, and committed.
    repo = tmp_path / "project"
    repo.mkdir()
    new_project(repo, yaml.safe_load(PIPELINE.read_text()))
    (repo / "data").mkdir()
    (repo / "data/.gitignore").write_text("/raw\n/predict\n")
    set_params(repo, {**TINY, "train": {**TINY["train"], "epochs": 1}})
    sh([DVC, "repro", "demo"], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "the demo"], repo)

    photos = tmp_path / "my photos"  # a space in the path, as people's folders have
    for k, label in enumerate(("fern", "moss", "tulip")):
        for i in range(8):
            write_png(photos / label / f"IMG_{i:04d}.png", 90 * k + i)
    unlabeled = tmp_path / "nothing to classify yet"
    unlabeled.mkdir()
    script = block.replace(PHOTOS, f"'{photos}'").replace(UNLABELED, f"'{unlabeled}'")
    result = sh(["bash", "-euo", "pipefail", "-c", script], repo)
    assert "removed the `demo` stage" in result.stdout
    assert "params.yaml: train.arch resnet18 -> timm/tf_efficientnet_lite0" in result.stdout  # set before repro
    assert "features of the frozen backbone: " in result.stdout and "audit of " in result.stdout

    assert json.loads((repo / "data/split/classes.json").read_text()) == ["fern", "moss", "tulip"]
    assert not list((repo / "data/raw").glob("[0-9]"))  # no digit left behind
    assert "demo" not in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    assert "demo" not in yaml.safe_load((repo / "params.yaml").read_text())
    assert "demo" not in yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert (repo / "reports/predictions.csv").read_text().startswith("path,prediction,confidence,prob_fern")
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=repo,
                            capture_output=True, text=True, check=True).stdout
    assert status == ""  # the README's commit step left nothing out
    again = sh([DVC, "repro"], repo)
    assert "Running stage" not in again.stdout
