"""The evaluate stage's plots: per-class scores and the worst-mistakes gallery (`dvc plots` in dvc.yaml)."""

from __future__ import annotations

import os

import pandas as pd
from PIL import Image, ImageDraw, ImageFont, ImageOps

from imgclf.artifacts import atomic_open
from imgclf.images import load_image

THUMB = 112  # gallery tile side in pixels


def per_class_frame(metrics: dict) -> pd.DataFrame:
    """One row per class: class, precision, recall, f1, support (the per-class F1 bar chart)."""
    return pd.DataFrame([{"class": name, **scores} for name, scores in metrics["classes"].items()],
                        columns=["class", "precision", "recall", "f1", "support"])


def worst_mistakes(samples: pd.DataFrame, limit: int = 16) -> pd.DataFrame:
    """The wrong predictions the model was surest of (`path,actual,predicted,confidence` rows), surest first."""
    wrong = samples[samples["actual"] != samples["predicted"]]
    return wrong.sort_values(["confidence", "path"], ascending=[False, True]).head(limit)


def mistakes_gallery(samples: pd.DataFrame, limit: int = 16, columns: int = 4) -> Image.Image:
    """A PNG-ready grid of the worst test mistakes: image, true label, predicted label and confidence."""
    rows = worst_mistakes(samples, limit)
    font = ImageFont.load_default()
    caption = 30
    if rows.empty:
        canvas = Image.new("RGB", (columns * THUMB, 40), "white")
        ImageDraw.Draw(canvas).text((8, 12), "no mistakes on the test set", fill="black", font=font)
        return canvas
    n_rows = -(-len(rows) // columns)
    canvas = Image.new("RGB", (columns * THUMB, n_rows * (THUMB + caption)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, row in enumerate(rows.itertuples(index=False)):
        x, y = (i % columns) * THUMB, (i // columns) * (THUMB + caption)
        try:
            # Scaled to fill the tile, up as well as down: a 32-pixel digit is unreadable at its own size.
            thumb = ImageOps.contain(load_image(row.path), (THUMB - 8, THUMB - 8), Image.Resampling.NEAREST)
        except Exception:  # the file changed since evaluation: show a grey tile, keep the caption
            thumb = Image.new("RGB", (THUMB - 8, THUMB - 8), (200, 200, 200))
        canvas.paste(thumb, (x + (THUMB - thumb.width) // 2, y + 4 + (THUMB - 8 - thumb.height) // 2))
        draw.text((x + 4, y + THUMB), f"true: {row.actual}", fill="black", font=font)
        draw.text((x + 4, y + THUMB + 13), f"pred: {row.predicted} ({row.confidence:.2f})", fill=(180, 0, 0),
                  font=font)
    return canvas


def save_png(image: Image.Image, path: str | os.PathLike) -> None:
    """Write a PNG atomically."""
    with atomic_open(path, "wb") as handle:
        image.save(handle, "PNG")
