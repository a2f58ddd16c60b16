"""The page template of `dvc plots show` (.dvc/plots/offline.html): configured, pinned, and loading nothing remote.

The end-to-end half, with DVC's real page and headless Chromium offline, is tests/e2e/test_plots.py.
"""

import ast
import hashlib
import re
from pathlib import Path

import configobj
from dvc_render import render_html
from dvc_render.image import ImageRenderer
from dvc_render.vega import VegaRenderer

from tests.plots_page import remote_references

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / ".dvc" / "plots" / "offline.html"
INLINED = re.compile(
    r'<script data-library="([^"]+)" data-version="([^"]+)" data-sha256="([0-9a-f]{64})">(.*?)</script>', re.DOTALL)


def pinned_libraries() -> list[tuple[str, str, str, str]]:
    """LIBRARIES of .dvc/plots/build_template.py, read without importing it (no __pycache__ in the workspace)."""
    tree = ast.parse((ROOT / ".dvc" / "plots" / "build_template.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["LIBRARIES"]:
            return [tuple(entry) for entry in ast.literal_eval(node.value)]
    raise AssertionError("build_template.py has no LIBRARIES")


def test_dvc_config_names_the_offline_template():
    config = configobj.ConfigObj(str(ROOT / ".dvc" / "config"))
    # DVC resolves a relative html_template against the .dvc directory.
    assert (ROOT / ".dvc" / config["plots"]["html_template"]).resolve() == TEMPLATE
    assert TEMPLATE.is_file()


def test_template_inlines_the_pinned_builds_unmodified():
    page = TEMPLATE.read_text(encoding="utf-8")
    inlined = INLINED.findall(page)
    assert [(name, version, sha) for name, version, sha, _ in inlined] == \
        [(name, version, sha) for name, version, _, sha in pinned_libraries()]
    for name, version, sha, source in inlined:
        assert hashlib.sha256(source.encode("utf-8")).hexdigest() == sha, f"{name} differs from its npm build"
        assert f'"{version}"' in source, f"{name}'s build does not say it is {version}"
    assert page.count("<script") == len(inlined) == 3


def test_template_has_dvc_placeholders_but_not_the_cdn_scripts_one():
    page = TEMPLATE.read_text(encoding="utf-8")
    assert page.count("{plot_divs}") == 1 and page.count("{refresh_tag}") == 1
    assert "{scripts}" not in page  # where DVC would put its <script src="https://cdn.jsdelivr.net/...">


def renderers(tmp_path: Path):
    image = tmp_path / "mistakes.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    points = [{"step": 0, "loss": 1.0, "rev": "workspace", "filename": "loss.tsv", "field": "loss"},
              {"step": 1, "loss": 0.5, "rev": "workspace", "filename": "loss.tsv", "field": "loss"}]
    return [VegaRenderer(points, "Loss per epoch", template="linear", x="step", y="loss"),
            ImageRenderer([{"rev": "workspace", "src": str(image)}], "reports/mistakes.png")]


def test_page_from_the_template_loads_nothing_remote(tmp_path):
    page = Path(render_html(renderers(tmp_path), tmp_path / "plots" / "index.html", html_template=TEMPLATE))
    text = page.read_text(encoding="utf-8")
    assert "vegaEmbed('#Loss_per_epoch'" in text and 'src="../mistakes.png"' in text
    assert remote_references(text) == []


def test_remote_check_finds_dvcs_own_cdn_page(tmp_path):
    """Not vacuous: DVC's default page, from the same renderers, loads its three libraries from a CDN."""
    page = Path(render_html(renderers(tmp_path), tmp_path / "plots" / "index.html"))
    found = remote_references(page.read_text(encoding="utf-8"))
    assert [url for _, url in found] == ["https://cdn.jsdelivr.net/npm/vega@5.20.2",
                                         "https://cdn.jsdelivr.net/npm/vega-lite@5.2.0",
                                         "https://cdn.jsdelivr.net/npm/vega-embed@6.18.2"]


def test_remote_check_reads_markup_and_css_not_script_text():
    page = """<html><head><link rel="stylesheet" href="//fonts.example/a.css"><style>@import "https://x/y.css";
    body { background: url('http://x/bg.png') }</style>
    <script>var s = {"$schema": "https://vega.github.io/schema/vega-lite/v5.json"};</script></head>
    <body><img src="static/a.png"><img srcset="a.png 1x, HTTPS://x/b.png 2x"><div style="background:url(data:,x)">
    </div></body></html>"""
    assert remote_references(page) == [("<link href>", "//fonts.example/a.css"), ("<style>", "https://x/y.css"),
                                       ("<style>", "http://x/bg.png"), ("<img srcset>", "HTTPS://x/b.png")]


def test_every_plot_template_exists_and_the_epoch_axes_read_as_whole_epochs():
    """The per-epoch curves number epochs from 1 in whole steps, and the learning rate is on a log scale (a constant
    5e-4 on a linear axis had one tick, at 0); DVC finds the project's templates in .dvc/plots."""
    import json

    import yaml
    from dvc_render.vega_templates import TEMPLATES

    from imgclf.template import PIPELINE

    builtin = {template.DEFAULT_NAME for template in TEMPLATES}
    for plot in yaml.safe_load(PIPELINE.read_text())["plots"]:
        props = next(iter(plot.values())) if isinstance(plot, dict) else {}
        name = props.get("template") if isinstance(props, dict) else None
        assert name is None or name in builtin or (ROOT / ".dvc" / "plots" / f"{name}.json").is_file(), name
    for name in ("epochs", "learning_rate"):
        spec = json.loads((ROOT / ".dvc" / "plots" / f"{name}.json").read_text())
        assert spec["transform"] == [{"calculate": "toNumber(datum['<DVC_METRIC_X>']) + 1", "as": "epoch"}]
        assert spec["encoding"]["x"]["axis"] == {"tickMinStep": 1, "format": "d"}
    lr = json.loads((ROOT / ".dvc" / "plots" / "learning_rate.json").read_text())["encoding"]["y"]
    assert lr["scale"] == {"type": "log", "nice": True}
