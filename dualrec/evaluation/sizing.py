"""The size of the available set against the day's figures (issue 15 item 3): ``activity.size_curve``.

For a grid of N, the day's dispatch is re-run offline (the configured ``dispatch.policy``, the
same caps L and Q, the same batches and forecast) on the ``ranked`` edges of the N available
users with the highest p_active (ties by user_id, as the activity policies pick them), and each
point reports hit rate, coverage, fair_served, pairs and the truth's expected visible feedback.

What it can and cannot say:

* ``ranked`` holds only pairs of the users that were available on D, so a point with N above
  the available count has no scores to dispatch from: its figures are null (``computable``
  false), never extrapolated. To measure a larger N, run the day with a larger available set
  (``activity.policy=value``) and read its curve.
* a point below the available count restricts the day's candidates to the top-N users instead
  of re-running retrieval over them (retrieval would have found other candidates among them),
  so it is a conservative estimate of that N; the point N = available reproduces the day.

Grid (``metrics.size_curve_fractions``): round(f x available users) for each f, plus the N each
activity policy would have chosen for the day (``n_top_n``: demand x slack capped at Σ p;
``n_value``: :func:`dualrec.activity.value_sized_n`), capped at the users scored. Every point also
carries ``model_value``: the sizing model's V(N) (:func:`dualrec.activity.value_curve`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from dualrec import activity as A
from dualrec.config import DualRecConfig
from dualrec.dispatch import PolicyParams, dispatch_day_arrays, paced_curve
from dualrec.dispatch.kernels import canonical_order, sorted_codes
from dualrec.evaluation.baselines import ScoreFn, score_pairs
from dualrec.evaluation.experiment import DayEdges, day_edges
from dualrec.evaluation.figures import creator_figures, jf
from dualrec.lake import Lake

log = logging.getLogger(__name__)

POINT_KEYS = ("n", "computable", "hit_rate", "coverage", "fair_served", "pairs", "users_matched", "expected_feedback",
              "items_reaching_feedback", "model_value")


def size_grid(n_available: int, n_users: int, fractions: Sequence[float], extra: Sequence[int] = ()) -> list[int]:
    """Sorted distinct N: round(f x n_available) for each f, and ``extra``; each in [1, n_users]."""
    ns = {round(f * n_available) for f in fractions} | {int(n) for n in extra}
    return sorted(n for n in ns if 1 <= n <= n_users) if n_users else []


class _CurveEdges:
    """The day's edges sorted once in the order the dispatch kernels sort them (upload order, item,
    user) with each edge's user position in the activity policy's order: a point's edges are then a
    mask (no set lookup) and come pre-sorted (the kernels' sort is near-linear). The kernels sort
    their input themselves, so the assignment is the same as from the unsorted edges."""

    def __init__(self, edges: DayEdges, ranked_users: np.ndarray):
        items, iidx = sorted_codes(edges.item_id)
        users, uidx = sorted_codes(edges.user_id)
        self.perm = canonical_order(edges.item_rank, iidx, items.size, uidx, users.size)
        p = self.perm
        self.sorted = dataclasses.replace(edges, batch=edges.batch[p], item_id=edges.item_id[p], user_id=edges.user_id[p],
                                          g=edges.g[p], item_rank=edges.item_rank[p], p_active=edges.p_active[p])
        order = np.argsort(ranked_users, kind="stable")
        su = ranked_users[order]
        at = np.minimum(np.searchsorted(su, self.sorted.user_id), max(su.size - 1, 0))
        found = su[at] == self.sorted.user_id if su.size else np.zeros(p.size, dtype=bool)
        self.user_pos = np.where(found, order[at] if su.size else 0, np.iinfo(np.int64).max)  # position in ranked_users

    def keep(self, n: int) -> np.ndarray:
        """Edges (sorted order) of the first n ranked users: ``np.isin(user_id, ranked_users[:n])``."""
        return self.user_pos < n

    def selected(self, keep: np.ndarray, mask_kept: np.ndarray) -> np.ndarray:
        """A mask over the kept sorted edges -> a mask over the original edges."""
        full = np.zeros(self.perm.size, dtype=bool)
        full[np.flatnonzero(keep)[mask_kept]] = True
        out = np.zeros(self.perm.size, dtype=bool)
        out[self.perm] = full
        return out


def curve_points(edges: DayEdges | None, ranked_users: np.ndarray, grid: Sequence[int], cfg: DualRecConfig,
                 active_next: np.ndarray | None, score_fn: ScoreFn | None, curve: np.ndarray | None = None,
                 model: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One point per N of ``grid``: the day's dispatch over the first N of ``ranked_users``.

    ``ranked_users``: the available users in the order the activity policy takes them (p_active
    desc, user_id asc); a point with N above its length is null. ``edges``: the day's ranked pairs
    (None: no point is computable). ``active_next``: users visiting on D+1 (None: hit rate null);
    ``score_fn``: the truth (None: feedback null); ``model``: V(N) of the sizing model, N = 1.. .
    """
    d = cfg.dispatch
    params = PolicyParams.from_config(d)
    out = []
    prep = _CurveEdges(edges, ranked_users) if edges is not None else None
    for n in grid:
        pt: dict[str, Any] = {k: None for k in POINT_KEYS}
        pt["n"] = int(n)
        pt["computable"] = bool(edges is not None and n <= ranked_users.size)
        if model is not None and 1 <= n <= model.size:
            pt["model_value"] = jf(model[n - 1])
        out.append(pt)
        if not pt["computable"]:
            continue
        top = np.sort(ranked_users[:n])
        keep = prep.keep(n)  # edges of the first n users, in the dispatch kernels' canonical order
        e = prep.sorted
        mask_s, _ = dispatch_day_arrays(
            e.batch[keep], e.item_id[keep], e.user_id[keep], e.g[keep], e.item_rank[keep], top,
            d.L, d.Q, d.policy, batches_per_day=d.batches_per_day, curve=curve, n_items=edges.items.size,
            params=params, p_active=e.p_active[keep],
        )
        mask = prep.selected(keep, mask_s)  # back in the order of ``edges``
        it, us = edges.item_id[mask], edges.user_id[mask]
        per_item = pd.Series(it).value_counts().reindex(edges.items, fill_value=0).to_numpy()
        cf = creator_figures(per_item, int(n), d.L, d.Q)
        matched = np.unique(us)
        pt.update(coverage=cf["coverage"], fair_served=cf["fair_served"], pairs=int(it.size), users_matched=int(matched.size))
        if active_next is not None and matched.size:
            pt["hit_rate"] = jf(np.isin(matched, active_next).mean())
        if score_fn is not None:
            vals = score_pairs(score_fn, us, it, cfg.metrics.truth_chunk_pairs) if it.size else np.zeros(0)
            pt["expected_feedback"] = float(vals.sum())
            per_val = pd.Series(vals).groupby(it).sum().reindex(edges.items, fill_value=0.0).to_numpy()
            pt["items_reaching_feedback"] = jf((per_val >= 1.0).mean()) if edges.items.size else None
    return out


def size_curve(lake: Lake, day: dt.date, cfg: DualRecConfig, scores, n_items: int | None,
               active_next: np.ndarray | None, score_fn: ScoreFn | None, edges: DayEdges | None = None) -> dict[str, Any]:
    """``activity.size_curve`` of day D (see the module doc); every key present, null where unknown.

    ``scores``: ``activity_scores`` dt=D (pyarrow, or None); ``n_items``: D's uploads (None: absent);
    ``edges``: :func:`day_edges` of D when the caller already read them (read here otherwise)."""
    a, d = cfg.activity, cfg.dispatch
    fr = [float(f) for f in cfg.metrics.size_curve_fractions]
    res: dict[str, Any] = {"policy": a.policy, "dispatch_policy": d.policy, "fractions": fr, "n_available": None,
                           "n_users": None, "n_top_n": None, "n_value": None, "sum_p_active": None, "points": []}
    if scores is None or not fr:
        return res
    users = scores.column("user_id").to_numpy().astype(np.int64)
    p = scores.column("p_active").to_numpy(zero_copy_only=False).astype(np.float64)
    av = scores.column("available").to_numpy(zero_copy_only=False).astype(bool)
    order = np.lexsort((users, -p))
    ranked_users = users[order][av[order]]
    items = int(n_items or 0)
    res.update(n_available=int(av.sum()), n_users=int(users.size), sum_p_active=jf(np.nansum(p)))
    res["n_top_n"] = int(min(A.demand_top_n(items, d.L, d.Q, a.slack, a.min_available, float(np.nansum(p)),
                                            a.expected_active_cap), users.size))
    res["n_value"] = A.value_sized_n(p, items, d.L, d.Q, min_p=a.value_min_p, min_available=a.min_available)
    _, model = A.value_curve(p, items, d.L, d.Q, min_p=a.value_min_p)
    grid = size_grid(int(av.sum()), int(users.size), fr, [res["n_top_n"], res["n_value"]])
    edges = (edges if edges is not None else day_edges(lake, day)) if n_items else None
    res["points"] = curve_points(edges, ranked_users, grid, cfg, active_next, score_fn, paced_curve(lake, day, d), model)
    return res


__all__ = ["POINT_KEYS", "curve_points", "size_curve", "size_grid"]
