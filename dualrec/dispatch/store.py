"""The available-user store and the day's dispatch in Spark (paper 4.1-4.2, Algorithm 1).

U~ = {u : a_u = 1, |D_u| < Q}. The day's uploads are processed in micro-batches in upload
order; each batch's edges go through the NumPy kernel of the configured policy inside one
Spark task (``mapInArrow``), and the store after batch b is recomputed from the store after
b-1 and batch b's assignment (never appended in place), so a rerun of a batch or a day cannot
double-count. ``optimal`` assigns the whole day in one task and derives the store after every
batch from that assignment in one plan (:func:`store_snapshots`: a running sum per user), so it
pays a fixed number of Spark jobs, not a few per micro-batch. :func:`check_invariants` runs
before anything is published.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import Window
from pyspark.sql import functions as F

from dualrec.batches import batch_col
from dualrec.dispatch.kernels import assign_arrays
from dualrec.dispatch.outputs import add_rank_in_item, user_match_sets_df
from dualrec.dispatch.policies import (
    PolicyParams,
    assign_optimal,
    batch_kernel,
    check_policy,
    forecast_remaining,
    kernel_scores,
    optimal_floor,
    paced_budget,
)
from schemas.validate import BadInputError

log = logging.getLogger(__name__)


class DispatchInvariantError(RuntimeError):
    """|D_u| <= Q, item <= L users, only available users, store consistent: one of them broke."""


def item_order_df(items_df, batches_per_day: int):
    """(item_id, item_rank, batch) from the day's ``items``: upload order, ties by item_id.

    item_rank is a global position, so a single-partition window is used: one day's uploads
    (<= ~50k rows) are small.
    """
    w = Window.orderBy(F.col("upload_ts").asc(), F.col("item_id").asc())
    return items_df.select(
        "item_id",
        (F.row_number().over(w) - 1).cast("long").alias("item_rank"),
        batch_col(F.col("upload_ts"), batches_per_day).alias("batch"),
    )


def check_ranked_against_items(ranked_df, order_df, sample: int = 5) -> None:
    """Every ranked item must be a dispatched upload of the day in the batch its upload time says.

    One aggregation counts the three kinds of bad rows; samples are collected only when one broke.
    """
    j = ranked_df.select("item_id", F.col("batch").alias("ranked_batch"), "g").join(order_df, "item_id", "left")
    checks = {
        "item": F.col("item_rank").isNull(),
        "batch": F.col("item_rank").isNotNull() & (F.col("ranked_batch") != F.col("batch")),
        "g": F.isnan("g") | F.col("g").isNull(),
    }
    counts = j.agg(*[F.sum(F.when(c, 1).otherwise(0)).alias(k) for k, c in checks.items()]).first()
    if counts["item"]:
        bad_item = j.filter(checks["item"]).select("item_id").distinct().limit(sample).collect()
        raise BadInputError(
            "table 'ranked', column 'item_id': item(s) not uploaded on this day (absent from 'items'), "
            f"sample: {[r.item_id for r in bad_item]}"
        )
    if counts["batch"]:
        bad_batch = j.filter(checks["batch"]).select("item_id", "ranked_batch", "batch").distinct().limit(sample).collect()
        raise BadInputError(
            "table 'ranked', column 'batch': batch differs from the batch of the item's upload_ts "
            f"(dualrec.batches), sample: {[r.asDict() for r in bad_batch]}"
        )
    if counts["g"]:
        bad_g = j.filter(checks["g"]).select("item_id").limit(sample).collect()
        raise BadInputError(f"table 'ranked', column 'g': NaN/null scores for item(s) {[r.item_id for r in bad_g]}")


def store_snapshots(store0_df, selected_df, Q: int, batches_per_day: int):
    """The store after every batch in one plan: |D_u| so far = running sum of the user's matches by batch.

    Equal to chaining :func:`update_store` over the batches (what the online policies do), but one
    Spark job instead of one per batch: used when the day's assignment is known at once (``optimal``).
    """
    spark = store0_df.sparkSession
    per = selected_df.groupBy("user_id", F.col("batch").cast("int").alias("batch")).agg(
        F.count(F.lit(1)).cast("int").alias("_n")
    )
    grid = store0_df.select("user_id", "matched").crossJoin(
        spark.range(batches_per_day).select(F.col("id").cast("int").alias("batch"))
    )
    w = Window.partitionBy("user_id").orderBy("batch").rowsBetween(Window.unboundedPreceding, Window.currentRow)
    return (
        grid.join(per, ["user_id", "batch"], "left")
        .select(
            "batch", "user_id",
            (F.col("matched") + F.sum(F.coalesce(F.col("_n"), F.lit(0))).over(w)).cast("int").alias("matched"),
        )
        .withColumn("available", F.col("matched") < F.lit(Q))
    )


def update_store(store_df, selected_df, Q: int):
    """Store after a batch = store before + this batch's matches (a fresh DataFrame, never in place)."""

    counts = selected_df.groupBy("user_id").agg(F.count(F.lit(1)).cast("int").alias("_n"))
    return (
        store_df.join(counts, "user_id", "left")
        .select("user_id", (F.col("matched") + F.coalesce(F.col("_n"), F.lit(0))).cast("int").alias("matched"))
        .withColumn("available", F.col("matched") < F.lit(Q))
    )


