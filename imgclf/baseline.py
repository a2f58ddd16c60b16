"""The class-prior baseline a trained model must beat: a model no better than it learned nothing."""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Fewer validation images than this cannot tell a model that learned little from one that learned nothing.
MIN_IMAGES = 20


def prior_loss(train_targets: Sequence[int], eval_targets: Sequence[int], num_classes: int) -> float:
    """Cross-entropy on `eval_targets` of always predicting the training set's class frequencies."""
    counts = np.bincount(np.asarray(train_targets, dtype=np.int64), minlength=num_classes).astype(np.float64)
    # A class absent from training gets the probability of half an image, not log(0).
    prior = np.maximum(counts, 0.5) / np.maximum(counts, 0.5).sum()
    return float(-np.log(prior[np.asarray(eval_targets, dtype=np.int64)]).mean())


def learned_nothing(loss: float, prior: float, predictions: Sequence[int], targets: Sequence[int],
                    classes: Sequence[str]) -> str | None:
    """Why a model's predictions on a labelled set show it learned nothing, or None if they do not.

    Either its loss (at the temperature that minimises it) is no better than the class prior's, or it
    gives every image the same class (while the set holds several).
    """
    predictions = np.asarray(predictions)
    several = len(np.unique(np.asarray(targets))) > 1
    if several and len(predictions) and (predictions == predictions[0]).all():
        name = classes[int(predictions[0])]
        return f"it predicts class '{name}' for every one of the {len(predictions)} images"
    if loss >= prior:
        return (f"its loss {loss:.4f} (at its fitted temperature) is no better than {prior:.4f}, the loss of "
                f"always predicting the training set's class frequencies")
    return None
