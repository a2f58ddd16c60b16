"""What predict needs of a trained model, whichever runtime runs it (PyTorch for model.pt, ONNX Runtime for model.onnx).

No torch here: the ONNX predictor installs without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from imgclf.images import Geometry


@dataclass
class Classifier:
    """Classes, the images' geometry, and `outputs`: a uint8 batch's calibrated probabilities and each image's distance
    to the training images (novelty.py; None for a model written before distances were kept), with `reference`, the
    validation images' distances, sorted, where the `unknown` threshold comes from."""

    classes: list[str]
    geometry: Geometry
    outputs: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]
    reference: Sequence[float] | None = None

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities of a uint8 N x 3 x I x I batch."""
        return self.outputs(images)[0]

    def unknown_threshold(self, quantile: float | None) -> float:
        """The distance beyond which an image is `unknown`: the `quantile` quantile of the reference distances once
        those beyond Tukey's far-out fence (Q3 + 3 IQR) are set aside, so that an image of no class among the
        validation images does not widen what counts as normal (measured in docs/data.md); infinity when
        `quantile` is None or the model keeps no distances: nothing is unknown."""
        if quantile is None or not self.reference:
            return float("inf")
        values = np.asarray(self.reference, dtype=np.float64)
        first, third = np.percentile(values, [25, 75])
        return float(np.quantile(values[values <= third + 3 * (third - first)], quantile))
