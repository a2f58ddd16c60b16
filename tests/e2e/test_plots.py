"""End to end: `dvc plots show` on a tiny repro works offline, with the project's vendored page template.

The page DVC writes loads nothing remote, and headless Chromium with every network address unreachable draws
each of dvc.yaml's nine plots from it. The same browser check run on DVC's default page (Vega from a CDN)
finds the Vega plots blank, which shows that the check can fail.
"""

from pathlib import Path

import pytest
import yaml

from imgclf.template import PIPELINE
from tests.conftest import DVC, copy_project, sh
from tests.plots_page import chromium, remote_references, render_offline

ROOT = Path(__file__).resolve().parents[2]
PLOTS = yaml.safe_load(PIPELINE.read_text())["plots"]


@pytest.fixture(scope="module")
def repo(demo_project, tmp_path_factory):
    """A clone-like project (the repository's .dvc/config and .dvc/plots) after `dvc repro` on tiny params: every
    file the plots read. A copy of the session's demo project, as `dvc plots show` writes into it."""
    return copy_project(demo_project, tmp_path_factory.mktemp("plots") / "project")


@pytest.fixture(scope="module")
def page(repo) -> Path:
    """dvc_plots/index.html as `dvc plots show` writes it with the project's configuration."""
    sh([DVC, "plots", "show"], repo)
    return repo / "dvc_plots" / "index.html"


@pytest.fixture(scope="module")
def cdn_page(repo, tmp_path_factory) -> Path:
    """The same plots on DVC's own default page, which loads vega, vega-lite and vega-embed from a CDN."""
    from dvc_render.html import PAGE_HTML

    default = tmp_path_factory.mktemp("default") / "page.html"
    default.write_text(PAGE_HTML, encoding="utf-8")
    sh([DVC, "plots", "show", "--html-template", str(default), "-o", "cdn_plots"], repo)
    return repo / "cdn_plots" / "index.html"


@pytest.fixture(scope="module")
def browser():
    found = chromium()
    if not found:
        pytest.skip("no Chromium on PATH (Debian: apt-get install chromium; .ci/run installs it): "
                    "the offline rendering of the plots page is not checked")
    return found


def test_plots_page_references_no_remote_url(page, cdn_page):
    text = page.read_text(encoding="utf-8")
    assert remote_references(text) == []
    assert "cdn.jsdelivr.net" not in text
    # Every plot of dvc.yaml is on the page: eight Vega specs and the mistakes image, copied next to it.
    assert text.count("vegaEmbed('#") == len(PLOTS) - 1 == 8
    assert 'src="static/workspace_reports_mistakes.png"' in text
    assert (page.parent / "static" / "workspace_reports_mistakes.png").is_file()
    # The check is not vacuous: on DVC's default page it finds the CDN scripts.
    assert len(remote_references(cdn_page.read_text(encoding="utf-8"))) == 3


def test_every_plot_renders_offline_in_chromium(browser, page, tmp_path):
    found = render_offline(page, tmp_path / "profile", browser)
    plots = found["plots"]
    assert len(plots) == len(PLOTS) == 9, plots
    assert [p["id"] for p in plots if not p["drawn"]] == [], plots
    vega = [p for p in plots if not p["images"]]
    assert len(vega) == 8 and all(p["canvases"] + p["svgs"] >= 1 and p["painted"] > 0 for p in vega), vega
    assert found["errors"] == [] and found["remote"] == [], found


def test_render_check_fails_on_the_cdn_page_offline(browser, cdn_page, tmp_path):
    """What the page looked like before the vendored template: offline, the libraries fail and no Vega plot draws."""
    found = render_offline(cdn_page, tmp_path / "profile", browser)
    assert len(found["plots"]) == 9
    assert [p["id"] for p in found["plots"] if p["drawn"]] == ["reports_mistakes_png"], found["plots"]
    assert any("cdn.jsdelivr.net" in error for error in found["errors"]), found["errors"]
