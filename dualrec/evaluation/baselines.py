"""Baselines and the exact optimum, all under the same caps as our dispatch (item <= L, user <= Q).

* ``random``: per item a random preference order over the available users, Algorithm 1.
* ``popular``: every item wants the same users (by p_active), Algorithm 1.
* ``arrival``: Algorithm 1 on our own ranked scores (batches in upload order), whatever policy is
  configured.
* ``optimum_assign``: the exact maximum of the total true expected feedback (a max-weight
  b-matching, by min-cost flow) of a dense value grid (small grids, tests). ``evaluate`` uses the
  certified interval of :mod:`dualrec.evaluation.optimum`, which is a bound at every scale.
* Figure 9's counterfactual: each item takes its top-L ranked users with no store and no Q.

Assignments are returned as (item position, user index) arrays.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dualrec.dispatch import assign_arrays, dispatch_day_arrays
from dualrec.dispatch.kernels import group_rank

ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""Paired scorer: (user_ids, item_ids) of equal length -> true expected feedback per pair."""


def assign_capped(item_pos: np.ndarray, user_idx: np.ndarray, score: np.ndarray, L: int, Q: int) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 1 over edges (items in order item_pos, users by score desc) with the production kernel."""
    item_pos = np.asarray(item_pos, dtype=np.int64)
    user_idx = np.asarray(user_idx, dtype=np.int64)
    mask = assign_arrays(item_pos, user_idx, np.asarray(score, dtype=np.float64), item_pos, Q, L, "arrival")
    return item_pos[mask], user_idx[mask]


def random_assign(rng: np.random.Generator, n_items: int, n_users: int, L: int, Q: int) -> tuple[np.ndarray, np.ndarray]:
    """Random baseline: each item ranks ``4L + Q`` random available users, Algorithm 1 with the caps."""
    size = min(4 * L + Q, n_users)
    pools = [rng.choice(n_users, size=size, replace=False) for _ in range(n_items)]
    if not pools or size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    flat = np.concatenate(pools)
    within = np.tile(np.arange(size), n_items)
    return assign_capped(np.repeat(np.arange(n_items), size), flat, -within.astype(np.float64), L, Q)


def popular_assign(n_items: int, n_users: int, L: int, Q: int) -> tuple[np.ndarray, np.ndarray]:
    """Every item wants the same users (indices 0..n_users-1 by popularity); Algorithm 1 with caps.

    Capacities stay non-increasing along the popularity order, so each item's users are the
    slice [p, p+L) where p is the first user not yet full: O(pairs), not O(items x users).
    """
    cap = np.full(n_users, Q, dtype=np.int64)
    p = 0
    it, us = [], []
    for k in range(n_items):
        if p >= n_users:
            break
        take = np.arange(p, min(p + L, n_users))
        cap[take] -= 1
        it.append(np.full(take.size, k, dtype=np.int64))
        us.append(take)
        while p < n_users and cap[p] == 0:
            p += 1
    if not it:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(it), np.concatenate(us)


def arrival_assign(batch, item_ids, user_ids, g, item_rank, available, L: int, Q: int) -> np.ndarray:
    """Algorithm 1 on our ranked edges (mask over the edges), the store carried across batches."""
    return dispatch_day_arrays(batch, item_ids, user_ids, g, item_rank, available, L, Q, "arrival")[0]


def truth_grid(score_fn: ScoreFn, item_ids: np.ndarray, users: np.ndarray, chunk_pairs: int = 2_000_000) -> np.ndarray:
    """True value of every (item, user) pair, shape (items, users), scored in chunks."""
    n_u = len(users)
    out = np.empty((len(item_ids), n_u), dtype=np.float64)
    step = max(1, chunk_pairs // max(n_u, 1))
    for s in range(0, len(item_ids), step):
        items = np.asarray(item_ids[s : s + step], dtype=np.int64)
        out[s : s + items.size] = np.asarray(
            score_fn(np.tile(users, items.size), np.repeat(items, n_u)), dtype=np.float64
        ).reshape(items.size, n_u)
    return out


def score_pairs(score_fn: ScoreFn, users: np.ndarray, items: np.ndarray, chunk_pairs: int = 2_000_000) -> np.ndarray:
    """True value of explicit (user, item) pairs, chunked."""
    out = np.empty(len(users), dtype=np.float64)
    for s in range(0, len(users), chunk_pairs):
        out[s : s + chunk_pairs] = np.asarray(score_fn(users[s : s + chunk_pairs], items[s : s + chunk_pairs]), dtype=np.float64)
    return out


def top_idx(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest values per row, sorted desc (ties: lower index first)."""
    n = scores.shape[1]
    if k <= 0:
        return np.zeros((scores.shape[0], 0), dtype=np.int64)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (scores.shape[0], 1))
    pv = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -pv), axis=1) if part.size else part
    return np.take_along_axis(part, order, axis=1)


def optimum_assign(values: np.ndarray, L: int, Q: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Exact max-weight assignment of an (items, users) value grid: each item <= L users, each
    user <= Q items (min-cost flow). Returns (item positions, user indices, total value)."""
    n_items, n_users = values.shape
    if values.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0.0
    it = np.repeat(np.arange(n_items, dtype=np.int64), n_users)
    us = np.tile(np.arange(n_users, dtype=np.int64), n_items)
    v = values.ravel()
    keep = v > 0  # a pair worth nothing never raises the total
    it, us, v = it[keep], us[keep], v[keep]
    mask = assign_arrays(it, us, v, it, Q, L, "flow")
    return it[mask], us[mask], float(v[mask].sum())


def dispatch_without_store(item_ids, user_ids, g, L: int) -> np.ndarray:
    """Paper Figure 9's counterfactual: every item takes its top-L candidates (g desc, user_id asc),
    ignoring Q and the availability updates. Returns the mask of the selected edges."""
    item_ids = np.asarray(item_ids, dtype=np.int64)
    user_ids = np.asarray(user_ids, dtype=np.int64)
    g = np.asarray(g, dtype=np.float64)
    n = len(g)
    if n == 0:
        return np.zeros(0, dtype=bool)
    order = np.lexsort((user_ids, -g, item_ids))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = group_rank(item_ids[order], np.ones(n, dtype=bool))
    return rank < L
