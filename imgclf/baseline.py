"""What a trained model must beat to be kept: the class prior, and chance on a validation set of its size.

A model learned nothing when it gives every image the same class, when its calibrated loss is no
better than always predicting the training set's class frequencies, or when its accuracy on the
validation set is within what predictions that ignore the images reach by luck. The last is a
permutation test of the number of correct predictions (Ojala & Garriga 2010, "Permutation tests for
studying classifier performance", test 1): shuffling the labels against the predictions keeps how
often each class is predicted and how often it occurs, so a model that predicts the largest class
more often gains nothing from the imbalance. The best epoch is picked on that same validation set,
which favours a lucky epoch: the test allows for it by Bonferroni's bound, asking p <= ALPHA / epochs.
docs/training.md has the measurement (pure noise refused, real data kept).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# Fewer validation images than this cannot tell a model that learned little from one that learned nothing.
MIN_IMAGES = 20
# The chance a model that learned nothing is kept anyway, whatever the number of epochs it was picked from.
ALPHA = 0.01
# Above this many label shuffles x images the permutation distribution is replaced by its normal limit.
MONTE_CARLO_WORK = 60_000_000


def prior_loss(train_targets: Sequence[int], eval_targets: Sequence[int], num_classes: int) -> float:
    """Cross-entropy on `eval_targets` of always predicting the training set's class frequencies."""
    counts = np.bincount(np.asarray(train_targets, dtype=np.int64), minlength=num_classes).astype(np.float64)
    # A class absent from training gets the probability of half an image, not log(0).
    prior = np.maximum(counts, 0.5) / np.maximum(counts, 0.5).sum()
    return float(-np.log(prior[np.asarray(eval_targets, dtype=np.int64)]).mean())


def chance_p_value(predictions: Sequence[int], targets: Sequence[int], resolution: float = 1e-3) -> float:
    """One-sided p-value of the number of correct predictions if predictions and labels were independent.

    The labels are shuffled against the predictions (a fixed seed: the same answer every run) often
    enough to resolve p-values down to `resolution` / 10; when that would take more than
    MONTE_CARLO_WORK comparisons, the permutation distribution's exact mean and variance (Hoeffding's
    combinatorial central limit theorem) give a normal approximation with continuity correction.
    """
    predictions = np.asarray(predictions, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    n = len(targets)
    if n == 0:
        return 1.0
    correct = int((predictions == targets).sum())
    shuffles = int(min(max(2_000, math.ceil(10 / resolution)), 1_000_000))
    if shuffles * n <= MONTE_CARLO_WORK:
        rng = np.random.default_rng(0)
        at_least = 0
        chunk = max(1, 2_000_000 // n)
        for start in range(0, shuffles, chunk):
            rows = min(chunk, shuffles - start)
            shuffled = rng.permuted(np.broadcast_to(targets, (rows, n)), axis=1)
            at_least += int(((shuffled == predictions).sum(1) >= correct).sum())
        return (1 + at_least) / (1 + shuffles)
    size = max(int(predictions.max()), int(targets.max())) + 1
    predicted = np.bincount(predictions, minlength=size).astype(np.float64)
    actual = np.bincount(targets, minlength=size).astype(np.float64)
    both = float((predicted * actual).sum())
    mean = both / n
    spread = both - (predicted * actual ** 2).sum() / n - (actual * predicted ** 2).sum() / n + both ** 2 / n ** 2
    if spread <= 0:
        return 1.0 if correct <= mean else 0.0
    z = (correct - mean - 0.5) / math.sqrt(spread / (n - 1))
    return 0.5 * math.erfc(z / math.sqrt(2))


def same_class_for_all(predictions: Sequence[int], targets: Sequence[int], classes: Sequence[str]) -> str | None:
    """Why predictions that give every image one class (while the set holds several) show nothing learned, or None."""
    predictions, targets = np.asarray(predictions), np.asarray(targets)
    if len(np.unique(targets)) > 1 and len(predictions) and (predictions == predictions[0]).all():
        return f"it predicts class '{classes[int(predictions[0])]}' for every one of the {len(predictions)} images"
    return None


def learned_nothing(loss: float, prior: float, predictions: Sequence[int], targets: Sequence[int],
                    classes: Sequence[str], epochs: int = 1) -> str | None:
    """Why a model's predictions on a labelled set show it learned nothing, or None if they do not.

    It gives every image the same class (while the set holds several); its loss (at the temperature
    that minimises it) is no better than the class prior's; or its correct predictions are within
    chance (chance_p_value above ALPHA / `epochs`: the best of `epochs` epochs was picked on this set).
    """
    reason = same_class_for_all(predictions, targets, classes)
    if reason is not None:
        return reason
    if loss >= prior:
        return (f"its loss {loss:.4f} (at its fitted temperature) is no better than {prior:.4f}, the loss of "
                f"always predicting the training set's class frequencies")
    predictions, targets = np.asarray(predictions), np.asarray(targets)
    threshold = ALPHA / max(epochs, 1)
    p_value = chance_p_value(predictions, targets, threshold)
    if len(np.unique(targets)) > 1 and p_value > threshold:
        correct = int((predictions == targets).sum())
        picked = f", allowing for the best of {epochs} epochs" if epochs > 1 else ""
        return (f"its {correct} correct of {len(targets)} are within chance: predictions that ignore the images do "
                f"as well with probability {p_value:.3g} (permutation test; {threshold:.2g} needed{picked})")
    return None


def largest_class_test(predictions: Sequence[int], targets: Sequence[int]) -> tuple[float, float]:
    """(accuracy of always predicting the set's largest class, one-sided binomial p-value of the model's accuracy
    against it): is the model distinguishable from that trivial rule on this many images?"""
    from scipy.stats import binomtest

    targets = np.asarray(targets, dtype=np.int64)
    if len(targets) == 0:
        return 0.0, 1.0
    largest = float(np.bincount(targets).max() / len(targets))
    correct = int((np.asarray(predictions) == targets).sum())
    if largest >= 1.0:
        return largest, 1.0
    return largest, float(binomtest(correct, len(targets), largest, alternative="greater").pvalue)
