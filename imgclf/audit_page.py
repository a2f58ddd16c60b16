"""The audit's one offline page, reports/audit/index.html: thumbnails with their paths, worst first, per finding.

Sections: label issues, near-duplicates (leaks across train / val / test first), outliers, the test set's
mistakes (evaluate's test_predictions.csv) and the predictions to review (predict's predictions.csv:
unknown, then uncertain). Every thumbnail is inside the page as a data: URI and nothing else is loaded,
so the file opens from disk, offline, and can be mailed or archived alone. Each section is a <div id>
directly in <body>, as on the plots page, so one browser check serves both.
"""

from __future__ import annotations

import base64
import html
import io
import os
from typing import Iterable

import pandas as pd
from PIL import Image

from imgclf.images import load_image

THUMB = 128  # the longer side of a thumbnail, pixels
STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.4em}"
    "h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}.grid{display:flex;flex-wrap:wrap;gap:10px}"
    ".card{width:150px;font-size:11px;word-break:break-all}"
    ".pair{display:flex;gap:4px;width:300px;font-size:11px;word-break:break-all}.pair>div{width:148px}"
    "img{display:block;max-width:128px;max-height:128px;border:1px solid #ddd}"
    ".leak{color:#fff;background:#c0392b;padding:0 4px;border-radius:3px}.note{color:#666}"
    "table.summary td{padding:2px 12px 2px 0}")


def thumbnail(path: str) -> str:
    """A data: URI of the image at `path`, its longer side THUMB pixels (a grey square if it cannot be read now)."""
    try:
        image = load_image(path, draft=lambda size: (THUMB * 2, THUMB * 2))
        image.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
    except Exception:  # moved or changed since the audit read it: the path still says which
        image = Image.new("RGB", (THUMB, THUMB), (200, 200, 200))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _card(path: str, lines: Iterable[str]) -> str:
    text = "<br>".join(lines)
    return (f'<div class="card"><img src="{thumbnail(path)}" alt="{html.escape(path)}">{text}<br>'
            f'<span class="note">{html.escape(path)}</span></div>')


def _section(anchor: str, title: str, cards: list[str], total: int, source: str) -> str:
    more = f' <span class="note">(the first {len(cards)} of {total}; all in {source})</span>' if total > len(cards) \
        else ""
    body = "".join(cards) if cards else '<p class="note">none</p>'
    return f'<div id="{anchor}"><h2>{html.escape(title)} ({total}){more}</h2><div class="grid">{body}</div></div>'


def _read(path: str | os.PathLike | None) -> pd.DataFrame:
    """A CSV of another stage (test predictions, predictions), or an empty frame when it is missing."""
    try:
        return pd.read_csv(path, keep_default_na=False) if path else pd.DataFrame()
    except (OSError, pd.errors.EmptyDataError):
        return pd.DataFrame()


def review_rows(predictions: pd.DataFrame) -> pd.DataFrame:
    """predict's rows to look at: unknown (farthest first), then uncertain (least confident first)."""
    if predictions.empty or "status" not in predictions:
        return predictions
    unknown = predictions[predictions["status"] == "unknown"]
    if "distance" in unknown:
        unknown = unknown.assign(_d=pd.to_numeric(unknown["distance"], errors="coerce")).sort_values("_d",
                                                                                                      ascending=False)
    uncertain = predictions[predictions["status"] == "uncertain"].sort_values("confidence")
    return pd.concat([unknown, uncertain])


def render(result, test_predictions: str | os.PathLike | None, predictions: str | os.PathLike | None,
           limit: int) -> str:
    """The page for an audit.AuditResult, with evaluate's and predict's rows to review."""
    summary = result.summary
    rows = "".join(f"<tr><td>{html.escape(k.replace('_', ' '))}</td><td>{v}</td></tr>" for k, v in summary.items())
    sections = []
    issues = result.label_issues.head(limit)
    sections.append(_section("label-issues", "Likely label errors, worst first", [
        _card(r.path, [f"labelled <b>{html.escape(str(r.label))}</b>, looks like <b>{html.escape(str(r.suggested))}"
                       f"</b>", f"score {r.score:.3f}"]) for r in issues.itertuples(index=False)],
        len(result.label_issues), "label_issues.csv"))
    pairs = []
    for r in result.near_duplicates.head(limit).itertuples(index=False):
        badge = f' <span class="leak">leak {r.split_a}/{r.split_b}</span>' if r.split_a != r.split_b else ""
        pairs.append(f'<div class="pair"><div><img src="{thumbnail(r.path_a)}" alt="">{html.escape(r.path_a)} '
                     f'({r.split_a})</div><div><img src="{thumbnail(r.path_b)}" alt="">{html.escape(r.path_b)} '
                     f'({r.split_b}){badge}<br>distance {r.distance:.4f}</div></div>')
    sections.append(_section("near-duplicates", "Near-duplicates, leaks across splits first", pairs,
                             len(result.near_duplicates), "near_duplicates.csv"))
    sections.append(_section("outliers", "Outliers, most unlike the rest first", [
        _card(r.path, [f"score {r.score:.4f}"]) for r in result.outliers.head(limit).itertuples(index=False)],
        len(result.outliers), "outliers.csv"))
    tested = _read(test_predictions)
    mistakes = tested[tested["actual"] != tested["predicted"]].sort_values("confidence", ascending=False) \
        if not tested.empty else tested
    sections.append(_section("test-mistakes", "Test set mistakes, most confident first", [
        _card(r.path, [f"actual <b>{html.escape(str(r.actual))}</b>, predicted <b>{html.escape(str(r.predicted))}"
                       f"</b>", f"confidence {float(r.confidence):.3f}"])
        for r in mistakes.head(limit).itertuples(index=False)], len(mistakes), "reports/test_predictions.csv"))
    review = review_rows(_read(predictions))
    sections.append(_section("to-review", "Predictions to review: unknown (of no class), then uncertain", [
        _card(r.path, [f"<b>{html.escape(str(r.status))}</b>: {html.escape(str(r.prediction))} "
                       f"({float(r.confidence):.3f})" + (f", distance {r.distance}" if getattr(r, "distance", "")
                                                          not in ("", None) else "")])
        for r in review.head(limit).itertuples(index=False)], len(review), "reports/predictions.csv"))
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>Data audit</title><style>{STYLE}</style>'
            f'</head><body><h1>Data audit</h1><p>Features from {html.escape(result.backbone)}. The audit changes '
            f'nothing: docs/data.md says how to act on it.</p><table class="summary">{rows}</table>'
            f'{"".join(sections)}</body></html>\n')
