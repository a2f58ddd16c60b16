"""End to end: the audit stage in the default pipeline, offline on the demo: its files, its DVC metrics, and its page,
drawn by headless Chromium from disk with every network address unreachable."""

import json

import pandas as pd
import pytest

from tests.conftest import DVC, copy_project, sh
from tests.plots_page import chromium, remote_references, render_offline


@pytest.fixture(scope="module")
def project(demo_project, tmp_path_factory):
    """A copy of the session's demo project after `dvc repro` (the browser check writes beside the page)."""
    return copy_project(demo_project, tmp_path_factory.mktemp("audit") / "project")


def test_the_audit_writes_its_lists_and_its_summary_is_a_dvc_metric(project):
    audit = project / "reports/audit"
    assert list(pd.read_csv(audit / "label_issues.csv").columns) == ["path", "label", "suggested", "score"]
    assert list(pd.read_csv(audit / "near_duplicates.csv").columns) == ["path_a", "path_b", "split_a", "split_b",
                                                                         "distance"]
    assert list(pd.read_csv(audit / "outliers.csv").columns) == ["path", "score"]
    summary = json.loads((audit / "summary.json").read_text())
    metrics = json.loads(sh([DVC, "metrics", "show", "--json"], project).stdout)
    shown = next(iter(metrics.values()))["data"]["reports/audit/summary.json"]["data"]
    assert shown == summary and summary["images"] == sum(
        len((project / f"data/split/{name}.csv").read_text().splitlines()) - 1 for name in ("train", "val", "test"))


def test_the_audit_page_opens_offline_and_draws_every_thumbnail(project, tmp_path):
    browser = chromium()
    if not browser:
        pytest.skip("no Chromium on PATH (.ci/run installs it): the audit page's offline rendering is not checked")
    page = project / "reports/audit/index.html"
    assert remote_references(page.read_text(encoding="utf-8")) == []
    found = render_offline(page, tmp_path / "profile", browser)
    sections = {s["id"]: s for s in found["plots"]}
    assert list(sections) == ["label-issues", "near-duplicates", "outliers", "test-mistakes", "to-review"]
    shown = [s for s in sections.values() if s["images"]]
    assert shown and all(s["drawn"] and s["decoded"] == s["images"] for s in shown), sections
    assert found["errors"] == [] and found["remote"] == [], found
