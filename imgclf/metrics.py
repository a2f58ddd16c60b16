"""Classification metrics, all computed by scikit-learn.

scikit-learn is imported on first use, not with this module: its ~0.5 s import would otherwise come
before the train stage's first step, which needs it only after the first epoch (validation F1).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def weighted_f1(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Support-weighted F1 (the classic recipe's validation score)."""
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, average="weighted", zero_division=0))


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str],
                           loss: float) -> dict:
    """accuracy, weighted/macro F1, weighted precision/recall, loss, and per-class P/R/F1/support."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    labels = np.arange(len(classes))
    precision_w, recall_w, f1_w, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="weighted", zero_division=0)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_weighted": float(f1_w),
        "f1_macro": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "precision_weighted": float(precision_w),
        "recall_weighted": float(recall_w),
        "loss": float(loss),
        "classes": {name: {"precision": float(p), "recall": float(r), "f1": float(f),
                           "support": int(s)}
                    for name, p, r, f, s in zip(classes, precision, recall, f1, support)},
    }


def report_text(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> str:
    """scikit-learn's text classification report with class names."""
    from sklearn.metrics import classification_report

    return classification_report(y_true, y_pred, labels=np.arange(len(classes)),
                                  target_names=list(classes), digits=4, zero_division=0)