def check_invariants(match_sets_df, available_users_df, store0_df, L: int, Q: int, batches_per_day: int,
                     sample: int = 5, n_users: int | None = None) -> None:
    """Raise :class:`DispatchInvariantError` unless every hard invariant holds (run before publishing).

    |D_u| <= Q, item <= L users, no duplicate pair, only initially available users; the store has
    one row per available user per batch, |D_u| so far never decreases, stays <= Q, ``available``
    == (matched < Q), and after the last batch equals |D_u| in match_sets (no double counting).
    Violations are counted in a few aggregations; samples are collected only when something broke.
    """

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
    n_rows = 0
    for df, checks in ((u, u_checks), (per_item, i_checks), (st, s_checks)):
        counts = df.agg(*[flag(c).alias(f"c{k}") for k, c in enumerate(checks.values())],
                        F.count(F.lit(1)).alias("_rows")).first()
        n_rows = int(counts["_rows"])  # the last frame is the store: its row count is checked below
        for k, (name, cond) in enumerate(checks.items()):
            if counts[f"c{k}"]:
                rows = [r.asDict() for r in df.filter(cond).limit(sample).collect()]
                problems.append(f"{name}: {counts[f'c{k}']} row(s), sample {rows}")
    if n_users is None:
        n_users = store0_df.count()
    if n_rows != n_users * batches_per_day:
        problems.append(f"available_users has {n_rows} rows, expected {n_users} users x {batches_per_day} batches")
    if problems:
        raise DispatchInvariantError("dispatch invariant(s) violated, nothing published: " + "; ".join(problems))


_EDGE_COLS = ["batch", "item_id", "user_id", "g", "item_rank", "channels", "p_active"]


