"""NumPy assignment kernels of one batch: edges (item, user, g) in, a boolean mask out.

``arrival``
    Algorithm 1 as written: items in upload order (ties by item_id), each takes its best
    remaining available users (g desc, ties by user_id) up to its cap, the store is updated item
    by item (a serial dictatorship of items over users).
``matching``
    Greedy by global score (g desc, then upload order, then user_id) under both caps. Computed in
    rounds: an edge that is among the top-``rem`` live edges of both its item and its user is
    accepted by the sequential greedy whatever happens to the other edges, so a round accepts all
    such edges at once. The result equals the sequential greedy (a 1/2-approximation of the
    max-weight b-matching).
``flow``
    The exact maximum of Σ g + Σ_i bonus_i(n_i) under both caps, by min-cost flow (OR-tools),
    where bonus_i is concave in the item's user count n_i: ``cover_bonus`` for the first user,
    ``floor_bonus`` for each further user up to ``floor``, 0 beyond (decreasing-value arcs from
    the source to the item). ``floor_tiers`` T > 1 makes the floor itself concave: the floor is
    cut into T equal tiers and tier t (0-based) earns ``floor_bonus · (T − t) / T`` per user, so
    the flow fills every item's first tier before any item's second (a flat floor is indifferent
    between one item's last floor user and another's first ones). With both bonuses 0 it is the max-weight b-matching, which is what
    evaluation uses for ``quality.expected_feedback_optimum``.

The caller's item cap may be a scalar L or one value per edge (all edges of an item agree).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from ortools.graph.python import min_cost_flow

log = logging.getLogger(__name__)

KERNELS = ("arrival", "matching", "flow")
_COST_SCALE = 10_000_000
"""g is scaled so that the largest |g| is this many integer cost units (flow costs are integers)."""


def capacity_per_edge(user_ids: np.ndarray, capacity_by_user: Any) -> np.ndarray:
    """Remaining capacity of each edge's user.

    ``capacity_by_user`` is a mapping user_id -> capacity (users absent from it have 0: they
    are not available), a pandas Series indexed by user_id, a scalar (same capacity for
    everybody), or an array aligned with ``user_ids`` (all edges of one user must agree).
    """
    n = len(user_ids)
    if np.isscalar(capacity_by_user):
        return np.full(n, int(capacity_by_user), dtype=np.int64)
    if isinstance(capacity_by_user, pd.Series):
        capacity_by_user = dict(zip(capacity_by_user.index.to_numpy(), capacity_by_user.to_numpy()))
    if isinstance(capacity_by_user, Mapping):
        if not capacity_by_user:
            return np.zeros(n, dtype=np.int64)
        keys = np.fromiter(capacity_by_user.keys(), dtype=np.int64, count=len(capacity_by_user))
        vals = np.fromiter(capacity_by_user.values(), dtype=np.int64, count=len(capacity_by_user))
        order = np.argsort(keys, kind="stable")
        keys, vals = keys[order], vals[order]
        pos = np.minimum(np.searchsorted(keys, user_ids), len(keys) - 1)
        return np.where(keys[pos] == user_ids, vals[pos], 0).astype(np.int64)
    cap = np.asarray(capacity_by_user, dtype=np.int64)
    if cap.shape != (n,):
        raise ValueError(
            f"capacity_by_user as an array must be aligned with user_ids (length {n}), got shape {cap.shape}; "
            "pass a dict user_id -> capacity otherwise"
        )
    _check_constant_per_group(user_ids, cap, "capacity_by_user: edges of the same user carry different capacities")
    return cap


def sorted_codes(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct keys, each key's index among them): ``np.unique(keys, return_inverse=True)``
    by hashing instead of sorting every key (several times faster on a day's edges)."""
    codes, uniq = pd.factorize(np.asarray(keys), sort=True)
    return np.asarray(uniq), codes.astype(np.int64, copy=False)


def canonical_order(item_rank: np.ndarray, iidx: np.ndarray, n_items: int, uidx: np.ndarray, n_users: int) -> np.ndarray:
    """``np.lexsort((user_ids, item_ids, item_rank))`` (upload order, then item, then user; stable) from
    order-preserving item and user codes: one stable argsort of a combined key when it fits in int64
    (near-linear when the edges already come in this order), the lexsort otherwise."""
    if not len(iidx):
        return np.zeros(0, dtype=np.int64)
    r = np.asarray(item_rank, dtype=np.int64)
    lo = int(r.min())
    span = (int(r.max()) - lo + 1) * max(n_items, 1) * max(n_users, 1)
    if span >= 2**62:
        return np.lexsort((uidx, iidx, r))
    key = ((r - lo) * max(n_items, 1) + iidx) * max(n_users, 1) + uidx
    return np.argsort(key, kind="stable")


