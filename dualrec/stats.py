"""The one ROC AUC of the product (activity model, ranker, evaluation): scikit-learn's, wrapped.

The wrapper fixes the argument order (labels first, as scikit-learn) and returns None, not
an exception, when only one class is present: a quiet day with no positives is a figure that
cannot be computed (null in ``evaluate --json``), not a failure. scikit-learn averages tied
scores, which the last-day baseline (a 0/1 score) needs.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score


def roc_auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC of ``score`` against binary labels ``y``; None when a class is missing or a score is NaN."""
    y = np.asarray(y).astype(bool).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    if y.size == 0 or y.all() or not y.any() or not np.isfinite(s).all():
        return None
    value = float(roc_auc_score(y, s))
    return value if math.isfinite(value) else None
