"""Dispatch policies over a day (``DispatchConfig.policy``), on NumPy arrays.

``arrival``
    The paper's Algorithm 1 exactly: batches in upload order, items in upload order within a
    batch, each takes its best remaining available users up to L.
``matching``
    Batches in order; within a batch, greedy by g under both caps.
``paced`` (online)
    Before batch b it sets one per-item budget
    ``B_b = clip(floor(C_b / (n_b + F_b)), 1, L)``: C_b = remaining slots of the store, n_b =
    the batch's items, F_b = forecast of the uploads still to come after b, taken from earlier
    days' upload curves (mean uploads per batch; today's own rate so far when there is no
    history). Then ``matching`` with item cap B_b. It never looks at later batches, so an item
    uploaded at 6 pm still finds users; the last batch may take up to L.
``optimal`` (whole day at once)
    One min-cost flow over all of the day's edges (each item's candidates already respect its
    batch cutoff): maximise Σ g + Σ_i bonus_i(n_i), bonus concave in the item's user count: a
    bonus for the first user (coverage) and for each user up to a floor of
    ``ceil(floor_share · m)``, m = the fair share min(L, ⌊Q·|Ũ| / items⌋). Bonuses are in units of
    max g.

``paced`` and ``optimal`` can rank edges by g · p_active(u) (``weight_by_p_active``): g is the
expected feedback *if the user sees the item*, so in theory a pair is worth about g · p_active.
Measured on a real run of tiny it is worse (optimal 780 vs 795 expected feedback), so it is off
by default. The published g is always the ranker's g.

Default knobs (``floor_share`` 1.0 in ``floor_tiers`` 2, g only) were chosen by ``benchmarks/dispatch.py
policies --sweep`` on the real runs of tiny, small and medium: the best creator figures within 5 % of
the best expected feedback (BENCHMARKS 6b). The two tiers (bonus 1 up to m/2, ½ up to m) matter when
m·items ≈ the store's slots: a flat floor m then only caps items at m and leaves a quarter of
medium's items below m/2.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dualrec.batches import batch_of_seconds
from dualrec.lake import Lake

from dualrec.dispatch.kernels import assign_arrays, capacity_per_edge, sorted_codes
from dualrec.hashing import hash_bucket

log = logging.getLogger(__name__)

POLICIES = ("arrival", "matching", "paced", "optimal")


@dataclass(frozen=True)
class PolicyParams:
    """Knobs of ``paced`` and ``optimal`` (``DispatchConfig``)."""

    floor_share: float = 1.0
    floor_bonus: float = 1.0
    cover_bonus: float = 1.0
    weight_by_p_active: bool = False
    floor_tiers: int = 2
    max_flow_edges: int = 12_000_000

    @classmethod
    def from_config(cls, cfg: Any) -> "PolicyParams":
        return cls(
            floor_share=float(getattr(cfg, "optimal_floor_share", cls.floor_share)),
            floor_bonus=float(getattr(cfg, "optimal_floor_bonus", cls.floor_bonus)),
            cover_bonus=float(getattr(cfg, "optimal_cover_bonus", cls.cover_bonus)),
            weight_by_p_active=bool(getattr(cfg, "weight_by_p_active", cls.weight_by_p_active)),
            floor_tiers=int(getattr(cfg, "optimal_floor_tiers", cls.floor_tiers)),
            max_flow_edges=int(getattr(cfg, "optimal_max_flow_edges", cls.max_flow_edges)),
        )


def kernel_scores(policy: str, g: np.ndarray, p_active: np.ndarray | None, params: PolicyParams) -> np.ndarray:
    """The score a policy's kernel ranks by: g, or g · p_active for paced/optimal (see module doc)."""
    if p_active is None or policy not in ("paced", "optimal") or not params.weight_by_p_active:
        return np.asarray(g)
    return np.asarray(g, dtype=np.float64) * np.asarray(p_active, dtype=np.float64)


def check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"dispatch.policy must be one of {POLICIES}, got {policy!r}")