def _check_constant_per_group(keys: np.ndarray, values: np.ndarray, message: str) -> None:
    if len(keys) == 0:
        return
    _, inv = sorted_codes(keys)
    lo = np.full(inv.max() + 1, np.iinfo(np.int64).max)
    hi = np.full(inv.max() + 1, np.iinfo(np.int64).min)
    np.minimum.at(lo, inv, values)
    np.maximum.at(hi, inv, values)
    if (lo != hi).any():
        raise ValueError(message)


def check_edges(item_ids: np.ndarray, user_ids: np.ndarray, g: np.ndarray) -> None:
    """Aligned arrays and finite scores (a NaN would silently reorder every kernel)."""
    if not (len(item_ids) == len(user_ids) == len(g)):
        raise ValueError("item_ids, user_ids and g must have the same length")
    if len(g) and not np.isfinite(g).all():
        raise ValueError(f"g has {int((~np.isfinite(g)).sum())} non-finite value(s)")


def group_rank(sorted_groups: np.ndarray, live_sorted: np.ndarray) -> np.ndarray:
    """0-based rank of each position among the live positions of its group (arrays in group order)."""
    n = len(sorted_groups)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    is_start = np.empty(n, dtype=bool)
    is_start[0] = True
    np.not_equal(sorted_groups[1:], sorted_groups[:-1], out=is_start[1:])
    live_i = live_sorted.astype(np.int64)
    excl = np.cumsum(live_i) - live_i
    start_idx = np.maximum.accumulate(np.where(is_start, np.arange(n), 0))
    return excl - excl[start_idx]


def arrival_kernel(item_rank, item_ids, uidx, user_ids, g, cap_u, cap_i) -> np.ndarray:
    """Sequential Algorithm 1: a loop over items (not edges), vectorised inside an item."""
    n = len(g)
    chosen = np.zeros(n, dtype=bool)
    if n == 0:
        return chosen
    order = np.lexsort((user_ids, -g.astype(np.float64), item_ids, item_rank))
    u_sorted, it_sorted, ci_sorted = uidx[order], item_ids[order], cap_i[order]
    starts = np.flatnonzero(np.r_[True, it_sorted[1:] != it_sorted[:-1]])
    ends = np.r_[starts[1:], n]
    cap = cap_u.copy()
    picked = np.zeros(n, dtype=bool)
    for s, e in zip(starts.tolist(), ends.tolist()):
        us = u_sorted[s:e]
        ok = np.flatnonzero(cap[us] > 0)[: int(ci_sorted[s])]
        if ok.size:
            cap[us[ok]] -= 1
            picked[s + ok] = True
    chosen[order] = picked
    return chosen


def matching_kernel(item_rank, iidx, n_items, uidx, user_ids, g, cap_u, rem_items) -> tuple[np.ndarray, int]:
    """Greedy by global score, computed in dominance rounds (see module docstring)."""
    n = len(g)
    chosen = np.zeros(n, dtype=bool)
    if n == 0:
        return chosen, 0
    prio_order = np.lexsort((user_ids, item_rank, -g.astype(np.float64)))
    prio = np.empty(n, dtype=np.int64)
    prio[prio_order] = np.arange(n)
    idx = np.arange(n)
    oi = np.lexsort((prio, iidx))
    ou = np.lexsort((prio, uidx))
    rem_i = rem_items.astype(np.int64).copy()
    rem_u = cap_u.astype(np.int64).copy()
    live = (rem_u[uidx] > 0) & (rem_i[iidx] > 0)
    rounds = 0
    while live.any():
        w_items, w_users = iidx[idx], uidx[idx]
        rounds += 1
        r_item = np.empty(len(idx), dtype=np.int64)
        r_item[oi] = group_rank(w_items[oi], live[oi])
        r_user = np.empty(len(idx), dtype=np.int64)
        r_user[ou] = group_rank(w_users[ou], live[ou])
        dom = live & (r_item < rem_i[w_items]) & (r_user < rem_u[w_users])
        chosen[idx[dom]] = True
        rem_i -= np.bincount(w_items[dom], minlength=n_items)
        rem_u -= np.bincount(w_users[dom], minlength=len(rem_u))
        live &= ~dom
        live &= (rem_i[w_items] > 0) & (rem_u[w_users] > 0)
        n_live = int(live.sum())
        if n_live and n_live < len(idx) // 2:  # compact the working set, keeping both orders
            newpos = np.cumsum(live) - 1
            oi = newpos[oi[live[oi]]]
            ou = newpos[ou[live[ou]]]
            idx = idx[live]
            live = np.ones(len(idx), dtype=bool)
    return chosen, rounds


