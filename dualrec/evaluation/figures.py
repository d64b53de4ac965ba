"""Day figures (SPEC section 6), each defined once, as pure functions over small arrays/frames.

Every function here can be checked on ten hand-made rows; :mod:`dualrec.evaluation.day`
reads the lake and wires them up.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from dualrec.dispatch import fair_share
from dualrec.stats import roc_auc

PAPER_CHANNEL_SHARE = {"two_tower": 0.587, "i2i2u": 0.385, "i2u2u": 0.0279}
"""Paper Table 3: exposure ratio of the retrieval channels in the deployed system."""
PAPER_HIT_RATE = {"without_activity_model": 0.49, "with_activity_model": 0.82}
PAPER_RANK_AUC = {"baseline": 0.901, "with_sa_ef": 0.913}


def jf(x: Any) -> float | None:
    """JSON-safe float: NaN/inf/None become None (the SPEC wants null, never NaN)."""
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None




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


def gini(values: np.ndarray) -> float | None:
    """Gini coefficient of non-negative values (0 = all equal, -> 1 = one holds everything)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    n = v.size
    if n == 0 or v.sum() <= 0:
        return None if n == 0 else 0.0
    cum = np.cumsum(v)
    return float((n + 1 - 2 * (cum / cum[-1]).sum()) / n)


# ============================================================================ activity
def activity_figures(
    user_ids: np.ndarray,
    p_active: np.ndarray,
    available: np.ndarray,
    active_today: np.ndarray | None,
    active_next: np.ndarray | None,
    dispatched_users: np.ndarray | None,
    bins: int = 10,
) -> dict[str, Any]:
    """Activity AUC, last-day baseline AUC and hit rates over the users of ``activity_scores``.

    * ``hit_rate``: share of distinct dispatched users active on D+1 (paper 5.2: 82 %);
    * ``hit_rate_available``: share of the available users active on D+1;
    * ``hit_rate_all_users``: share of every scored (known) user active on D+1, the hit rate of
      dispatching without the activity model (paper: 49 %).
    """
    out: dict[str, Any] = {k: None for k in ("auc", "auc_baseline_last_day", "hit_rate", "hit_rate_available",
                                              "hit_rate_all_users")}
    out["calibration"] = []
    if active_next is None:
        return out
    user_ids = np.asarray(user_ids, dtype=np.int64)
    y = np.isin(user_ids, active_next)
    if user_ids.size:
        out["auc"] = roc_auc(y, p_active)
        out["hit_rate_all_users"] = jf(y.mean())
        out["calibration"] = reliability_curve(p_active, y, bins)
        if active_today is not None:
            out["auc_baseline_last_day"] = roc_auc(y, np.isin(user_ids, active_today).astype(np.float64))
        av = np.asarray(available, dtype=bool)
        if av.any():
            out["hit_rate_available"] = jf(y[av].mean())
    if dispatched_users is not None and len(dispatched_users):
        du = np.unique(np.asarray(dispatched_users, dtype=np.int64))
        out["hit_rate"] = jf(np.isin(du, active_next).mean())
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


def channel_shares(channels: pa.Array | pa.ChunkedArray) -> tuple[dict[str, float], dict[str, float]]:
    """Exposure share per retrieval channel over dispatched pairs.

    ``share``: each pair's unit of exposure split equally among the channels that found it, so the
    shares sum to 1 (comparable with paper Table 3). ``any``: share of pairs each channel found.
    """
    if isinstance(channels, pa.ChunkedArray):
        channels = channels.combine_chunks() if channels.num_chunks else pa.array([], pa.list_(pa.string()))
    n = len(channels)
    if n == 0:
        return {}, {}
    lens = pc.fill_null(pc.list_value_length(channels), 0).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(channels).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(channels).to_numpy(zero_copy_only=False)
    df = pd.DataFrame({"c": flat, "w": 1.0 / lens[parents], "p": parents})
    frac = df.groupby("c")["w"].sum() / n
    anyc = df.drop_duplicates(["c", "p"]).groupby("c").size() / n
    return {str(k): float(v) for k, v in frac.items()}, {str(k): float(v) for k, v in anyc.items()}


def users_per_item(match: pd.DataFrame, item_ids: np.ndarray) -> np.ndarray:
    """Dispatched users of each of ``item_ids`` (0 for an item nobody got)."""
    per = match.groupby("item_id").size()
    return per.reindex(np.asarray(item_ids, dtype=np.int64), fill_value=0).to_numpy().astype(np.int64)


