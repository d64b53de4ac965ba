"""Available-user store and capacity-constrained dispatch (paper 4.1-4.2, Algorithm 1, Eq. 14).

Two assignment policies, one switch (``DispatchConfig.policy``):

``arrival``
    Algorithm 1 as written: items in upload order (ties by item_id), each takes its best
    remaining available users (g desc, ties by user_id) up to L, the store is updated item by
    item. This is a serial dictatorship of items over users. It equals the result of
    item-proposing deferred acceptance in which every user prefers earlier-uploaded items
    (with one common priority the stable matching is unique), which is how the Spark engine
    computes it in parallel rounds.

``matching`` (our improvement, a heuristic)
    Within a batch, edges are accepted greedily by global score (g desc, then upload order,
    then user_id) under both caps (item <= L users, user <= remaining capacity). Greedy is a
    1/2-approximation of the max-weight b-matching, NOT guaranteed to beat ``arrival`` on every
    instance (it can, e.g., let a late item take the only user an early item could use), so
    tests check the invariants and that it is not worse on average. It is computed in rounds:
    an edge that is among the top-``rem`` live edges of both its item and its user is accepted
    by the sequential greedy whatever happens to the other edges, so a round accepts all such
    edges at once and drops edges of full items/users. The result equals the sequential greedy.

Engines (``DispatchConfig.engine``): ``numpy`` runs the NumPy kernel for a whole batch inside
one Spark task (``mapInArrow``); ``spark`` runs the rounds as Spark windows. Both give the
same result; ``benchmarks/dispatch.py`` measures them.

The store state U~ for batch b is recomputed from the state after b-1 and batch b's
assignment (never appended in place), so a rerun of a batch or a day cannot double-count.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

log = logging.getLogger(__name__)

POLICIES = ("arrival", "matching")
ENGINES = ("numpy", "spark")


class DispatchInvariantError(RuntimeError):
    """|D_u| <= Q, item <= L users, only available users, store consistent: one of them broke."""


# =============================================================================================
# NumPy kernels
# =============================================================================================
def _capacity_per_edge(user_ids: np.ndarray, capacity_by_user: Any) -> np.ndarray:
    """Remaining capacity of each edge's user.

    ``capacity_by_user`` is a mapping user_id -> capacity (users absent from it have 0: they
    are not available), a scalar (same capacity for everybody), or an array-like aligned with
    ``user_ids`` (per-edge capacity; all edges of one user must agree).
    """
    n = len(user_ids)
    if np.isscalar(capacity_by_user):
        return np.full(n, int(capacity_by_user), dtype=np.int64)
    import pandas as pd

    if isinstance(capacity_by_user, pd.Series):  # indexed by user_id
        capacity_by_user = dict(zip(capacity_by_user.index.to_numpy(), capacity_by_user.to_numpy()))
    if isinstance(capacity_by_user, Mapping):
        if not capacity_by_user:
            return np.zeros(n, dtype=np.int64)
        keys = np.fromiter(capacity_by_user.keys(), dtype=np.int64, count=len(capacity_by_user))
        vals = np.fromiter(capacity_by_user.values(), dtype=np.int64, count=len(capacity_by_user))
        order = np.argsort(keys, kind="stable")
        keys, vals = keys[order], vals[order]
        pos = np.searchsorted(keys, user_ids)
        pos_c = np.minimum(pos, len(keys) - 1)
        found = keys[pos_c] == user_ids
        return np.where(found, vals[pos_c], 0).astype(np.int64)
    cap = np.asarray(capacity_by_user, dtype=np.int64)
    if cap.shape != (n,):
        raise ValueError(
            f"capacity_by_user as an array must be aligned with user_ids (length {n}), got shape {cap.shape}; "
            "pass a dict user_id -> capacity otherwise"
        )
    if n:
        _, inv = np.unique(user_ids, return_inverse=True)
        lo = np.full(inv.max() + 1, np.iinfo(np.int64).max)
        hi = np.full(inv.max() + 1, np.iinfo(np.int64).min)
        np.minimum.at(lo, inv, cap)
        np.maximum.at(hi, inv, cap)
        if (lo != hi).any():
            raise ValueError("capacity_by_user: edges of the same user carry different capacities")
    return cap


def _check_edges(item_ids: np.ndarray, user_ids: np.ndarray, g: np.ndarray) -> None:
    if not (len(item_ids) == len(user_ids) == len(g)):
        raise ValueError("item_ids, user_ids and g must have the same length")
    if len(g) and not np.isfinite(g).all():
        raise ValueError(f"g has {int((~np.isfinite(g)).sum())} non-finite value(s)")


def _group_rank(sorted_groups: np.ndarray, live_sorted: np.ndarray) -> np.ndarray:
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


def _arrival_kernel(
    item_rank: np.ndarray, item_ids: np.ndarray, uidx: np.ndarray, user_ids: np.ndarray, g: np.ndarray,
    cap_u: np.ndarray, L: int,
) -> np.ndarray:
    """Sequential Algorithm 1: a loop over items (not edges), vectorised inside an item."""
    n = len(g)
    chosen = np.zeros(n, dtype=bool)
    if n == 0:
        return chosen
    order = np.lexsort((user_ids, -g.astype(np.float64), item_ids, item_rank))
    u_sorted = uidx[order]
    it_sorted = item_ids[order]
    starts = np.flatnonzero(np.r_[True, it_sorted[1:] != it_sorted[:-1]])
    ends = np.r_[starts[1:], n]
    cap = cap_u.copy()
    picked_sorted = np.zeros(n, dtype=bool)
    for s, e in zip(starts.tolist(), ends.tolist()):
        us = u_sorted[s:e]
        ok = np.flatnonzero(cap[us] > 0)[:L]
        if ok.size:
            cap[us[ok]] -= 1
            picked_sorted[s + ok] = True
    chosen[order] = picked_sorted
    return chosen


def _matching_kernel(
    item_rank: np.ndarray, iidx: np.ndarray, n_items: int, uidx: np.ndarray, user_ids: np.ndarray,
    g: np.ndarray, cap_u: np.ndarray, L: int,
) -> tuple[np.ndarray, int]:
    """Greedy by global score, computed in dominance rounds (see module docstring)."""
    n = len(g)
    chosen = np.zeros(n, dtype=bool)
    if n == 0:
        return chosen, 0
    prio_order = np.lexsort((user_ids, item_rank, -g.astype(np.float64)))
    prio = np.empty(n, dtype=np.int64)
    prio[prio_order] = np.arange(n)
    # working set: global edge ids `idx`, with fixed orders by (item, prio) and (user, prio)
    idx = np.arange(n)
    oi = np.lexsort((prio, iidx))
    ou = np.lexsort((prio, uidx))
    rem_i = np.full(n_items, L, dtype=np.int64)
    rem_u = cap_u.astype(np.int64).copy()
    live = rem_u[uidx] > 0
    rounds = 0
    while True:
        w_items, w_users = iidx[idx], uidx[idx]
        if not live.any():
            break
        rounds += 1
        r_item = np.empty(len(idx), dtype=np.int64)
        r_item[oi] = _group_rank(w_items[oi], live[oi])
        r_user = np.empty(len(idx), dtype=np.int64)
        r_user[ou] = _group_rank(w_users[ou], live[ou])
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


def assign_arrays(
    item_ids: Any,
    user_ids: Any,
    g: Any,
    item_rank: Any,
    capacity_by_user: Any,
    L: int,
    policy: str = "arrival",
) -> np.ndarray:
    """Capacity-constrained assignment of one batch (or a whole day treated as one batch).

    Edges are (item_ids[k], user_ids[k]) with score g[k]; ``item_rank`` is the item's upload
    order position (smaller = earlier; ties broken by item_id). ``capacity_by_user``: dict
    user_id -> remaining capacity (absent = 0 = not available), a scalar, or a per-edge array.
    Returns a boolean mask of the selected edges: each item gets <= L users, each user <= its
    capacity. (item, user) pairs must be unique.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if L < 0:
        raise ValueError("L must be >= 0")
    item_ids = np.asarray(item_ids, dtype=np.int64)
    user_ids = np.asarray(user_ids, dtype=np.int64)
    g = np.asarray(g)
    item_rank = np.asarray(item_rank, dtype=np.int64)
    _check_edges(item_ids, user_ids, g)
    if len(item_rank) != len(item_ids):
        raise ValueError("item_rank must be aligned with item_ids")
    cap_edge = _capacity_per_edge(user_ids, capacity_by_user)
    if len(g) == 0 or L == 0:
        return np.zeros(len(g), dtype=bool)
    uniq_u, uidx = np.unique(user_ids, return_inverse=True)
    cap_u = np.zeros(len(uniq_u), dtype=np.int64)
    cap_u[uidx] = np.maximum(cap_edge, 0)
    if policy == "arrival":
        return _arrival_kernel(item_rank, item_ids, uidx, user_ids, g, cap_u, L)
    uniq_i, iidx = np.unique(item_ids, return_inverse=True)
    chosen, rounds = _matching_kernel(item_rank, iidx, len(uniq_i), uidx, user_ids, g, cap_u, L)
    log.debug("matching kernel: %d edges, %d rounds", len(g), rounds)
    return chosen