def flow_kernel(
    iidx: np.ndarray, n_items: int, uidx: np.ndarray, g: np.ndarray, cap_u: np.ndarray, cap_items: np.ndarray,
    floor: np.ndarray | None = None, floor_bonus: float = 0.0, cover_bonus: float | np.ndarray = 0.0,
    floor_tiers: int = 1, g_top: float | None = None,
) -> np.ndarray:
    """Max Σ g + Σ_i bonus_i(n_i) under item caps ``cap_items`` and user caps ``cap_u`` (exact).

    Bonuses are in units of max |g| (``g_top`` when given: the shards of one day share the day's
    scale); ``cover_bonus`` is a scalar or one value per item. Edges must be in a canonical order
    for reruns to agree (the solver is deterministic for a given input). Edges with g <= 0 and no
    bonus are never needed by the optimum, but are kept: the caller decides what is a candidate.
    """
    n = len(g)
    chosen = np.zeros(n, dtype=bool)
    if n == 0:
        return chosen
    n_users = len(cap_u)
    top = float(g_top if g_top is not None else np.max(np.abs(g))) or 1.0
    cover = np.broadcast_to(np.asarray(cover_bonus, dtype=np.float64), (n_items,))
    # divide first: _COST_SCALE / top overflows to inf for a subnormal top (hypothesis found 2.2e-311)
    w = np.rint(np.asarray(g, dtype=np.float64) / top * _COST_SCALE).astype(np.int64)
    cap_items = np.minimum(np.asarray(cap_items, dtype=np.int64), np.bincount(iidx, minlength=n_items))
    src, sink = 0, 1
    item_node = 2 + np.arange(n_items, dtype=np.int64)
    user_node = 2 + n_items + np.arange(n_users, dtype=np.int64)
    tails, heads, caps, costs = [], [], [], []

    def add(t, h, c, w_):
        keep = np.asarray(c) > 0
        tails.append(np.asarray(t)[keep]), heads.append(np.asarray(h)[keep])
        caps.append(np.asarray(c, dtype=np.int64)[keep]), costs.append(np.asarray(w_, dtype=np.int64)[keep])

    fl = np.zeros(n_items, np.int64) if floor is None or floor_bonus <= 0 else np.asarray(floor, dtype=np.int64)
    fl = np.clip(fl, 0, cap_items)
    first = ((cap_items > 0) & ((cover > 0) | (fl >= 1))).astype(np.int64)  # the item's first user
    mid = np.maximum(fl - first, 0)
    b_first = -np.rint((cover + floor_bonus * (fl >= 1)) * _COST_SCALE).astype(np.int64)
    add(np.full(n_items, src), item_node, first, b_first)
    tiers = max(int(floor_tiers), 1)
    done = np.zeros(n_items, np.int64)  # floor users placed in earlier tiers (the first user counts as tier 0)
    for t in range(tiers):
        upto = np.ceil(fl * (t + 1) / tiers).astype(np.int64) - first  # floor users (after the first) through tier t
        c_t = np.maximum(np.minimum(upto, mid) - done, 0)
        add(np.full(n_items, src), item_node, c_t,
            np.full(n_items, -round(floor_bonus * (tiers - t) / tiers * _COST_SCALE)))
        done += c_t
    add(np.full(n_items, src), item_node, cap_items - first - mid, np.zeros(n_items, np.int64))
    first_edge_arc = sum(len(t) for t in tails)
    tails.append(item_node[iidx]), heads.append(user_node[uidx])
    caps.append(np.ones(n, np.int64)), costs.append(-w)
    add(user_node, np.full(n_users, sink), np.maximum(cap_u, 0), np.zeros(n_users, np.int64))
    supply = int(cap_items.sum())
    add([src], [sink], [supply], [0])  # the bypass: flow that is not worth sending
    mcf = min_cost_flow.SimpleMinCostFlow()
    mcf.add_arcs_with_capacity_and_unit_cost(
        np.concatenate(tails), np.concatenate(heads), np.concatenate(caps), np.concatenate(costs)
    )
    mcf.set_nodes_supplies(np.array([src, sink]), np.array([supply, -supply]))
    status = mcf.solve()
    if status != mcf.OPTIMAL:
        raise RuntimeError(f"min-cost flow did not solve to optimality (status {status})")
    arcs = np.arange(first_edge_arc, first_edge_arc + n)
    chosen[:] = mcf.flows(arcs) > 0
    return chosen