def fair_share(n_items: int, n_users: int, L: int, Q: int) -> int:
    """m = min(L, ⌊Q·|Ũ| / items⌋): the users per item if the store's slots were split evenly."""
    if n_items <= 0:
        return int(L)
    return int(min(L, (Q * n_users) // n_items))


def upload_curve(prior_batches: list[np.ndarray], batches_per_day: int) -> np.ndarray | None:
    """Mean uploads per batch over earlier days, from each day's batch index per item (None: no history)."""
    days = [np.asarray(b, dtype=np.int64) for b in prior_batches]
    if not days:
        return None
    counts = np.stack([np.bincount(b, minlength=batches_per_day)[:batches_per_day] for b in days])
    return counts.mean(axis=0).astype(np.float64)


def prior_upload_batches(lake: Lake, day: dt.date, days: int, batches_per_day: int) -> list[np.ndarray]:
    """Batch index of every upload of each of the ``days`` days before ``day`` that has an ``items`` partition."""
    out = []
    for k in range(1, days + 1):
        d = day - dt.timedelta(days=k)
        if not lake.has_partition("items", d):
            continue
        ts = lake.read_table("items", d, ["upload_ts"]).column("upload_ts")
        secs = pc.cast(ts.cast(pa.timestamp("us", tz="UTC")), pa.int64()).to_numpy().astype(np.float64) / 1e6
        midnight = dt.datetime(d.year, d.month, d.day, tzinfo=dt.timezone.utc).timestamp()
        out.append(batch_of_seconds(secs - midnight, batches_per_day))
    return out


def paced_curve(lake: Lake, day: dt.date, cfg) -> np.ndarray | None:
    """The upload curve ``paced`` forecasts with (earlier days' uploads), None for any other policy.

    ``cfg``: a :class:`~dualrec.config.DispatchConfig`. One definition for the stage, the experiment
    arms and the evaluation's whole-population runs, so all three forecast alike."""
    if cfg.policy != "paced":
        return None
    return upload_curve(prior_upload_batches(lake, day, cfg.forecast_days, cfg.batches_per_day), cfg.batches_per_day)


def forecast_remaining(curve: np.ndarray | None, b: int, batches_per_day: int, seen_so_far: int) -> float:
    """Uploads expected after batch b: the curve's tail, or today's own rate so far without history."""
    if curve is not None:
        return float(curve[b + 1 :].sum())
    return seen_so_far / (b + 1) * (batches_per_day - b - 1)


def paced_budget(slots_left: int, n_batch_items: int, forecast_rest: float, L: int) -> int:
    """B_b = clip(floor(C_b / (n_b + F_b)), 1, L); 0 when the store is full."""
    if slots_left <= 0 or n_batch_items <= 0:
        return 0
    return int(min(L, max(1, math.floor(slots_left / (n_batch_items + max(forecast_rest, 0.0))))))


def optimal_floor(n_items: int, n_users: int, L: int, Q: int, params: PolicyParams) -> int:
    return int(math.ceil(params.floor_share * fair_share(n_items, n_users, L, Q)))


SHARD_SALT = 0x5EED_F10
"""Salt of the user hash that assigns users to flow shards (fixed: reruns must shard alike)."""


def flow_shards(n_edges: int, max_flow_edges: int) -> int:
    """Shards of the day's flow: 1 up to ``max_flow_edges`` edges, else ceil(edges / max)."""
    return max(1, -(-int(n_edges) // max(int(max_flow_edges), 1)))


def split_largest_remainder(total: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Split ``total[i]`` over the columns of ``weights[i]`` in proportion (Hamilton's method).

    Every row's parts sum to its total (rows of zero weight get nothing); remainders go to the
    largest fractional parts, ties to the lower column, so the split is deterministic.
    """
    total = np.asarray(total, dtype=np.int64)
    w = np.asarray(weights, dtype=np.float64)
    rows = w.sum(axis=1)
    share = np.divide(w, rows[:, None], out=np.zeros_like(w), where=rows[:, None] > 0)
    exact = share * total[:, None]
    base = np.floor(exact).astype(np.int64)
    left = np.where(rows > 0, total - base.sum(axis=1), 0)
    order = np.argsort(-(exact - base), axis=1, kind="stable")  # largest remainder first, ties by column
    bump = np.arange(w.shape[1])[None, :] < left[:, None]
    np.put_along_axis(base, order, np.take_along_axis(base, order, axis=1) + bump, axis=1)
    return base


def assign_optimal(item_ids, user_ids, g, item_rank, capacity, L: int, floor: int, params: PolicyParams) -> np.ndarray:
    """The ``optimal`` kernel call (shared by the NumPy driver and the Spark stage).

    Up to ``params.max_flow_edges`` edges it is one exact min-cost flow. Above, the flow's memory
    (OR-tools holds every arc and its reverse, ≈ 10 × the edges' own bytes) would exceed a task,
    so users are hashed into S shards and each shard solves its own flow: a user's cap Q stays
    exact (all its edges are in one shard); each item's cap L and floor are split over the shards
    in proportion to its edges there (largest remainder), its cover bonus goes to the shard with
    most of its edges, and every shard prices the bonuses on the day's max |g|. What is lost
    against the single flow is moving an item's slots between shards (docs/scaling.md §6).
    """
    kw = dict(floor_bonus=params.floor_bonus, floor_tiers=params.floor_tiers)
    shards = flow_shards(len(item_ids), params.max_flow_edges)
    if shards == 1:
        return assign_arrays(item_ids, user_ids, g, item_rank, capacity, L, "flow", floor=floor,
                             cover_bonus=params.cover_bonus, **kw)
    item_ids = np.asarray(item_ids, dtype=np.int64)
    user_ids = np.asarray(user_ids, dtype=np.int64)
    g, item_rank = np.asarray(g), np.asarray(item_rank, dtype=np.int64)
    cap_e = capacity_per_edge(user_ids, capacity)  # per edge once, sliced per shard
    shard = hash_bucket(user_ids, shards, salt=SHARD_SALT)
    uniq_i, iidx = sorted_codes(item_ids)
    n_items = uniq_i.size
    counts = np.bincount(iidx * shards + shard, minlength=n_items * shards).reshape(n_items, shards)
    cap_is = split_largest_remainder(np.minimum(int(L), counts.sum(axis=1)), counts)
    floor_is = split_largest_remainder(np.full(n_items, int(floor)), counts)
    home = np.argmax(counts, axis=1)  # first column of the max: deterministic
    g_top = float(np.max(np.abs(g))) if g.size else 1.0
    mask = np.zeros(len(item_ids), dtype=bool)
    for s in range(shards):
        sel = np.flatnonzero(shard == s)
        if not sel.size:
            continue
        it = iidx[sel]
        m = assign_arrays(item_ids[sel], user_ids[sel], g[sel], item_rank[sel], cap_e[sel], cap_is[it, s], "flow",
                          floor=floor_is[it, s], cover_bonus=np.where(home[it] == s, params.cover_bonus, 0.0),
                          g_top=g_top, **kw)
        mask[sel[m]] = True
        log.info("optimal: flow shard %d/%d: %d edges, %d assigned", s + 1, shards, sel.size, int(m.sum()))
    return mask


def batch_kernel(policy: str) -> str:
    """The per-batch kernel of an online policy."""
    return {"arrival": "arrival", "matching": "matching", "paced": "matching"}[policy]


def dispatch_day_arrays(
    batch: Any, item_ids: Any, user_ids: Any, g: Any, item_rank: Any, available_users: Any, L: int, Q: int,
    policy: str = "arrival", *, batches_per_day: int | None = None, curve: np.ndarray | None = None,
    n_items: int | None = None, params: PolicyParams = PolicyParams(), p_active: Any = None,
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """A whole day in NumPy: batches in order, the store carried across them (the same rules as
    the Spark stage; benchmarks and evaluation use it).

    ``n_items``: the day's uploads (default: items with edges); ``curve``: :func:`upload_curve`
    of earlier days (``paced``); ``p_active``: per edge, the user's p_active (see
    :func:`kernel_scores`). Returns the selected-edge mask and, per batch, |D_u| of every
    user in ``available_users`` (sorted by user_id) after that batch.
    """
    check_policy(policy)
    batch = np.asarray(batch, dtype=np.int64)
    item_ids = np.asarray(item_ids, dtype=np.int64)
    user_ids = np.asarray(user_ids, dtype=np.int64)
    g = kernel_scores(policy, np.asarray(g), p_active, params)
    item_rank = np.asarray(item_rank, dtype=np.int64)
    users = np.unique(np.asarray(available_users, dtype=np.int64))
    nb = int(batches_per_day if batches_per_day is not None else (batch.max() + 1 if batch.size else 1))
    n_items = int(np.unique(item_ids).size if n_items is None else n_items)
    matched = np.zeros(len(users), dtype=np.int64)
    pos = np.minimum(np.searchsorted(users, user_ids), max(len(users) - 1, 0))
    known = (users[pos] == user_ids) if len(users) else np.zeros(len(user_ids), dtype=bool)
    mask = np.zeros(len(g), dtype=bool)
    states: dict[int, np.ndarray] = {}
    if policy == "optimal":
        sel = np.flatnonzero(known)
        floor = optimal_floor(n_items, len(users), L, Q, params)
        m = assign_optimal(item_ids[sel], user_ids[sel], g[sel], item_rank[sel], Q, L, floor, params)
        mask[sel[m]] = True
        chosen = sel[m]
        cb, cp = batch[chosen], pos[chosen]
        inb = (cb >= 0) & (cb < nb)
        per_batch = np.bincount(cb[inb] * len(users) + cp[inb], minlength=nb * len(users)).reshape(nb, len(users))
        after = np.cumsum(per_batch, axis=0)  # |D_u| after each batch, all batches at once
        for b in range(nb):
            states[b] = after[b]
        return mask, states
    items_per_batch = np.zeros(nb, dtype=np.int64)
    if item_ids.size:  # every item of a batch counts, even one whose users are all unavailable
        ub = np.unique(np.stack([batch, item_ids]), axis=1)
        items_per_batch = np.bincount(ub[0], minlength=nb)[:nb]
    seen = 0
    for b in range(nb):
        seen += int(items_per_batch[b])
        sel = np.flatnonzero((batch == b) & known)
        if sel.size:
            cap = Q - matched[pos[sel]]
            cap_item = L
            if policy == "paced":
                slots = int((Q - matched).sum())
                cap_item = paced_budget(slots, int(items_per_batch[b]), forecast_remaining(curve, b, nb, seen), L)
            m = assign_arrays(item_ids[sel], user_ids[sel], g[sel], item_rank[sel], cap, cap_item, batch_kernel(policy))
            mask[sel[m]] = True
            matched += np.bincount(pos[sel[m]], minlength=len(users))
        states[b] = matched.copy()
    return mask, states