def creator_figures(per_item: np.ndarray, n_available: int | None, L: int, Q: int) -> dict[str, Any]:
    """Creator-side figures: coverage, the fair share m, share of items with >= m/2 users, Gini."""
    n = int(per_item.size)
    m = fair_share(n, n_available, L, Q) if n_available is not None else None
    return {
        "coverage": jf((per_item > 0).mean()) if n else None,
        "fair_share": m,
        "fair_served": jf((per_item >= (m or 0) / 2).mean()) if n and m is not None else None,
        "users_per_item_gini": gini(per_item) if n else None,
    }


def coverage_by_hour(per_item: np.ndarray, upload_hour: np.ndarray) -> list[float | None]:
    """Share of items covered (>= 1 user), by upload hour (UTC) 0..23; null for an hour with no uploads."""
    h = np.asarray(upload_hour, dtype=np.int64)
    n = np.bincount(h, minlength=24)[:24]
    c = np.bincount(h, weights=(per_item > 0).astype(np.float64), minlength=24)[:24]
    return [jf(c[k] / n[k]) if n[k] else None for k in range(24)]


def dispatch_figures(
    match: pd.DataFrame, item_ids: np.ndarray | None, available_users: np.ndarray | None, L: int, Q: int,
    upload_hour: np.ndarray | None = None,
) -> dict[str, Any]:
    """Coverage, creator figures, |D_u| distribution and usage from match_sets rows (item_id, user_id)."""
    items_present = item_ids is not None
    # order kept (upload_hour is aligned with item_ids); an item listed twice counts once
    item_ids = pd.unique(np.asarray(item_ids if items_present else match["item_id"].unique(), dtype=np.int64))
    per_item = users_per_item(match, item_ids)
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
        **creator_figures(per_item, n_avail, L, Q),
        "full_share": jf((per_item >= L).mean()) if n_items else None,
        "users_per_item_mean": jf(per_item.mean()) if n_items else None,
        "users_per_item_hist": _hist_bins(per_item, L),
        "coverage_by_hour": coverage_by_hour(per_item, upload_hour) if upload_hour is not None else None,
        "pairs": int(len(match)),
        "users_matched": n_users,
        "available_users": n_avail,
        "share_available_used": jf(n_users / n_avail) if n_avail else None,
        "max_du": int(counts.max()) if n_users else 0,
        "mean_du": jf(counts.mean()) if n_users else None,
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


# ============================================================================ quality
def feedback_figures(item_ids: np.ndarray, items_sample: np.ndarray, values: np.ndarray) -> dict[str, float | None]:
    """Total and per-pair expected visible feedback of one assignment, and the share of the
    sampled items whose users' expected feedback sums to >= 1 (offline ExpoReach)."""
    values = np.asarray(values, dtype=np.float64)
    per_item = pd.Series(values).groupby(np.asarray(item_ids, dtype=np.int64)).sum()
    per_item = per_item.reindex(np.asarray(items_sample, dtype=np.int64), fill_value=0.0)
    return {
        "expected_feedback": float(values.sum()),
        "feedback_per_pair": jf(values.mean()) if values.size else None,
        "items_reaching_feedback": jf((per_item.to_numpy() >= 1.0).mean()) if len(items_sample) else None,
    }


def logged_recall(
    assigned: pd.DataFrame, positives: pd.DataFrame, items: np.ndarray | None = None
) -> dict[str, float | int | None]:
    """Recall of logged positives: share of each item's logged positive users found among its
    assigned users. ``micro`` = all hits / all positives; ``macro`` = mean over items with >= 1
    positive. Both frames have columns item_id, user_id; ``items`` restricts to a set of items.
    """
    pos = positives[["item_id", "user_id"]].drop_duplicates()
    if items is not None:
        pos = pos[pos["item_id"].isin(items)]
    if pos.empty:
        return {"micro": None, "macro": None, "items": 0, "positives": 0}
    hit = pos.merge(assigned[["item_id", "user_id"]].drop_duplicates(), how="left", on=["item_id", "user_id"], indicator=True)
    hit["h"] = (hit["_merge"] == "both").astype(np.float64)
    per_item = hit.groupby("item_id")["h"].mean()
    return {"micro": jf(hit["h"].mean()), "macro": jf(per_item.mean()), "items": int(per_item.size), "positives": int(len(pos))}


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
        out[ch] = jf((num[valid] / denom[valid]).mean()) if valid.any() else None
    return out
