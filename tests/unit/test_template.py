"""The workspace's dvc.yaml and params.yaml against the pipeline as shipped (imgclf/template), read-only.

Tests and benchmarks build their projects from the template, never from the workspace's files, which
belong to the user. These checks hold in the project's own repository and in a user's workspace alike
(demo removed, params tuned): every shipped stage is there unchanged, and every params section has
the keys the code reads. Values are the user's to choose.
"""

from pathlib import Path

import pytest
import yaml

from imgclf.own_data import remove_block
from imgclf.template import PARAMS, PIPELINE

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = yaml.safe_load(PIPELINE.read_text())
SHIPPED_PARAMS = yaml.safe_load(PARAMS.read_text())


def keys(section):
    """The nested key structure of a params section."""
    return {k: keys(v) if isinstance(v, dict) else None for k, v in section.items()}


def test_workspace_pipeline_has_every_shipped_stage_unchanged():
    workspace = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in SHIPPED["stages"].items():
        if name == "demo" and name not in workspace:
            continue  # removed by `python -m imgclf.own_data`
        assert workspace.get(name) == stage, f"dvc.yaml: stage {name} differs from {PIPELINE}"
    assert {k: v for k, v in yaml.safe_load((ROOT / "dvc.yaml").read_text()).items() if k != "stages"} == \
        {k: v for k, v in SHIPPED.items() if k != "stages"}


def test_workspace_params_have_the_shipped_keys():
    workspace = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in SHIPPED_PARAMS.items():
        if section == "demo" and section not in workspace:
            continue
        assert keys(workspace[section]) == keys(values), f"params.yaml: section {section}"


@pytest.mark.parametrize("source", [PIPELINE, PARAMS])
def test_removing_the_demo_block_leaves_the_rest_byte_for_byte(source):
    text = source.read_text()
    indent = "  " if source == PIPELINE else ""
    removed, found = remove_block(text, "demo", indent)
    assert found and "demo" not in yaml.safe_load(removed).get("stages", yaml.safe_load(removed))
    # Only the demo's lines went: every other line is still there, in order.
    kept = iter(text.splitlines())
    assert all(any(line == other for other in kept) for line in removed.splitlines())
    assert len(text.splitlines()) - len(removed.splitlines()) < 30