def assign_arrays(
    item_ids: Any,
    user_ids: Any,
    g: Any,
    item_rank: Any,
    capacity_by_user: Any,
    L: Any,
    policy: str = "arrival",
    *,
    floor: Any = None,
    floor_bonus: float = 0.0,
    cover_bonus: Any = 0.0,
    floor_tiers: int = 1,
    g_top: float | None = None,
) -> np.ndarray:
    """Capacity-constrained assignment of one batch (or of a whole day treated as one batch).

    Edges are (item_ids[k], user_ids[k]) with score g[k]; ``item_rank`` is the item's upload
    position (smaller = earlier). ``capacity_by_user``: see :func:`capacity_per_edge`. ``L``: the
    item cap, a scalar or per edge. ``policy``: a kernel of :data:`KERNELS` (``floor`` and the
    bonuses are for ``flow`` only; ``floor`` and ``cover_bonus`` per edge or scalar; ``g_top``: the g
    scale of the bonuses, default max |g|). Returns the mask of selected
    edges: each item gets <= its cap, each user <= its capacity. (item, user) pairs must be unique.
    """
    if policy not in KERNELS:
        raise ValueError(f"kernel policy must be one of {KERNELS}, got {policy!r}")
    item_ids = np.asarray(item_ids, dtype=np.int64)
    user_ids = np.asarray(user_ids, dtype=np.int64)
    g = np.asarray(g)
    item_rank = np.asarray(item_rank, dtype=np.int64)
    check_edges(item_ids, user_ids, g)
    if len(item_rank) != len(item_ids):
        raise ValueError("item_rank must be aligned with item_ids")
    cap_i = np.broadcast_to(np.asarray(L, dtype=np.int64), item_ids.shape).copy()
    if (cap_i < 0).any():
        raise ValueError("L must be >= 0")
    if not np.isscalar(L):
        _check_constant_per_group(item_ids, cap_i, "L: edges of the same item carry different caps")
    cap_edge = capacity_per_edge(user_ids, capacity_by_user)
    if len(g) == 0 or not cap_i.any():
        return np.zeros(len(g), dtype=bool)
    uniq_u, uidx = sorted_codes(user_ids)
    cap_u = np.zeros(len(uniq_u), dtype=np.int64)
    cap_u[uidx] = np.maximum(cap_edge, 0)
    if policy == "arrival":
        return arrival_kernel(item_rank, item_ids, uidx, user_ids, g, cap_u, cap_i)
    uniq_i, iidx = sorted_codes(item_ids)
    cap_items = np.zeros(len(uniq_i), dtype=np.int64)
    cap_items[iidx] = cap_i
    if policy == "matching":
        chosen, rounds = matching_kernel(item_rank, iidx, len(uniq_i), uidx, user_ids, g, cap_u, cap_items)
        log.debug("matching kernel: %d edges, %d rounds", len(g), rounds)
        return chosen
    fl = None
    if floor is not None:
        fl_e = np.broadcast_to(np.asarray(floor, dtype=np.int64), item_ids.shape)
        fl = np.zeros(len(uniq_i), dtype=np.int64)
        fl[iidx] = fl_e
    cover: Any = cover_bonus
    if np.ndim(cover_bonus):  # per edge -> per item
        cover = np.zeros(len(uniq_i), dtype=np.float64)
        cover[iidx] = np.asarray(cover_bonus, dtype=np.float64)
    order = canonical_order(item_rank, iidx, len(uniq_i), uidx, len(uniq_u))  # canonical arc order: reruns give the same optimum
    mask = np.zeros(len(g), dtype=bool)
    mask[order] = flow_kernel(
        iidx[order], len(uniq_i), uidx[order], g[order], cap_u, cap_items, fl, floor_bonus, cover, floor_tiers, g_top
    )
    return mask