def _kernel_arrow(batches: Iterator[pa.RecordBatch], policy: str, L: int, floor: int,
                  params: PolicyParams) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: the whole partition (one micro-batch, or the day for ``optimal``) through
    the NumPy kernel; edges carry ``cap`` (the user's remaining slots)."""
    parts = list(batches)
    if not parts:
        return
    t = pa.Table.from_batches(parts)
    if t.num_rows == 0:
        return
    cols = [t.column(c).to_numpy() for c in ("item_id", "user_id", "g", "item_rank", "cap")]
    p_active = t.column("p_active").to_numpy() if "p_active" in t.column_names else None
    cols[2] = kernel_scores(policy, cols[2], p_active, params)
    if policy == "optimal":
        mask = assign_optimal(*cols, L, floor, params)
    else:
        mask = assign_arrays(*cols, L, batch_kernel(policy))
    yield from t.filter(pa.array(mask)).to_batches()


def assign_edges(edges_df, policy: str, L: int, floor: int = 0, params: PolicyParams = PolicyParams()):
    """Selected edges of one batch (or the day): one Spark task runs the NumPy kernel."""
    fn = functools.partial(_kernel_arrow, policy=policy, L=int(L), floor=int(floor), params=params)
    return edges_df.repartition(1).mapInArrow(fn, edges_df.schema)


@dataclass
class DayDispatch:
    """Outputs of one day (Spark DataFrames, checkpointed) and small stats."""

    match_sets: Any
    user_match_sets: Any
    available_users: Any
    store0: Any
    stats: dict[str, Any]


def dispatch_day(spark, ranked_df, items_df, activity_df, L: int, Q: int, batches_per_day: int,
                 policy: str = "arrival", curve: np.ndarray | None = None,
                 params: PolicyParams = PolicyParams(),
                 on_batch: Callable[[int, int], None] | None = None) -> DayDispatch:
    """The day's dispatch: batches in upload order, store carried across batches, restarted each day.

    ``curve``: mean uploads per batch of earlier days (:func:`dualrec.dispatch.policies.upload_curve`),
    used by ``paced`` only; without it ``paced`` forecasts from today's own rate so far.
    """
    check_policy(policy)
    order = item_order_df(items_df, batches_per_day).localCheckpoint()
    check_ranked_against_items(ranked_df, order)
    store0 = (
        activity_df.filter(F.col("available")).select("user_id")
        .withColumn("matched", F.lit(0).cast("int")).withColumn("available", F.lit(True))
    ).localCheckpoint()
    n_users = store0.count()
    items_per_batch = np.zeros(batches_per_day, dtype=np.int64)
    for r in order.groupBy("batch").count().collect():
        items_per_batch[int(r["batch"])] = int(r["count"])
    n_items = int(items_per_batch.sum())
    edges = (
        ranked_df.select("item_id", "user_id", "g", "channels")
        .join(order, "item_id")
        .join(activity_df.filter(F.col("available")).select("user_id", "p_active"), "user_id")  # available only
        .select(*_EDGE_COLS)
    )
    budgets: dict[int, int] = {}
    if policy == "optimal":
        # the whole day in one kernel call; the store after each batch follows from the assignment in one plan
        # (no Spark job per micro-batch)
        floor = optimal_floor(n_items, n_users, L, Q, params)
        sel_all = assign_edges(edges.withColumn("cap", F.lit(Q).cast("int")), policy, L, floor, params)
        sel_all = sel_all.drop("cap", "p_active").localCheckpoint()
        per_batch = {int(r["batch"]): int(r["n"]) for r in
                     sel_all.groupBy("batch").agg(F.count(F.lit(1)).alias("n")).collect()}
        for b in range(batches_per_day):
            if per_batch.get(b):
                log.info("dispatch batch %d: %d assigned", b, per_batch[b])
            if on_batch is not None:
                on_batch(b + 1, batches_per_day)
        available = store_snapshots(store0, sel_all, Q, batches_per_day).localCheckpoint()
        n_edges = None
    else:
        edges = edges.persist(StorageLevel.MEMORY_AND_DISK)
        per_batch = {r["batch"]: r["n"] for r in edges.groupBy("batch").agg(F.count(F.lit(1)).alias("n")).collect()}
        n_edges = int(sum(per_batch.values()))
        store = store0
        snapshots, selected = [], []
        slots = n_users * Q
        seen = 0
        for b in range(batches_per_day):
            seen += int(items_per_batch[b])
            if per_batch.get(b, 0):
                cap_item = L
                if policy == "paced":
                    rest = forecast_remaining(curve, b, batches_per_day, seen)
                    cap_item = budgets[b] = paced_budget(slots, int(items_per_batch[b]), rest, L)
                eb = (
                    edges.filter(F.col("batch") == b)
                    .join(store.filter(F.col("available")).select("user_id", "matched"), "user_id")
                    .withColumn("cap", (F.lit(Q) - F.col("matched")).cast("int"))
                    .drop("matched")
                )
                sel = assign_edges(eb, policy, cap_item, params=params).drop("cap", "p_active").localCheckpoint()
                n_sel = sel.count()
                slots -= n_sel
                selected.append(sel)
                store = update_store(store, sel, Q).localCheckpoint()
                log.info("dispatch batch %d: %d edges, %d assigned", b, per_batch[b], n_sel)
            snapshots.append(store.withColumn("batch", F.lit(b).cast("int")))
            if on_batch is not None:
                on_batch(b + 1, batches_per_day)  # progress display: batch j of n
        edges.unpersist()
        if selected:
            sel_all = functools.reduce(lambda a, c: a.unionByName(c), selected)
        else:
            sel_all = spark.createDataFrame([], edges.drop("item_rank", "p_active").schema)
        available = functools.reduce(lambda a, c: a.unionByName(c), snapshots).select(
            "batch", "user_id", "matched", "available"
        )
    match_sets = add_rank_in_item(sel_all).localCheckpoint()
    agg = match_sets.agg(
        F.count(F.lit(1)).alias("pairs"), F.sum("g").alias("total_g"),
        F.countDistinct("user_id").alias("users"), F.countDistinct("item_id").alias("covered"),
        F.sum(F.when(F.col("rank_in_item") >= L, 1).otherwise(0)).alias("full"),  # rank_in_item reaches L once per full item
    ).first()
    stats = {
        "policy": policy,
        "items": n_items,
        "available_users": n_users,
        "pairs": int(agg["pairs"] or 0),
        "total_g": float(agg["total_g"] or 0.0),
        "users_matched": int(agg["users"] or 0),
        "items_covered": int(agg["covered"] or 0),
        "items_full": int(agg["full"] or 0),
    }
    if n_edges is not None:
        stats["edges"] = n_edges
    if budgets:
        stats["paced_budgets"] = {str(k): v for k, v in budgets.items()}
    return DayDispatch(match_sets, user_match_sets_df(match_sets), available, store0, stats)