def dispatch_without_store(item_ids: Any, user_ids: Any, g: Any, L: int) -> np.ndarray:
    """The paper's Figure 9 baseline: every item takes its top-L candidates (g desc, user_id asc),
    ignoring Q and the availability updates. For evaluation/benchmarks only."""
    item_ids = np.asarray(item_ids, dtype=np.int64)
    user_ids = np.asarray(user_ids, dtype=np.int64)
    g = np.asarray(g)
    _check_edges(item_ids, user_ids, g)
    n = len(g)
    if n == 0:
        return np.zeros(0, dtype=bool)
    order = np.lexsort((user_ids, -g.astype(np.float64), item_ids))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = _group_rank(item_ids[order], np.ones(n, dtype=bool))
    return rank < L


def rank_in_item_arrays(item_ids: Any, user_ids: Any, g: Any, mask: np.ndarray) -> np.ndarray:
    """1-based rank of each selected edge within its item (g desc, user_id asc); 0 where not selected."""
    item_ids = np.asarray(item_ids, dtype=np.int64)
    user_ids = np.asarray(user_ids, dtype=np.int64)
    g = np.asarray(g, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros(len(g), dtype=np.int32)
    if len(g) == 0:
        return out
    order = np.lexsort((user_ids, -g, item_ids))
    r = _group_rank(item_ids[order], mask[order]) + 1
    out[order] = np.where(mask[order], r, 0)
    return out


def dispatch_day_arrays(
    batch: Any, item_ids: Any, user_ids: Any, g: Any, item_rank: Any, available_users: Any, L: int, Q: int,
    policy: str = "arrival",
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """A whole day in NumPy: batches in order, the store carried across them (reference/benchmarks).

    Returns the selected-edge mask and, per batch, |D_u| of every user in ``available_users``
    (sorted by user_id) after that batch.
    """
    batch = np.asarray(batch, dtype=np.int64)
    item_ids = np.asarray(item_ids, dtype=np.int64)
    user_ids = np.asarray(user_ids, dtype=np.int64)
    g = np.asarray(g)
    item_rank = np.asarray(item_rank, dtype=np.int64)
    users = np.unique(np.asarray(available_users, dtype=np.int64))
    matched = np.zeros(len(users), dtype=np.int64)
    pos = np.minimum(np.searchsorted(users, user_ids), max(len(users) - 1, 0))
    known = (users[pos] == user_ids) if len(users) else np.zeros(len(user_ids), dtype=bool)
    mask = np.zeros(len(g), dtype=bool)
    states: dict[int, np.ndarray] = {}
    for b in np.unique(batch).tolist():
        sel = np.flatnonzero((batch == b) & known)
        cap = Q - matched[pos[sel]]
        m = assign_arrays(item_ids[sel], user_ids[sel], g[sel], item_rank[sel], cap, L, policy)
        mask[sel[m]] = True
        matched += np.bincount(pos[sel[m]], minlength=len(users))
        states[b] = matched.copy()
    return mask, states


# =============================================================================================
# Spark transforms
# =============================================================================================
def item_order_df(items_df, batches_per_day: int):
    """(item_id, item_rank, batch) from the day's ``items``: upload order, ties by item_id.

    item_rank is a global position, so a single-partition window is used: one day's uploads
    (<= ~50k rows) are small.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from dualrec.batches import batch_col

    w = Window.orderBy(F.col("upload_ts").asc(), F.col("item_id").asc())
    return items_df.select(
        "item_id",
        (F.row_number().over(w) - 1).cast("long").alias("item_rank"),
        batch_col(F.col("upload_ts"), batches_per_day).alias("batch"),
    )


def check_ranked_against_items(ranked_df, order_df, sample: int = 5) -> None:
    """Every ranked item must be a dispatched upload of the day in the batch its upload time says."""
    from pyspark.sql import functions as F

    from schemas.validate import BadInputError

    j = ranked_df.select("item_id", F.col("batch").alias("ranked_batch"), "g").join(order_df, "item_id", "left")
    bad_item = j.filter(F.col("item_rank").isNull()).select("item_id").distinct().limit(sample).collect()
    if bad_item:
        raise BadInputError(
            "table 'ranked', column 'item_id': item(s) not uploaded on this day (absent from 'items'), "
            f"sample: {[r.item_id for r in bad_item]}"
        )
    bad_batch = (
        j.filter(F.col("ranked_batch") != F.col("batch"))
        .select("item_id", "ranked_batch", "batch").distinct().limit(sample).collect()
    )
    if bad_batch:
        raise BadInputError(
            "table 'ranked', column 'batch': batch differs from the batch of the item's upload_ts "
            f"(dualrec.batches), sample: {[r.asDict() for r in bad_batch]}"
        )
    bad_g = j.filter(F.isnan("g") | F.col("g").isNull()).select("item_id").limit(sample).collect()
    if bad_g:
        raise BadInputError(f"table 'ranked', column 'g': NaN/null scores for item(s) {[r.item_id for r in bad_g]}")


_EDGE_COLS = ["batch", "item_id", "user_id", "g", "item_rank", "channels"]


def _numpy_kernel_arrow(batches: Iterator[pa.RecordBatch], L: int, policy: str) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: the whole partition (= one micro-batch) through :func:`assign_arrays`."""
    parts = list(batches)
    if not parts:
        return
    t = pa.Table.from_batches(parts)
    if t.num_rows == 0:
        return
    mask = assign_arrays(
        t.column("item_id").to_numpy(),
        t.column("user_id").to_numpy(),
        t.column("g").to_numpy(),
        t.column("item_rank").to_numpy(),
        t.column("cap").to_numpy(),
        L,
        policy,
    )
    out = t.filter(pa.array(mask))
    yield from out.to_batches()


def assign_batch_numpy_spark(edges_df, L: int, policy: str):
    """Engine ``numpy``: one task runs the NumPy kernel over the whole batch (edges need ``cap``)."""
    fn = functools.partial(_numpy_kernel_arrow, L=L, policy=policy)
    return edges_df.repartition(1).mapInArrow(fn, edges_df.schema)


def _arrival_rounds_spark(edges_df, L: int) -> tuple[Any, int]:
    """Engine ``spark``, policy ``arrival``: item-proposing deferred acceptance in rounds.

    Each round every item proposes to its top-L users among those that have not rejected it;
    each user keeps its ``cap`` earliest-uploaded proposals and rejects the rest (rejections
    are final). No rejection = stable = the sequential Algorithm 1 result.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    cols = edges_df.columns
    w_i = Window.partitionBy("item_id").orderBy(F.col("g").desc(), F.col("user_id").asc())
    w_u = Window.partitionBy("user_id").orderBy(F.col("_prop").desc(), F.col("item_rank").asc())
    live = edges_df
    rounds = 0
    while True:
        rounds += 1
        x = live.withColumn("_prop", F.row_number().over(w_i) <= F.lit(L))
        x = x.withColumn("_rej", F.col("_prop") & (F.row_number().over(w_u) > F.col("cap"))).localCheckpoint()
        n_rej = x.filter("_rej").count()
        if n_rej == 0:
            return x.filter("_prop").select(cols), rounds
        live = x.filter(~F.col("_rej")).select(cols)


def _matching_rounds_spark(edges_df, L: int) -> tuple[Any, int]:
    """Engine ``spark``, policy ``matching``: greedy by global score in dominance rounds."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    cols = edges_df.columns
    prio = [F.col("g").desc(), F.col("item_rank").asc(), F.col("user_id").asc()]
    w_i = Window.partitionBy("item_id").orderBy(*prio)
    w_u = Window.partitionBy("user_id").orderBy(*prio)
    live = edges_df.withColumn("_rem_i", F.lit(L).cast("long")).withColumn("_rem_u", F.col("cap").cast("long"))
    live = live.filter(F.col("_rem_u") > 0)
    accepted = []
    rounds = 0
    while True:
        rounds += 1
        x = live.withColumn("_ri", F.row_number().over(w_i)).withColumn("_ru", F.row_number().over(w_u))
        x = x.withColumn("_dom", (F.col("_ri") <= F.col("_rem_i")) & (F.col("_ru") <= F.col("_rem_u")))
        di = F.sum(F.col("_dom").cast("long")).over(Window.partitionBy("item_id"))
        du = F.sum(F.col("_dom").cast("long")).over(Window.partitionBy("user_id"))
        x = x.withColumn("_rem_i", F.col("_rem_i") - di).withColumn("_rem_u", F.col("_rem_u") - du)
        x = x.withColumn("_next", ~F.col("_dom") & (F.col("_rem_i") > 0) & (F.col("_rem_u") > 0)).localCheckpoint()
        accepted.append(x.filter("_dom").select(cols))
        n_next = x.filter("_next").count()
        if n_next == 0:
            break
        live = x.filter("_next").select(*cols, "_rem_i", "_rem_u")
    return functools.reduce(lambda a, b: a.unionByName(b), accepted), rounds


def assign_batch_spark(edges_df, L: int, policy: str) -> tuple[Any, int]:
    """Engine ``spark``: pure Spark rounds; returns (selected edges, number of rounds)."""
    if policy == "arrival":
        return _arrival_rounds_spark(edges_df, L)
    if policy == "matching":
        return _matching_rounds_spark(edges_df, L)
    raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")


def assign_batch(edges_df, L: int, policy: str, engine: str):
    """Selected edges of one batch; ``edges_df`` carries ``cap`` = remaining capacity of the user."""
    if engine == "numpy":
        return assign_batch_numpy_spark(edges_df, L, policy)
    if engine == "spark":
        return assign_batch_spark(edges_df, L, policy)[0]
    raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")


def update_store(store_df, selected_df, Q: int):
    """Store after a batch = store before + this batch's matches (a fresh DataFrame, never in place)."""
    from pyspark.sql import functions as F

    counts = selected_df.groupBy("user_id").agg(F.count(F.lit(1)).cast("int").alias("_n"))
    return (
        store_df.join(counts, "user_id", "left")
        .select("user_id", (F.col("matched") + F.coalesce(F.col("_n"), F.lit(0))).cast("int").alias("matched"))
        .withColumn("available", F.col("matched") < F.lit(Q))
    )


def add_rank_in_item(selected_df):
    """match_sets columns: rank_in_item = 1-based position of the user in the item's D (g desc, user_id)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy("item_id").orderBy(F.col("g").desc(), F.col("user_id").asc())
    return selected_df.select(
        "batch", "user_id", "item_id", "g", F.row_number().over(w).cast("int").alias("rank_in_item"), "channels"
    )


def user_match_sets_df(match_sets_df):
    """D_u rollup: items sorted by g desc (ties by item_id)."""
    from pyspark.sql import functions as F

    s = F.sort_array(F.collect_list(F.struct((-F.col("g")).alias("k"), F.col("item_id"), F.col("g"))))
    return match_sets_df.groupBy("user_id").agg(
        # coalesce makes the struct fields non-nullable, as the contract says (Spark will not cast that way)
        F.transform(
            s,
            lambda e: F.struct(
                F.coalesce(e["item_id"], F.lit(0).cast("long")).alias("item_id"),
                F.coalesce(e["g"], F.lit(0.0).cast("float")).alias("g"),
            ),
        ).alias("items")
    )


@dataclass
class DayDispatch:
    """Outputs of one day (Spark DataFrames, checkpointed) and small stats."""

    match_sets: Any
    user_match_sets: Any
    available_users: Any
    store0: Any
    stats: dict[str, Any]


def dispatch_day(spark, ranked_df, items_df, activity_df, L: int, Q: int, batches_per_day: int,
                 policy: str = "arrival", engine: str = "numpy") -> DayDispatch:
    """The day's dispatch: batches in upload order, store carried across batches, restarted each day."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    order = item_order_df(items_df, batches_per_day).localCheckpoint()
    check_ranked_against_items(ranked_df, order)
    store0 = (
        activity_df.filter(F.col("available")).select("user_id")
        .withColumn("matched", F.lit(0).cast("int")).withColumn("available", F.lit(True))
    ).localCheckpoint()
    edges = (
        ranked_df.select("item_id", "user_id", "g", "channels")
        .join(order, "item_id")
        .join(store0.select("user_id"), "user_id")  # only initially available users
        .select(*_EDGE_COLS)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    per_batch = {r["batch"]: r["n"] for r in edges.groupBy("batch").agg(F.count(F.lit(1)).alias("n")).collect()}
    store = store0
    snapshots, selected = [], []
    for b in range(batches_per_day):
        if per_batch.get(b, 0):
            eb = (
                edges.filter(F.col("batch") == b)
                .join(store.filter(F.col("available")).select("user_id", "matched"), "user_id")
                .withColumn("cap", (F.lit(Q) - F.col("matched")).cast("int"))
                .drop("matched")
            )
            sel = assign_batch(eb, L, policy, engine).drop("cap").localCheckpoint()
            selected.append(sel)
            store = update_store(store, sel, Q).localCheckpoint()
            log.info("dispatch batch %d: %d edges assigned", b, per_batch[b])
        snapshots.append(store.withColumn("batch", F.lit(b).cast("int")))
    edges.unpersist()
    if selected:
        sel_all = functools.reduce(lambda a, c: a.unionByName(c), selected)
    else:
        sel_all = spark.createDataFrame([], edges.drop("item_rank").schema)
    match_sets = add_rank_in_item(sel_all).localCheckpoint()
    available = functools.reduce(lambda a, c: a.unionByName(c), snapshots).select(
        "batch", "user_id", "matched", "available"
    )
    per_item = match_sets.groupBy("item_id").agg(F.count(F.lit(1)).alias("n"), F.sum("g").alias("sg"))
    agg = per_item.agg(
        F.sum("n").alias("pairs"), F.sum("sg").alias("total_g"), F.count(F.lit(1)).alias("covered"),
        F.sum(F.when(F.col("n") >= L, 1).otherwise(0)).alias("full"),
    ).first()
    stats = {
        "policy": policy,
        "engine": engine,
        "items": order.count(),
        "edges": int(sum(per_batch.values())),
        "available_users": store0.count(),
        "pairs": int(agg["pairs"] or 0),
        "total_g": float(agg["total_g"] or 0.0),
        "users_matched": match_sets.select("user_id").distinct().count(),
        "items_covered": int(agg["covered"]),
        "items_full": int(agg["full"] or 0),
    }
    return DayDispatch(match_sets, user_match_sets_df(match_sets), available, store0, stats)


def check_invariants(match_sets_df, available_users_df, store0_df, L: int, Q: int, batches_per_day: int,
                     sample: int = 5) -> None:
    """Raise :class:`DispatchInvariantError` unless every hard invariant holds (run before publishing).

    |D_u| <= Q, item <= L users, no duplicate pair, only initially available users; the store has
    one row per available user per batch, |D_u| so far never decreases, stays <= Q, ``available``
    == (matched < Q), and after the last batch equals |D_u| in match_sets (no double counting).
    Violations are counted in a few aggregations; samples are collected only when something broke.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    def flag(cond):
        return F.sum(F.when(cond, 1).otherwise(0))

    du = match_sets_df.groupBy("user_id").agg(
        F.count(F.lit(1)).alias("du"), F.countDistinct("item_id").alias("_nd")
    )
    u = du.join(store0_df.select("user_id", F.lit(True).alias("_known")), "user_id", "left")
    u_checks = {
        f"|D_u| > Q={Q}": F.col("du") > Q,
        "duplicate (user, item) pairs": F.col("du") != F.col("_nd"),
        "matched users that were not available": F.col("_known").isNull(),
    }
    i_checks = {f"more than L={L} users for an item": F.col("count") > L}
    per_item = match_sets_df.groupBy("item_id").count()
    w = Window.partitionBy("user_id").orderBy("batch")
    st = (
        available_users_df.withColumn("_prev", F.lag("matched").over(w))
        .join(du.select("user_id", "du"), "user_id", "left")
    )
    s_checks = {
        "store rows out of range, decreasing or with a wrong available flag": (F.col("matched") > Q)
        | (F.col("matched") < F.coalesce(F.col("_prev"), F.lit(0)))
        | (F.col("available") != (F.col("matched") < Q)),
        "store after the last batch disagrees with match_sets": (F.col("batch") == batches_per_day - 1)
        & (F.col("matched") != F.coalesce(F.col("du"), F.lit(0))),
    }
    problems: list[str] = []
    for df, checks in ((u, u_checks), (per_item, i_checks), (st, s_checks)):
        counts = df.agg(*[flag(c).alias(f"c{k}") for k, c in enumerate(checks.values())]).first()
        for k, (name, cond) in enumerate(checks.items()):
            if counts[f"c{k}"]:
                rows = [r.asDict() for r in df.filter(cond).limit(sample).collect()]
                problems.append(f"{name}: {counts[f'c{k}']} row(s), sample {rows}")
    n_users, n_rows = store0_df.count(), available_users_df.count()
    if n_rows != n_users * batches_per_day:
        problems.append(f"available_users has {n_rows} rows, expected {n_users} users x {batches_per_day} batches")
    if problems:
        raise DispatchInvariantError("dispatch invariant(s) violated, nothing published: " + "; ".join(problems))


# =============================================================================================
# Combined recommendation (Eq. 14)
# =============================================================================================
def apply_boost(candidates_df, match_sets_df, lam: float):
    """f'_ui = f_ui + lam * g_ui for (u, i) in D_u, f'_ui = f_ui otherwise (paper Eq. 14).

    ``candidates_df``: the user-side candidate table with at least (user_id, item_id, f); every
    column and row is kept and ``f_prime`` (double) is added. ``match_sets_df``: ``match_sets``
    rows (user_id, item_id, g) or the ``user_match_sets`` rollup (user_id, items).
    """
    from pyspark.sql import functions as F

    missing = [c for c in ("user_id", "item_id", "f") if c not in candidates_df.columns]
    if missing:
        raise ValueError(f"candidate table lacks column(s) {', '.join(missing)}")
    if "f_prime" in candidates_df.columns:
        raise ValueError("candidate table already has an f_prime column")
    if "items" in match_sets_df.columns and "item_id" not in match_sets_df.columns:
        pairs = match_sets_df.select("user_id", F.explode("items").alias("_e")).select(
            "user_id", F.col("_e.item_id").alias("item_id"), F.col("_e.g").alias("g")
        )
    else:
        pairs = match_sets_df.select("user_id", "item_id", "g")
    pairs = pairs.groupBy("user_id", "item_id").agg(F.max("g").alias("_boost_g"))
    out = candidates_df.join(pairs, ["user_id", "item_id"], "left")
    out = out.withColumn(
        "f_prime", F.col("f").cast("double") + F.lit(float(lam)) * F.coalesce(F.col("_boost_g").cast("double"), F.lit(0.0))
    )
    return out.select(*candidates_df.columns, "f_prime")
