"""Day metrics (SPEC section 6): what ``dualrec evaluate`` prints and the report plots.

Everything here is a pure computation over small arrays / DataFrames so that each figure can
be checked on ten hand-made rows; :func:`evaluate` only reads the lake and wires them up.

Evaluation of day D needs D+1's logs (the dispatched users are expected to visit on D+1), so
on the last day of a lake the D+1 figures are ``null``, never omitted. Truth-based figures
(synthetic worlds only) read ``<lake>/_truth`` through :class:`dualrec.synth.truth.Truth`.

Sampling at scale (documented because it changes what a figure means):

* truth figures, baselines and the oracle use at most ``metrics.max_items`` of the day's items
  (uniform sample, kept in upload order); every one of them - ours included - is measured on
  that same sample. Capacity (each item <= L, each user <= Q) is enforced among those items.
* the oracle (Algorithm 1 driven by the truth, exact over the pool) and ``retrieval.truth_recall``
  score a random pool of at most
  ``metrics.oracle_pool_users`` available users per day. With a pool of P out of U available
  users, "the L best users" of an item is estimated by its best round(L * P / U) pool users
  (same quantile); when P = U both are exact.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from dualrec.channels.base import channel_names
from dualrec.config import EXPLICIT_FEEDBACKS, DualRecConfig, step_seed
from dualrec.lake import Lake, parse_date
from dualrec.registry import headline_outputs
from dualrec.stats import roc_auc as stats_roc_auc
from schemas.tables import RANK_TASKS, arrow_schema

log = logging.getLogger(__name__)

PAPER_CHANNEL_SHARE = {"two_tower": 0.587, "i2i2u": 0.385, "i2u2u": 0.0279}
"""Paper Table 3: exposure ratio of the retrieval channels in the deployed system."""
PAPER_HIT_RATE = {"without_activity_model": 0.49, "with_activity_model": 0.82}
PAPER_RANK_AUC = {"baseline": 0.901, "with_sa_ef": 0.913}

# stage -> the table whose row count measures its throughput

ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""Paired scorer: (user_ids, item_ids) of equal length -> true expected feedback per pair."""


# ============================================================================ small helpers
def _f(x: Any) -> float | None:
    """JSON-safe float: NaN/inf/None become None (the SPEC wants null, never NaN)."""
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """AUC with average ranks for ties (scores first); None when a class is missing."""
    return _f(stats_roc_auc(labels, scores))


