"""Spark transforms feeding the two-tower model: positives, user features, negative pools, inference.

Pure DataFrame -> DataFrame functions (no lake I/O) so each can be tested on ten rows; the
stage ``jobs/two_tower.py`` reads the inputs, calls these and writes the outputs.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dualrec.config import EXPLICIT_FEEDBACKS
from models.two_tower import (
    ITEM_FEATURE_COLUMNS,
    USER_FEATURE_COLUMNS,
    model_from_bytes,
    model_to_bytes,
    user_embeddings,
)

log = logging.getLogger(__name__)

EMB_SCHEMA = "user_id long, emb array<float>"


def explicit_positive_col():
    """True when the interaction carries any creator-visible (explicit) feedback."""
    from pyspark.sql import functions as F

    return F.greatest(*[F.col(f"is_{f}").cast("int") for f in EXPLICIT_FEEDBACKS]) > 0


def positive_pairs(interactions, exclude_items=None):
    """Distinct (user_id, item_id) explicit positives with the day and ts of the first one.

    ``interactions`` needs a ``dt`` column. ``exclude_items`` (a DataFrame with item_id) are left
    out: the job passes the items uploaded on D so the model never sees feedback on the items
    the run dispatches.
    """
    from pyspark.sql import functions as F

    pos = interactions.where(explicit_positive_col()).select("user_id", "item_id", "ts", "dt")
    if exclude_items is not None:
        pos = pos.join(exclude_items.select("item_id").distinct(), "item_id", "left_anti")
    return pos.groupBy("user_id", "item_id").agg(
        F.min("ts").alias("ts"), F.min("dt").alias("day")
    )


def liked_summary(pairs, items, content_dim: int):
    """Per user: number of distinct positive items and the mean of their content embeddings.

    Summed in the JVM with higher-order functions (no Python UDF, no explode of 128 columns).
    """
    from pyspark.sql import functions as F

    joined = pairs.select("user_id", "item_id").join(items.select("item_id", "content_emb"), "item_id")
    # summed in item_id order: collect_list order follows the shuffle, and float sums depend on order
    total = F.expr(
        "aggregate(array_sort(collect_list(struct(item_id, content_emb))),"
        f" array_repeat(cast(0.0 as double), {int(content_dim)}),"
        " (acc, x) -> zip_with(acc, x.content_emb, (a, b) -> a + cast(b as double)))"
    )
    agg = joined.groupBy("user_id").agg(F.count(F.lit(1)).alias("liked_n"), total.alias("_sum"))
    return agg.select(
        "user_id",
        "liked_n",
        F.expr("transform(_sum, v -> cast(v / liked_n as float))").alias("liked_emb"),
    )


def activity_stats(visits, interactions, pairs):
    """Per user over the window: active days, sessions, watch time, exposures, explicit positives."""
    from pyspark.sql import functions as F

    v = visits.groupBy("user_id").agg(
        F.countDistinct("dt").alias("active_days"),
        F.sum("sessions").cast("double").alias("sessions"),
        F.sum("watch_ms").cast("double").alias("watch_ms"),
    )
    i = interactions.groupBy("user_id").agg(F.count(F.lit(1)).cast("double").alias("n_interactions"))
    p = pairs.groupBy("user_id").agg(F.count(F.lit(1)).cast("double").alias("n_positive"))
    return v.join(i, "user_id", "full").join(p, "user_id", "full")


def user_features(users, visits, interactions, items, day: dt.date, content_dim: int, exclude_items=None, pairs=None):
    """One row per user of the ``users`` snapshot with :data:`USER_FEATURE_COLUMNS`.

    ``visits`` / ``interactions`` are the training window (with ``dt``), ``items`` cover every
    item liked in it. Users without history get zeros and a null liked summary. ``pairs``: the
    :func:`positive_pairs` of the window when the caller already has them (cached), else
    computed here.
    """
    from pyspark.sql import functions as F

    if pairs is None:
        pairs = positive_pairs(interactions, exclude_items)
    stats = activity_stats(visits, interactions, pairs)
    liked = liked_summary(pairs, items, content_dim)
    base = users.select(
        "user_id",
        "age_bucket",
        "gender",
        "region",
        "device",
        F.col("follower_count").cast("double").alias("follower_count"),
        F.greatest(F.datediff(F.lit(day.isoformat()).cast("date"), F.col("register_dt")), F.lit(0))
        .cast("double")
        .alias("account_age_days"),
    )
    out = base.join(stats, "user_id", "left").join(liked, "user_id", "left")
    fill = {c: 0.0 for c in ("active_days", "sessions", "watch_ms", "n_interactions", "n_positive")}
    out = out.fillna(fill).fillna({"liked_n": 0})
    return out.select(
        *[F.col(c).cast("double").alias(c) if c in fill or c == "liked_n" else F.col(c) for c in USER_FEATURE_COLUMNS]
    )


def negative_pool(activity, visits, days: list[dt.date], activity_days: list[dt.date] | None = None):
    """(day, user_id) pools for negative sampling: available users of a day when the day has
    ``activity_scores``, else that day's active users (visits). Both inputs carry ``dt``.
    ``activity_days``: the days ``activity`` holds, when the caller knows them (saves a Spark job)."""
    from pyspark.sql import functions as F

    if activity is None:
        have: set = set()
    elif activity_days is not None:
        have = set(activity_days)
    else:
        have = {r["dt"] for r in activity.select("dt").distinct().collect()}
    parts = []
    if have:
        parts.append(activity.where(F.col("available")).select(F.col("dt").alias("day"), "user_id"))
    rest = [d for d in days if d not in have]
    if rest:
        parts.append(visits.where(F.col("dt").isin(rest)).select(F.col("dt").alias("day"), "user_id"))
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return out.distinct()


def item_features(items):
    return items.select(*ITEM_FEATURE_COLUMNS)


# ---------------------------------------------------------------------- bounded samples
RANK_SPACE = 2**31


def hash_rank(*cols, seed: int):
    """A deterministic pseudo-random rank in [0, 2^31) of a row's key: the same rows are sampled
    whatever the partitioning, row order or engine (as ``activity.training_frame`` does)."""
    from pyspark.sql import functions as F

    return F.pmod(F.xxhash64(*cols, F.lit(int(seed))), F.lit(RANK_SPACE))


def rank_threshold(total: int, keep: int, slack: float = 1.1) -> int | None:
    """Rank bound so that about ``slack * keep`` of ``total`` rows pass (None: keep everything).

    The filter runs on the executors before a collect; :func:`smallest_rank` then trims the
    collected superset to exactly ``keep`` rows on the driver."""
    if total <= keep:
        return None
    return int(min(1.0, slack * keep / total + 1e-4) * RANK_SPACE)


def smallest_rank(t: pa.Table, keep: int, keys: list[str], rank: str = "_r") -> pa.Table:
    """The ``keep`` rows of ``t`` with the smallest (rank, *keys): independent of row order."""
    if t.num_rows <= keep:
        return t
    cols = [t.column(c).to_numpy() for c in (rank, *keys)]
    order = np.lexsort(cols[::-1])[:keep]
    return t.take(np.sort(order))


def sample_pairs(pairs, total: int, max_pairs: int, seed: int):
    """``pairs`` (user_id, item_id, ...) with its hash rank ``_r``, filtered on the executors to a
    little more than ``max_pairs`` of its ``total`` rows."""
    from pyspark.sql import functions as F

    out = pairs.withColumn("_r", hash_rank("user_id", "item_id", seed=seed))
    thr = rank_threshold(total, max_pairs)
    return out if thr is None else out.where(F.col("_r") < F.lit(thr))


def sample_pool(pool, total_users: int, max_users: int, seed: int):
    """(day, user_id) pool rows of a hashed subset of a little more than ``max_users`` of its
    ``total_users`` distinct users (a user is in or out for every day: uniform negatives stay
    uniform, and the features to collect are bounded by ``max_users``)."""
    from pyspark.sql import functions as F

    out = pool.withColumn("_r", hash_rank("user_id", seed=seed))
    thr = rank_threshold(total_users, max_users)
    return out if thr is None else out.where(F.col("_r") < F.lit(thr))


def trim_pool(t: pa.Table, max_users: int) -> pa.Table:
    """Keep the pool rows of the ``max_users`` users with the smallest (rank, user_id)."""
    users = pa.table({"_r": t.column("_r"), "user_id": t.column("user_id")}).group_by(["_r", "user_id"]).aggregate([])
    if users.num_rows <= max_users:
        return t
    kept = smallest_rank(users, max_users, ["user_id"]).column("user_id")
    return t.filter(pc.is_in(t.column("user_id"), value_set=kept))


# ---------------------------------------------------------------------- incremental warm start
def _is_new(pos, excluded_items, seen_end: dt.date):
    """``pos`` with a boolean ``_new``: the pair was not in the training of a model whose window
    ended ``seen_end`` (first positive after it, or on an item of ``excluded_items``)."""
    from pyspark.sql import functions as F

    new = F.col("day") > F.lit(seen_end)
    if excluded_items is None:
        return pos.withColumn("_new", new)
    ex = excluded_items.select("item_id").distinct().withColumn("_ex", F.lit(True))
    return (pos.join(F.broadcast(ex), "item_id", "left")
            .withColumn("_new", new | F.col("_ex").isNotNull()).drop("_ex"))


def new_pairs(pos, excluded_items, seen_end: dt.date):
    """Positive pairs a model trained on the window ending ``seen_end`` has not seen: first positive
    after ``seen_end``, or on an item of ``excluded_items`` (the uploads of the model's own day,
    which ``exclude_day_uploads`` kept out of its training)."""
    from pyspark.sql import functions as F

    return _is_new(pos, excluded_items, seen_end).where(F.col("_new")).drop("_new")


def replay_size(n_new: int, ratio: float) -> int:
    """Seen pairs replayed beside ``n_new`` new ones (``two_tower.replay_ratio``)."""
    return round(max(0.0, float(ratio)) * int(n_new))


def replay_pairs(pos, excluded_items, window_start: dt.date, seen_end: dt.date, keep: int, seed: int,
                 total: int | None = None):
    """Exactly ``min(keep, seen)`` of the already-seen positive pairs of the window, hash-sampled.

    Why: fine-tuning a warm model only on the new pairs (about a day of them) drifts the towers
    towards that day and loses recall on the rest of the window (BENCHMARKS §8, session 6). Mixing
    in a sample of the pairs it has seen keeps the older signal at a fraction of full retraining.
    The seen pairs are the complement of :func:`new_pairs` restricted to the window
    ``[window_start, seen_end]`` (nothing after the previous model's cutoff, so nothing after D).
    The sample is the ``keep`` pairs with the smallest (xxhash64 rank, user_id, item_id): the same
    on a rerun whatever the partitioning. ``total`` (the seen pairs, when known) lets the executors
    drop most rows before the exact top-``keep``. Columns of ``pos`` are kept."""
    from pyspark.sql import functions as F

    cols = pos.columns
    if keep <= 0:
        return pos.where(F.lit(False))
    inside = (F.col("day") >= F.lit(window_start)) & (F.col("day") <= F.lit(seen_end))
    seen = _is_new(pos.where(inside), excluded_items, seen_end).where(~F.col("_new")).drop("_new")
    ranked = seen.withColumn("_rr", hash_rank("user_id", "item_id", seed=seed))
    # a superset of `keep` rows with 6 sigma (+50) to spare, then the exact top-`keep`
    thr = rank_threshold(total, keep, slack=1.0 + (6.0 * np.sqrt(keep) + 50.0) / keep) if total is not None else None
    if thr is not None:
        ranked = ranked.where(F.col("_rr") < F.lit(thr))
    return ranked.orderBy("_rr", "user_id", "item_id").limit(int(keep)).select(*cols)


# ---------------------------------------------------------------------- inference in Spark
_WORKER_MODELS: dict[str, object] = {}


def embed_users(spark, user_feats, model, batch_rows: int = 8192):
    """``user_feats`` -> (user_id, emb) with batched inference in ``mapInArrow``.

    The weights are broadcast once; each Python worker rebuilds the model once per broadcast
    (cached by a token), then embeds whole Arrow batches.
    """
    from dataclasses import asdict


    token = uuid.uuid4().hex
    bc = spark.sparkContext.broadcast((token, asdict(model.spec), model_to_bytes(model)))

    def _fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import torch


        tok, spec, blob = bc.value
        m = _WORKER_MODELS.get(tok)
        if m is None:
            torch.set_num_threads(1)
            _WORKER_MODELS.clear()
            m = _WORKER_MODELS[tok] = model_from_bytes(spec, blob)
        for b in batches:
            if b.num_rows == 0:
                continue
            e = user_embeddings(m, b, batch_rows)
            values = pa.array(e.reshape(-1), pa.float32())
            offsets = pa.array(np.arange(0, e.size + 1, e.shape[1], dtype=np.int32))
            yield pa.RecordBatch.from_arrays(
                [b.column(b.schema.get_field_index("user_id")), pa.ListArray.from_arrays(offsets, values)],
                names=["user_id", "emb"],
            )

    return user_feats.select(*USER_FEATURE_COLUMNS).mapInArrow(_fn, EMB_SCHEMA)
