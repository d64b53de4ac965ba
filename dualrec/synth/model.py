"""The generative probability model shared by the world generator and :class:`Truth`.

Kept in one place so the probabilities the generator samples from and the probabilities the
evaluation reads back can never drift apart.
"""

from __future__ import annotations

import numpy as np

from schemas.feedback import FEEDBACK_TYPES, VISIBLE_FEEDBACKS as VISIBLE_TYPES  # noqa: F401 - re-exported

# Per-type logit parameters: intercept, affinity slope, creator-quality slope, user-bias scale,
# enthusiast boost, slope on log(duration / 20 s). Intercepts are tuned so that the organic
# feed's observed rates look like short-video logs (like a few %, follow/comment/share < 1 %,
# long view 20-30 %).
FEEDBACK_PARAMS: dict[str, dict[str, float]] = {
    "click": dict(a=-2.3, b=1.5, c=0.3, s=1.0, e=1.0, dur=0.0),
    "like": dict(a=-5.1, b=3.0, c=0.6, s=1.0, e=4.5, dur=0.0),
    "comment": dict(a=-7.0, b=2.5, c=0.5, s=1.0, e=3.0, dur=0.0),
    "follow": dict(a=-7.6, b=3.0, c=0.8, s=1.0, e=3.0, dur=0.0),
    "share": dict(a=-7.3, b=2.5, c=0.6, s=1.0, e=3.0, dur=0.0),
    "profile_enter": dict(a=-5.4, b=2.5, c=0.5, s=1.0, e=3.5, dur=0.0),
    "long_view": dict(a=-1.6, b=1.5, c=0.5, s=0.5, e=1.0, dur=-0.8),
}

LONG_VIEW_FRACTION = 0.8
"""An impression is a long view iff play_time_ms >= LONG_VIEW_FRACTION * duration_ms."""

REF_DURATION_MS = 20_000.0

# Weekly seasonality of activity (logit offsets, Monday=0) and of uploads (multipliers).
WEEKLY_ACTIVITY = np.array([-0.10, -0.15, -0.10, 0.00, 0.10, 0.35, 0.30], dtype=np.float64)
WEEKLY_UPLOADS = np.array([0.95, 0.95, 1.0, 1.0, 1.05, 1.05, 1.0], dtype=np.float64)

# Diurnal (UTC hour) weights for uploads and feed impressions: night trough, midday and evening peaks.
DIURNAL = np.array(
    [2.0, 1.5, 1.0, 0.8, 0.8, 1.0, 1.5, 2.5, 3.0, 3.0, 3.2, 3.5, 4.0, 3.8, 3.5, 3.5, 3.8, 4.2, 5.0, 5.5, 5.8, 5.5, 4.5, 3.0],
    dtype=np.float64,
)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def feedback_probs(
    affinity: np.ndarray,
    quality: np.ndarray,
    bias: np.ndarray,
    enthusiast: np.ndarray,
    duration_ms: np.ndarray,
    types: tuple[str, ...] = FEEDBACK_TYPES,
) -> dict[str, np.ndarray]:
    """P(type | user sees item) for aligned arrays of pair attributes; independent per type."""
    aff = np.asarray(affinity, dtype=np.float64)
    q = np.asarray(quality, dtype=np.float64)
    b = np.asarray(bias, dtype=np.float64)
    en = np.asarray(enthusiast, dtype=np.float64)
    logdur = np.log(np.asarray(duration_ms, dtype=np.float64) / REF_DURATION_MS)
    out = {}
    for t in types:
        p = FEEDBACK_PARAMS[t]
        out[t] = sigmoid(p["a"] + p["b"] * aff + p["c"] * q + p["s"] * b + p["e"] * en + p["dur"] * logdur)
    return out


def activity_logit(base: np.ndarray, amp: np.ndarray, weekday: int, active_yesterday: np.ndarray, streak: float) -> np.ndarray:
    """Logit of P(active) for registered, non-churned users on a day (register day is always active)."""
    return base + amp * WEEKLY_ACTIVITY[weekday] + streak * active_yesterday.astype(np.float64)