def reliability_curve(p: np.ndarray, y: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Calibration of p_active: per equal-width probability bin, mean prediction vs actual rate."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if p.size == 0:
        return []
    idx = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    n = np.bincount(idx, minlength=bins)
    sp = np.bincount(idx, weights=p, minlength=bins)
    sy = np.bincount(idx, weights=y, minlength=bins)
    return [
        {"lo": b / bins, "hi": (b + 1) / bins, "n": int(n[b]), "p_mean": float(sp[b] / n[b]), "rate": float(sy[b] / n[b])}
        for b in range(bins)
        if n[b] > 0
    ]


# ============================================================================ activity
def activity_figures(
    user_ids: np.ndarray,
    p_active: np.ndarray,
    active_today: np.ndarray | None,
    active_next: np.ndarray | None,
    dispatched_users: np.ndarray | None,
    bins: int = 10,
) -> dict[str, Any]:
    """Activity AUC, last-day baseline AUC and hit rates from ids (our own computation).

    hit_rate = share of distinct dispatched users active on D+1 (paper 5.2: 82 % with the
    activity model); hit_rate_all_users = share of all known users active on D+1, i.e. the hit
    rate of dispatching without the activity model (paper: 49 %).
    """
    out: dict[str, Any] = {"auc": None, "auc_baseline_last_day": None, "hit_rate": None, "hit_rate_all_users": None}
    if active_next is None:
        return out
    user_ids = np.asarray(user_ids, dtype=np.int64)
    y = np.isin(user_ids, active_next)
    if user_ids.size:
        out["auc"] = roc_auc(p_active, y)
        out["hit_rate_all_users"] = _f(y.mean())
        out["calibration"] = reliability_curve(p_active, y, bins)
        if active_today is not None:
            out["auc_baseline_last_day"] = roc_auc(np.isin(user_ids, active_today).astype(np.float64), y)
    if dispatched_users is not None and len(dispatched_users):
        du = np.unique(np.asarray(dispatched_users, dtype=np.int64))
        out["hit_rate"] = _f(np.isin(du, active_next).mean())
    return out


# ============================================================================ dispatch
def du_counts(user_ids: np.ndarray) -> np.ndarray:
    """|D_u| of every matched user (order irrelevant)."""
    if len(user_ids) == 0:
        return np.zeros(0, dtype=np.int64)
    _, counts = np.unique(np.asarray(user_ids, dtype=np.int64), return_counts=True)
    return counts


def du_histogram(counts: np.ndarray, unmatched: int = 0) -> list[int]:
    """hist[k] = number of users with |D_u| = k; hist[0] = available users that got nothing."""
    counts = np.asarray(counts, dtype=np.int64)
    hist = np.bincount(counts, minlength=1) if counts.size else np.zeros(1, dtype=np.int64)
    hist[0] += max(int(unmatched), 0)
    return [int(v) for v in hist]


def du_without_store(item_ids: np.ndarray, user_ids: np.ndarray, g: np.ndarray, L: int) -> np.ndarray:
    """Counterfactual of paper Figure 9: each item takes its top-L ranked users, no store / no Q.

    Returns |D_u| per matched user under that policy.
    """
    if len(item_ids) == 0:
        return np.zeros(0, dtype=np.int64)
    df = pd.DataFrame({"i": np.asarray(item_ids), "u": np.asarray(user_ids), "g": np.asarray(g, dtype=np.float64)})
    df = df.sort_values(["i", "g", "u"], ascending=[True, False, True], kind="mergesort")
    top = df[df.groupby("i", sort=False).cumcount() < L]
    return du_counts(top["u"].to_numpy())


def channel_shares(channels: pa.Array | pa.ChunkedArray) -> tuple[dict[str, float], dict[str, float]]:
    """Exposure share per retrieval channel over dispatched pairs.

    ``share``: each pair's unit of exposure split equally among the channels that found it, so the
    shares sum to 1 (comparable with paper Table 3). ``any``: share of pairs each channel found
    (sums to >= 1 when channels overlap).
    """
    if isinstance(channels, pa.ChunkedArray):
        channels = channels.combine_chunks() if channels.num_chunks else pa.array([], pa.list_(pa.string()))
    n = len(channels)
    if n == 0:
        return {}, {}
    lens = pc.fill_null(pc.list_value_length(channels), 0).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(channels).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(channels).to_numpy(zero_copy_only=False)
    w = 1.0 / lens[parents]
    df = pd.DataFrame({"c": flat, "w": w, "p": parents})
    frac = df.groupby("c")["w"].sum() / n
    anyc = df.drop_duplicates(["c", "p"]).groupby("c").size() / n
    return {str(k): float(v) for k, v in frac.items()}, {str(k): float(v) for k, v in anyc.items()}


def dispatch_figures(
    match: pd.DataFrame,
    item_ids: np.ndarray | None,
    available_users: np.ndarray | None,
    L: int,
    Q: int,
) -> dict[str, Any]:
    """Coverage, |D_u| distribution and usage from the match_sets rows (item_id, user_id)."""
    items_present = item_ids is not None
    item_ids = np.unique(np.asarray(item_ids if items_present else match["item_id"].unique(), dtype=np.int64))
    per_item = match.groupby("item_id").size()
    per_item = per_item.reindex(item_ids, fill_value=0).to_numpy() if item_ids.size else np.zeros(0, np.int64)
    counts = du_counts(match["user_id"].to_numpy())
    n_users = int(counts.size)
    n_avail = None if available_users is None else int(np.unique(available_users).size)
    unmatched = 0
    if available_users is not None:
        unmatched = int(np.setdiff1d(np.asarray(available_users, np.int64), match["user_id"].to_numpy()).size)
    n_items = int(item_ids.size)
    out: dict[str, Any] = {
        "items": n_items if items_present else None,
        "items_covered": int((per_item > 0).sum()),
        "items_full": int((per_item >= L).sum()),
        "coverage": _f((per_item > 0).mean()) if n_items else None,
        "full_share": _f((per_item >= L).mean()) if n_items else None,
        "users_per_item_mean": _f(per_item.mean()) if n_items else None,
        "users_per_item_hist": _hist_bins(per_item, L),
        "pairs": int(len(match)),
        "users_matched": n_users,
        "available_users": n_avail,
        "share_available_used": _f(n_users / n_avail) if n_avail else None,
        "max_du": int(counts.max()) if n_users else 0,
        "mean_du": _f(counts.mean()) if n_users else None,
        "users_at_q": int((counts >= Q).sum()),
        "du_violations": int((counts > Q).sum()),
        "du_hist": du_histogram(counts, unmatched),
        "q": int(Q),
        "l": int(L),
    }
    return out


def _hist_bins(values: np.ndarray, L: int, bins: int = 10) -> dict[str, list]:
    """Histogram of users per item on [0, L] (coverage plot)."""
    edges = np.linspace(0, max(L, 1), bins + 1)
    counts, _ = np.histogram(np.clip(values, 0, L), bins=edges)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


# ============================================================================ assignments
def greedy_assign(pools: list[np.ndarray], L: int, capacity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Items in order; each takes the first L users of its preference-ordered pool with capacity left.

    ``pools[k]`` holds distinct user indices into ``capacity`` (modified in place). This is
    Algorithm 1 with one item per batch; returns (item position, user index) per pair.
    """
    it, us = [], []
    for k, pool in enumerate(pools):
        if len(pool) == 0:
            continue
        take = pool[capacity[pool] > 0][:L]
        capacity[take] -= 1
        it.append(np.full(take.size, k, dtype=np.int64))
        us.append(take)
    if not it:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(it), np.concatenate(us).astype(np.int64)


def popular_assign(n_items: int, n_users: int, L: int, Q: int) -> tuple[np.ndarray, np.ndarray]:
    """Every item wants the same users (indices 0..n_users-1 by popularity); greedy with caps.

    Each item takes the L most popular users with capacity left. Capacities stay
    non-decreasing along the popularity order, so those users are always the slice
    [p, p+L) where p is the first user not yet full: O(pairs), not O(items * users).
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


def assign_capped(item_pos: np.ndarray, user_idx: np.ndarray, score: np.ndarray, L: int, Q: int) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 1 over edges (items in order item_pos, users by score desc), <= L per item, <= Q per user.

    Uses ``dualrec.dispatch.assign_arrays`` (policy "arrival": the production kernel, so the
    baselines face exactly the same rule as our dispatch); :func:`greedy_assign` otherwise.
    Returns the selected (item_pos, user_idx).
    """
    item_pos = np.asarray(item_pos, dtype=np.int64)
    user_idx = np.asarray(user_idx, dtype=np.int64)
    score = np.asarray(score, dtype=np.float64)
    try:
        from dualrec.dispatch import assign_arrays
    except (ImportError, AttributeError) as e:
        log.info("dualrec.dispatch.assign_arrays unavailable (%s); using metrics.greedy_assign", e)
        assign_arrays = None
    if assign_arrays is not None:
        mask = np.asarray(assign_arrays(item_pos, user_idx, score, item_pos, Q, L, "arrival"), dtype=bool)
        return item_pos[mask], user_idx[mask]
    if item_pos.size == 0:
        return item_pos, user_idx
    order = np.lexsort((user_idx, -score, item_pos))
    ip, ui = item_pos[order], user_idx[order]
    n_items = int(ip.max()) + 1
    bounds = np.searchsorted(ip, np.arange(n_items + 1))
    pools = [ui[bounds[k] : bounds[k + 1]] for k in range(n_items)]
    cap = np.full(int(ui.max()) + 1, Q, dtype=np.int64)
    return greedy_assign(pools, L, cap)


def random_pools(rng: np.random.Generator, n_items: int, n_users: int, size: int) -> list[np.ndarray]:
    """Per item, a random preference order over ``size`` distinct users (random baseline)."""
    size = min(size, n_users)
    return [rng.choice(n_users, size=size, replace=False) for _ in range(n_items)]


def truth_oracle(
    score_fn: ScoreFn,
    item_ids: np.ndarray,
    pool_users: np.ndarray,
    L: int,
    Q: int,
    k_best: int,
    chunk_pairs: int = 2_000_000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Oracle dispatch and each item's true-best users over a user pool, in one pass over the grid.

    Items in the given (upload) order each take the L pool users with the highest true score
    among those with capacity left (< Q items): Algorithm 1 driven by the truth, exact over the
    whole pool. The items x pool grid is scored in chunks of ``chunk_pairs`` pairs.
    Returns (oracle item positions, oracle user indices, their scores, best[k_best] per item).
    """
    n_pool = len(pool_users)
    kb = max(1, min(k_best, n_pool))
    best = np.zeros((len(item_ids), kb), dtype=np.int64)
    cap = np.full(n_pool, Q, dtype=np.int64)
    it, us, sc = [], [], []
    step = max(1, chunk_pairs // max(n_pool, 1))
    for s in range(0, len(item_ids), step):
        items = np.asarray(item_ids[s : s + step], dtype=np.int64)
        scores = np.asarray(
            score_fn(np.tile(pool_users, items.size), np.repeat(items, n_pool)), dtype=np.float64
        ).reshape(items.size, n_pool)
        best[s : s + items.size] = _top_idx(scores, kb)
        for r in range(items.size):
            row = np.where(cap > 0, scores[r], -np.inf)
            n_live = int((cap > 0).sum())
            take = _top_idx(row[None, :], min(L, n_live))[0] if n_live else np.zeros(0, np.int64)
            cap[take] -= 1
            it.append(np.full(take.size, s + r, dtype=np.int64))
            us.append(take)
            sc.append(scores[r, take])
    if not it:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), best
    return np.concatenate(it), np.concatenate(us), np.concatenate(sc), best


def _top_idx(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest values per row, sorted desc (ties: lower index first)."""
    n = scores.shape[1]
    if k <= 0:
        return np.zeros((scores.shape[0], 0), dtype=np.int64)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (scores.shape[0], 1))
    pv = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -pv), axis=1) if part.size else part
    return np.take_along_axis(part, order, axis=1)


def score_pairs(score_fn: ScoreFn, users: np.ndarray, items: np.ndarray, chunk_pairs: int = 2_000_000) -> np.ndarray:
    """True score of explicit (user, item) pairs, chunked."""
    out = np.empty(len(users), dtype=np.float64)
    for s in range(0, len(users), chunk_pairs):
        out[s : s + chunk_pairs] = np.asarray(score_fn(users[s : s + chunk_pairs], items[s : s + chunk_pairs]), dtype=np.float64)
    return out


def recall_of_positives(
    assigned: pd.DataFrame, positives: pd.DataFrame, items: np.ndarray | None = None
) -> dict[str, float | int | None]:
    """Share of each item's logged positive users found among its assigned users.

    ``micro`` = all hits / all positives; ``macro`` = mean over items with >= 1 positive.
    Both frames have columns item_id, user_id; ``items`` restricts to a set of items.
    """
    pos = positives[["item_id", "user_id"]].drop_duplicates()
    if items is not None:
        pos = pos[pos["item_id"].isin(items)]
    if pos.empty:
        return {"micro": None, "macro": None, "items": 0, "positives": 0}
    hit = pos.merge(assigned[["item_id", "user_id"]].drop_duplicates(), how="left", on=["item_id", "user_id"], indicator=True)
    hit["h"] = (hit["_merge"] == "both").astype(np.float64)
    per_item = hit.groupby("item_id")["h"].mean()
    return {
        "micro": _f(hit["h"].mean()),
        "macro": _f(per_item.mean()),
        "items": int(per_item.size),
        "positives": int(len(pos)),
    }


def truth_recall(
    top: pd.DataFrame, candidates: pd.DataFrame, channels: list[str], items: np.ndarray
) -> dict[str, float | None]:
    """Per channel (and ``merged``): mean over items of the share of the item's true-best users found.

    ``top``: (item_id, user_id) of each item's true-best available users; ``candidates``:
    long form (item_id, user_id, channel). Items without candidates count as 0.
    """
    out: dict[str, float | None] = {}
    if len(items) == 0 or top.empty:
        return {c: None for c in [*channels, "merged"]}
    denom = top.groupby("item_id").size().reindex(items, fill_value=0)
    valid = denom > 0
    for ch in [*channels, "merged"]:
        cand = candidates if ch == "merged" else candidates[candidates["channel"] == ch]
        found = top.merge(cand[["item_id", "user_id"]].drop_duplicates(), on=["item_id", "user_id"], how="inner")
        num = found.groupby("item_id").size().reindex(items, fill_value=0)
        out[ch] = _f((num[valid] / denom[valid]).mean()) if valid.any() else None
    return out


def quality_figures(
    score_fn: ScoreFn | None,
    items: np.ndarray,
    dispatched: pd.DataFrame,
    available: np.ndarray,
    popularity: np.ndarray,
    positives: pd.DataFrame | None,
    candidates_long: pd.DataFrame | None,
    channels: list[str],
    L: int,
    Q: int,
    rng: np.random.Generator,
    pool_size: int = 20_000,
    chunk_pairs: int = 2_000_000,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ours vs random / popular / oracle on the same items (upload order) under the same caps.

    ``available``: available user ids; ``popularity``: their popularity (higher first, e.g.
    p_active). ``score_fn`` None (no truth) leaves the feedback figures null; ``positives``
    None (no D+1 logs) leaves the recall figures null. Returns (quality, retrieval).
    """
    items = np.asarray(items, dtype=np.int64)
    available = np.asarray(available, dtype=np.int64)
    n_items, n_users = items.size, available.size
    q: dict[str, Any] = {
        k: None
        for k in (
            "feedback_per_pair",
            "feedback_per_pair_random",
            "feedback_per_pair_popular",
            "feedback_per_pair_oracle",
            "recall_at_l",
            "recall_at_l_random",
            "recall_at_l_popular",
            "recall_at_l_oracle",
        )
    }
    q["sampled_items"] = int(n_items)
    retrieval: dict[str, Any] = {"truth_recall": {c: None for c in [*channels, "merged"]}}
    ours = dispatched[dispatched["item_id"].isin(items)][["item_id", "user_id"]]
    q["pairs"] = int(len(ours))
    base: dict[str, pd.DataFrame] = {}
    if n_items and n_users:
        # random: per item a random preference order over available users
        pools = random_pools(rng, n_items, n_users, 4 * L + Q)
        sizes = np.array([p.size for p in pools], dtype=np.int64)
        flat = np.concatenate(pools) if pools else np.zeros(0, np.int64)
        within = np.arange(flat.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        it, us = assign_capped(np.repeat(np.arange(n_items), sizes), flat, -within.astype(np.float64), L, Q)
        base["random"] = pd.DataFrame({"item_id": items[it], "user_id": available[us]})
        order = np.lexsort((available, -np.asarray(popularity, dtype=np.float64)))
        it, us = popular_assign(n_items, n_users, L, Q)
        base["popular"] = pd.DataFrame({"item_id": items[it], "user_id": available[order][us]})
        for name, df in base.items():
            q[f"pairs_{name}"] = int(len(df))
    if score_fn is not None and n_items and n_users:
        pool = available if n_users <= pool_size else np.sort(rng.choice(available, size=pool_size, replace=False))
        k_best = max(1, int(round(L * pool.size / n_users)))
        it, us, _, idx = truth_oracle(score_fn, items, pool, L, Q, k_best, chunk_pairs)
        base["oracle"] = pd.DataFrame({"item_id": items[it], "user_id": pool[us]})
        q["pairs_oracle"] = int(len(base["oracle"]))
        q["oracle_pool_users"] = int(pool.size)
        for name, df in [("", ours), *[(f"_{k}", v) for k, v in base.items()]]:
            if len(df):
                s = score_pairs(score_fn, df["user_id"].to_numpy(np.int64), df["item_id"].to_numpy(np.int64), chunk_pairs)
                q[f"feedback_per_pair{name}"] = _f(s.mean())
        # the oracle is greedy in upload order with the same caps: a strong bound, not an optimum
        kb = idx.shape[1]
        top = pd.DataFrame({"item_id": np.repeat(items, kb), "user_id": pool[idx[:, :kb].ravel()]})
        if candidates_long is not None:
            retrieval["truth_recall"] = truth_recall(top, candidates_long, channels, items)
        retrieval["truth_best_users_per_item"] = int(kb)
        q["truth_recall_dispatched"] = truth_recall(
            top, ours.assign(channel="dispatched"), [], items
        )["merged"]
    if positives is not None:
        r = recall_of_positives(ours, positives, items)
        q["recall_at_l"] = r["micro"]
        q["recall_at_l_macro"] = r["macro"]
        q["recall_items_with_positives"] = r["items"]
        for name, df in base.items():
            q[f"recall_at_l_{name}"] = recall_of_positives(df, positives, items)["micro"]
    return q, retrieval


# ============================================================================ lake reading
def _read(lake: Lake, table: str, day: dt.date, columns: list[str] | None = None, filt=None) -> pa.Table | None:
    """A partition (optionally filtered, pushed down to Parquet) or None when it is absent."""
    if not lake.has_partition(table, day):
        return None
    if filt is None:
        return lake.read_table(table, day, columns)
    ds = pads.dataset(lake.fs_path(lake.partition_rel(table, day)), filesystem=lake.fs, format="parquet", schema=arrow_schema(table))
    return ds.to_table(columns=columns, filter=filt)


def _rows(lake: Lake, table: str, day: dt.date) -> int | None:
    """Row count from Parquet metadata (no data read)."""
    if not lake.has_partition(table, day):
        return None
    ds = pads.dataset(lake.fs_path(lake.partition_rel(table, day)), filesystem=lake.fs, format="parquet")
    return int(ds.count_rows())


def _ids(t: pa.Table | None, col: str = "user_id") -> np.ndarray | None:
    return None if t is None else t.column(col).to_numpy().astype(np.int64)


def _read_json(lake: Lake, rel: str) -> Any:
    if not lake.exists(rel):
        return None
    try:
        return json.loads(lake.read_text(rel))
    except (json.JSONDecodeError, OSError) as e:
        log.warning("cannot read %s: %s", lake.uri(rel), e)
        return None


def index_recall(lake: Lake, day: dt.date) -> dict[str, Any]:
    """ANN-vs-exact recall from ``_models/user_index/dt=D/manifest.json``.

    Agreed key: top-level ``recall_at_k`` (also accepted under ``metrics``, or as ``recall`` as
    written by ``models.ann``), with ``k`` / ``recall_k`` and ``index_type`` / ``kind`` if present.
    """
    rel = Lake.model_rel("user_index", day)
    m = _read_json(lake, f"{rel}/manifest.json") if lake.is_complete(rel) else None
    out: dict[str, Any] = {"recall_at_k": None, "k": None, "index_type": None}
    if not isinstance(m, dict):
        return out
    sub = m.get("metrics") if isinstance(m.get("metrics"), dict) else {}
    out["recall_at_k"] = _f(m.get("recall_at_k", sub.get("recall_at_k", m.get("recall"))))
    k = m.get("k", m.get("recall_k", sub.get("k", sub.get("recall_k"))))
    out["k"] = int(k) if isinstance(k, (int, float)) and not isinstance(k, bool) else None
    kind = m.get("index_type", m.get("kind", m.get("type")))
    out["index_type"] = str(kind) if kind is not None else None
    return out


def cost_figures(lake: Lake, day: dt.date) -> dict[str, Any]:
    """Stage wall times (``_runs/dt=D/stages.json`` by the orchestrator) and rows per second."""
    st = _read_json(lake, f"_runs/dt={day.isoformat()}/stages.json")
    seconds = {str(k): _f(v) for k, v in st.items()} if isinstance(st, dict) else {}
    rows = {t: _rows(lake, t, day) for t in headline_outputs().values()}
    rps = {}
    for stage, table in headline_outputs().items():
        s, n = seconds.get(stage), rows.get(table)
        if s and n is not None:
            rps[stage] = _f(n / s)
    return {"stage_seconds": seconds, "total_seconds": _f(sum(v for v in seconds.values() if v)) if seconds else None,
            "rows": rows, "rows_per_second": rps}


def _positives(inter: pa.Table | None) -> pd.DataFrame | None:
    """(item_id, user_id) of logged explicit positive feedback."""
    if inter is None:
        return None
    mask = None
    for f in EXPLICIT_FEEDBACKS:
        m = pc.greater(inter.column(f"is_{f}"), 0)
        mask = m if mask is None else pc.or_(mask, m)
    t = inter.filter(mask) if mask is not None else inter
    return t.select(["item_id", "user_id"]).to_pandas()


def _candidates_long(t: pa.Table) -> pd.DataFrame:
    """Explode the channels list into (item_id, user_id, channel) rows (vectorised)."""
    ch = t.column("channels").combine_chunks() if t.num_rows else pa.array([], pa.list_(pa.string()))
    parents = pc.list_parent_indices(ch).to_numpy(zero_copy_only=False)
    return pd.DataFrame(
        {
            "item_id": t.column("item_id").to_numpy()[parents] if t.num_rows else np.zeros(0, np.int64),
            "user_id": t.column("user_id").to_numpy()[parents] if t.num_rows else np.zeros(0, np.int64),
            "channel": pc.list_flatten(ch).to_numpy(zero_copy_only=False),
        }
    )


def _truth_scorer(lake: Lake, eval_day: dt.date) -> ScoreFn | None:
    """expected_visible_feedback(u, i, D+1) from the synthetic truth, or None (not synthetic)."""
    if not lake.exists("_truth"):
        return None
    from dualrec.synth.truth import load_cached

    truth = load_cached(lake.root)
    return lambda u, i: np.asarray(truth.expected_visible_feedback(u, i, eval_day), dtype=np.float64)


def _no_store_hist(lake: Lake, day: dt.date, L: int, spark=None) -> list[int] | None:
    """|D_u| histogram if each item took its top-L ranked users with no store (paper Figure 9).

    Uses ``dualrec.dispatch.dispatch_without_store`` (the dispatch engineer's definition) on
    ``ranked`` dt=D; a Spark window does the same when the table is large and a session is given.
    """
    n = _rows(lake, "ranked", day)
    if n is None:
        return None
    if spark is not None and n > 5_000_000:
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        df = lake.read_df(spark, "ranked", [day], with_dt=False).select("item_id", "user_id", "g")
        w = Window.partitionBy("item_id").orderBy(F.col("g").desc(), F.col("user_id"))
        per_user = df.withColumn("r", F.row_number().over(w)).where(F.col("r") <= L).groupBy("user_id").count()
        rows = per_user.groupBy("count").count().collect()
        hist = np.zeros(max([r[0] for r in rows], default=0) + 1, dtype=np.int64)
        for r in rows:
            hist[r[0]] = r[1]
        return [int(v) for v in hist]
    t = lake.read_table("ranked", day, ["item_id", "user_id", "g"])
    items, users, g = (t.column(c).to_numpy() for c in ("item_id", "user_id", "g"))
    try:
        from dualrec.dispatch import dispatch_without_store
    except (ImportError, AttributeError) as e:
        log.info("dualrec.dispatch.dispatch_without_store unavailable (%s); using metrics' own", e)
        return du_histogram(du_without_store(items, users, g, L))
    return du_histogram(du_counts(users[np.asarray(dispatch_without_store(items, users, g, L), dtype=bool)]))


def _ranking(spark_get: Callable[[], Any], lake: Lake, day: dt.date, cfg: DualRecConfig, inter: pa.Table | None) -> dict[str, Any]:
    """ranking.auc by task from dualrec.ranking.ranking_auc, plus our own AUC on D+1 exposures."""
    out: dict[str, Any] = {"auc": {t: None for t in RANK_TASKS}, "auc_logged": {t: None for t in RANK_TASKS}}
    try:
        from dualrec.ranking import ranking_auc  # type: ignore[attr-defined]
    except (ImportError, AttributeError) as e:
        ranking_auc = None
        log.warning("ranking.auc is null: dualrec.ranking.ranking_auc is not available (%s)", e)
    if ranking_auc is not None:
        res = ranking_auc(spark_get(), lake, day, cfg)
        if isinstance(res, dict):
            aucs = res.get("auc") if isinstance(res.get("auc"), dict) else res
            out["auc"].update({str(k): _f(v) for k, v in aucs.items() if not isinstance(v, dict)})
            for k, v in res.items():
                if k != "auc" and isinstance(v, dict):
                    out[str(k)] = {str(kk): (_f(vv) if not isinstance(vv, dict) else vv) for kk, vv in v.items()}
    if inter is not None and lake.has_partition("ranked", day) and inter.num_rows:
        items = pc.unique(inter.column("item_id"))
        cols = ["item_id", "user_id", *[f"s_{t}" for t in RANK_TASKS]]
        r = _read(lake, "ranked", day, cols, pads.field("item_id").isin(items))
        if r is not None and r.num_rows:
            j = r.join(inter.select(["item_id", "user_id", *[f"is_{t}" for t in RANK_TASKS]]), ["item_id", "user_id"], join_type="inner")
            for t in RANK_TASKS:
                out["auc_logged"][t] = roc_auc(j.column(f"s_{t}").to_numpy(), j.column(f"is_{t}").to_numpy() > 0)
            out["logged_pairs"] = int(j.num_rows)
    return out


# ============================================================================ evaluate
def evaluate(lake_root_or_Lake: str | Lake, day: dt.date | str, cfg: DualRecConfig | None = None, spark=None) -> dict:
    """All SPEC section 6 figures for day D as one nested JSON-ready dict (null where unknown).

    Reads only D's outputs and D+1's logs (plus the synthetic truth when present); writes nothing.
    ``spark`` is only needed by other stages' metric functions; it is created lazily if they
    are importable and none was passed.
    """
    lake = lake_root_or_Lake if isinstance(lake_root_or_Lake, Lake) else Lake(str(lake_root_or_Lake))
    day = parse_date(day)
    cfg = cfg or DualRecConfig()
    nxt = day + dt.timedelta(days=1)
    L, Q = cfg.dispatch.L, cfg.dispatch.Q
    rng = np.random.default_rng(step_seed(cfg.seed, day, "metrics.baselines"))
    spark_box: list[Any] = [spark]

    def get_spark():
        if spark_box[0] is None:
            from dualrec.spark import get_spark as _gs

            spark_box[0] = _gs(cfg.spark)
        return spark_box[0]

    inputs = {f"{t}@{'D' if d == day else 'D+1'}": lake.has_partition(t, d) for t, d in
              [("items", day), ("activity_scores", day), ("candidates", day), ("ranked", day), ("match_sets", day),
               ("user_match_sets", day), ("available_users", day), ("visits", day), ("visits", nxt), ("interactions", nxt)]}
    items_t = _read(lake, "items", day, ["item_id", "upload_ts"])
    scores_t = _read(lake, "activity_scores", day)
    match_t = _read(lake, "match_sets", day, ["item_id", "user_id", "batch", "channels"])
    visits_d = _ids(_read(lake, "visits", day, ["user_id"]))
    visits_n = _ids(_read(lake, "visits", nxt, ["user_id"]))
    inter_n = _read(lake, "interactions", nxt)
    match = (
        match_t.select(["item_id", "user_id"]).to_pandas()
        if match_t is not None
        else pd.DataFrame({"item_id": pd.Series([], dtype=np.int64), "user_id": pd.Series([], dtype=np.int64)})
    )
    available = None
    if scores_t is not None:
        av_mask = scores_t.column("available").to_numpy(zero_copy_only=False).astype(bool)
        available = scores_t.column("user_id").to_numpy()[av_mask]

    # ------------------------------------------------------------------ activity
    activity = activity_figures(
        _ids(scores_t) if scores_t is not None else np.zeros(0, np.int64),
        scores_t.column("p_active").to_numpy() if scores_t is not None else np.zeros(0),
        visits_d,
        visits_n,
        match["user_id"].to_numpy() if match_t is not None else None,
        cfg.metrics.calibration_bins,
    )
    activity["source"] = "dualrec.metrics"
    activity["available_users"] = None if available is None else int(available.size)
    activity["active_next_day"] = None if visits_n is None else int(np.unique(visits_n).size)
    activity["paper_hit_rate"] = dict(PAPER_HIT_RATE)
    if visits_n is not None:
        try:
            from dualrec.activity import activity_metrics  # type: ignore[attr-defined]
        except (ImportError, AttributeError) as e:
            activity_metrics = None
            log.warning("activity figures from dualrec.metrics (dualrec.activity.activity_metrics unavailable: %s)", e)
        if activity_metrics is not None:
            theirs = activity_metrics(get_spark(), lake, day) or {}
            for k, v in theirs.items():  # theirs win; our calibration curve stays
                activity[str(k)] = _f(v)
            activity["source"] = "dualrec.activity.activity_metrics"

    # ------------------------------------------------------------------ dispatch
    item_ids = _ids(items_t, "item_id")
    dispatch = dispatch_figures(match, item_ids, available, L, Q)
    if match_t is None:
        for k in ("items_covered", "items_full", "max_du", "users_matched", "pairs", "coverage", "full_share"):
            dispatch[k] = None
        dispatch["du_hist"] = None
    share, share_any = channel_shares(match_t.column("channels")) if match_t is not None else ({}, {})
    chans = list(dict.fromkeys([*channel_names(cfg), *share]))  # configured channels, then any in the data
    dispatch["channel_share"] = {c: share.get(c, 0.0 if match_t is not None and len(match) else None) for c in chans}
    dispatch["channel_share_any"] = {c: share_any.get(c, 0.0 if match_t is not None and len(match) else None) for c in chans}
    dispatch["paper_channel_share"] = dict(PAPER_CHANNEL_SHARE)
    dispatch["batches"] = int(pc.count_distinct(match_t.column("batch")).as_py()) if match_t is not None and match_t.num_rows else None
    dispatch["du_hist_no_store"] = _no_store_hist(lake, day, L, spark)
    if dispatch["du_hist_no_store"]:
        dispatch["max_du_no_store"] = len(dispatch["du_hist_no_store"]) - 1

    # ------------------------------------------------------------------ quality & retrieval
    sample = np.zeros(0, np.int64)
    if items_t is not None and items_t.num_rows:
        order = np.argsort(items_t.column("upload_ts").cast(pa.int64()).to_numpy(), kind="stable")
        ordered = item_ids[order]
        if ordered.size > cfg.metrics.max_items:
            keep = np.sort(rng.choice(ordered.size, size=cfg.metrics.max_items, replace=False))
            ordered = ordered[keep]
        sample = ordered
    score_fn = _truth_scorer(lake, nxt)
    cand_long = None
    if lake.has_partition("candidates", day) and sample.size:
        ct = _read(lake, "candidates", day, ["item_id", "user_id", "channels"], pads.field("item_id").isin(pa.array(sample)))
        cand_long = _candidates_long(ct)
        chans = list(dict.fromkeys([*chans, *pd.unique(cand_long["channel"])]))
    popularity = np.zeros(0)
    if scores_t is not None:
        popularity = scores_t.column("p_active").to_numpy()[av_mask]
    quality, retrieval = quality_figures(
        score_fn if available is not None else None,
        sample,
        match,
        available if available is not None else np.zeros(0, np.int64),
        popularity,
        _positives(inter_n),
        cand_long,
        chans,
        L,
        Q,
        rng,
        cfg.metrics.oracle_pool_users,
        cfg.metrics.truth_chunk_pairs,
    )
    if available is None:
        for k in ("recall_at_l_random", "recall_at_l_popular"):
            quality[k] = None
    quality["truth_available"] = score_fn is not None
    if cand_long is not None and sample.size:
        per = cand_long.drop_duplicates(["item_id", "user_id"]).groupby("item_id").size().reindex(sample, fill_value=0)
        retrieval["candidates_per_item"] = _f(per.mean())
        retrieval["channel_candidates_per_item"] = {
            c: _f(cand_long[cand_long["channel"] == c].groupby("item_id").size().reindex(sample, fill_value=0).mean()) for c in chans
        }

    result = {
        "date": day.isoformat(),
        "eval_day": nxt.isoformat(),
        "inputs": inputs,
        "activity": activity,
        "dispatch": dispatch,
        "quality": quality,
        "index": index_recall(lake, day),
        "retrieval": retrieval,
        "ranking": _ranking(get_spark, lake, day, cfg, inter_n),
        "cost": cost_figures(lake, day),
    }
    return json.loads(json.dumps(result, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return _f(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (dt.date, dt.datetime)):
        return o.isoformat()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ============================================================================ metrics table rows
REQUIRED_PATHS: tuple[str, ...] = (
    "activity.auc", "activity.auc_baseline_last_day", "activity.hit_rate", "activity.hit_rate_all_users",
    "dispatch.items", "dispatch.items_covered", "dispatch.items_full", "dispatch.max_du", "dispatch.q",
    "dispatch.l", "dispatch.users_matched", "dispatch.channel_share",
    "quality.feedback_per_pair", "quality.feedback_per_pair_random", "quality.feedback_per_pair_popular",
    "quality.feedback_per_pair_oracle", "quality.recall_at_l", "quality.recall_at_l_random",
    "quality.recall_at_l_popular", "index.recall_at_k", "retrieval.truth_recall", "ranking.auc",
    "cost.stage_seconds",
)
"""The SPEC section 6 paths ``evaluate --json`` must always contain."""


def flatten(metrics: dict, prefix: str = "") -> list[dict[str, Any]]:
    """Nested metrics -> rows (metric, value, detail) for the ``metrics`` table.

    Numbers go to ``value``; lists, strings and empty objects go to ``detail`` (JSON), so
    :func:`unflatten` can rebuild the nested object.
    """
    rows: list[dict[str, Any]] = []
    for k, v in metrics.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            rows.extend(flatten(v, path + "."))
        elif isinstance(v, bool):
            rows.append({"metric": path, "value": float(v), "detail": "bool"})
        elif isinstance(v, (int, float)) or v is None:
            rows.append({"metric": path, "value": _f(v), "detail": None})
        else:
            rows.append({"metric": path, "value": None, "detail": json.dumps(v)})
    return rows


def unflatten(rows: list[dict[str, Any]]) -> dict:
    """Inverse of :func:`flatten` (ints come back as floats)."""
    out: dict = {}
    for r in rows:
        node = out
        *parents, leaf = str(r["metric"]).split(".")
        for p in parents:
            node = node.setdefault(p, {})
        detail = r.get("detail")
        if detail == "bool":
            node[leaf] = bool(r["value"])
        elif detail is not None:
            node[leaf] = json.loads(detail)
        else:
            v = r.get("value")
            node[leaf] = None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
    return out


def metrics_table(metrics: dict) -> pa.Table:
    """The ``metrics`` partition of a day."""
    rows = flatten(metrics)
    return pa.Table.from_pylist(rows, schema=arrow_schema("metrics"))


def get_path(metrics: dict, path: str) -> Any:
    """Value at a dotted path; KeyError names the missing part."""
    node: Any = metrics
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(path)
        node = node[part]
    return node
