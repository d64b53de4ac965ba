"""Peer comparison: Spark MLlib ALS ``recommendForItemSubset`` as an item -> top-N-users recommender.

Spark already ships "recommend users for these items" (implicit-feedback matrix factorisation).
This module holds the pure pieces of the benchmark ``benchmarks/peer_als.py``: the training set
built from ``interactions``, the fit, the item -> top-L users call, and the recall of each item's
logged positive users among the users it was given. It exists to show, on the same lake, what
ALS can and cannot do for the creator-side task: it has no content tower, so an item with no
interactions gets no users at all (no cold start), and it ignores the per-user cap Q.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from dualrec.config import EXPLICIT_FEEDBACKS

log = logging.getLogger(__name__)

EXPLICIT_FLAGS: tuple[str, ...] = tuple(f"is_{f}" for f in EXPLICIT_FEEDBACKS)


@dataclass
class AlsParams:
    """ALS hyper-parameters and the implicit-feedback weights of the training set.

    Weights turn one exposure row into an implicit "rating" (ALS confidence = 1 + alpha*rating):
    explicit (creator-visible) feedback counts far more than clicks and long views, mirroring
    the beta of the ranker. Rows with rating 0 (exposure without any feedback) are dropped: in
    implicit ALS they carry the same preference 0 / confidence 1 as an unobserved pair, and
    keeping them would only give never-engaged items a zero factor and arbitrary top users.
    """

    rank: int = 32
    max_iter: int = 10
    reg_param: float = 0.1
    alpha: float = 10.0
    weights: dict[str, float] = field(
        default_factory=lambda: {
            "is_click": 1.0,
            "is_long_view": 1.0,
            "is_like": 4.0,
            "is_comment": 6.0,
            "is_follow": 8.0,
            "is_share": 6.0,
            "is_profile_enter": 3.0,
        }
    )


def training_set(interactions: DataFrame, weights: dict[str, float]) -> DataFrame:
    """(user_id, item_id, rating) summed over the window; only pairs with rating > 0.

    Input: ``interactions`` rows (any days; the caller picks the point-in-time window).
    """
    rating = sum((F.col(c).cast("double") * float(w) for c, w in weights.items()), F.lit(0.0))
    return (
        interactions.select("user_id", "item_id", rating.alias("rating"))
        .groupBy("user_id", "item_id")
        .agg(F.sum("rating").alias("rating"))
        .where(F.col("rating") > 0)
    )


def dense_ids(ids: DataFrame, col: str, idx_col: str, buckets: int = 64) -> DataFrame:
    """Map int64 ids to dense int32 indices 0..n-1 (ALS wants int ids), deterministically.

    Ids are hashed into ``buckets``; the index is the bucket's offset (from the collected
    per-bucket counts) plus the id's rank inside its bucket, so no step pulls every id into
    one partition (an unpartitioned row_number window would).
    """
    d = ids.select(col).distinct().withColumn("_b", F.pmod(F.xxhash64(col), F.lit(buckets)).cast("int"))
    counts = {r["_b"]: r["count"] for r in d.groupBy("_b").count().collect()}
    offsets, acc = {}, 0
    for b in range(buckets):
        offsets[b] = acc
        acc += counts.get(b, 0)
    if acc >= 2**31:
        raise ValueError(f"{acc} distinct {col} values do not fit ALS's int32 ids")
    offset = F.create_map(*[x for b, o in offsets.items() for x in (F.lit(b), F.lit(o))])
    rn = F.row_number().over(Window.partitionBy("_b").orderBy(col)) - 1
    return d.select(col, (offset[F.col("_b")] + rn).cast("int").alias(idx_col))


@dataclass
class AlsFit:
    """A fitted ALS model with the id maps needed to translate its output back."""

    model: object  # pyspark.ml.recommendation.ALSModel
    users: DataFrame  # user_id, uidx
    items: DataFrame  # item_id, iidx


def fit_als(train: DataFrame, params: AlsParams, seed: int) -> AlsFit:
    """Fit implicit-preference ALS on (user_id, item_id, rating); deterministic given ``seed``."""
    from pyspark.ml.recommendation import ALS

    users = dense_ids(train, "user_id", "uidx").cache()
    items = dense_ids(train, "item_id", "iidx").cache()
    data = train.join(users, "user_id").join(items, "item_id").select("uidx", "iidx", "rating")
    als = ALS(
        rank=params.rank,
        maxIter=params.max_iter,
        regParam=params.reg_param,
        alpha=params.alpha,
        implicitPrefs=True,
        userCol="uidx",
        itemCol="iidx",
        ratingCol="rating",
        coldStartStrategy="drop",
        nonnegative=False,
        seed=seed,
    )
    model = als.fit(data)
    return AlsFit(model=model, users=users, items=items)


def recommend_users(fit: AlsFit, item_ids: DataFrame, n_users: int) -> DataFrame:
    """ALS ``recommendForItemSubset``: up to ``n_users`` users per item, as (item_id, user_id, score, rank).

    Items unknown to the model (no positive interaction in the window) get no rows: ALS has
    no cold start. ``rank`` is 1-based within the item.
    """
    subset = item_ids.select("item_id").distinct().join(fit.items, "item_id").select("iidx")
    recs = fit.model.recommendForItemSubset(subset, n_users)
    long = recs.select("iidx", F.posexplode("recommendations").alias("pos", "rec")).select(
        "iidx",
        F.col("rec.uidx").alias("uidx"),
        F.col("rec.rating").cast("float").alias("score"),
        (F.col("pos") + 1).cast("int").alias("rank"),
    )
    return long.join(fit.items, "iidx").join(fit.users, "uidx").select("item_id", "user_id", "score", "rank")


def positive_pairs(interactions: DataFrame) -> DataFrame:
    """Distinct (item_id, user_id) with any creator-visible feedback (like/comment/follow/share/profile)."""
    any_pos = F.greatest(*[F.col(c).cast("int") for c in EXPLICIT_FLAGS]) > 0
    return interactions.where(any_pos).select("item_id", "user_id").distinct()


def recall_per_item(assigned: DataFrame, positives: DataFrame, items: DataFrame | None = None) -> DataFrame:
    """Per item with >= 1 positive: (item_id, positives, hits, recall).

    ``assigned``: (item_id, user_id) the method gave the item; ``positives``: (item_id, user_id);
    ``items``: optional item_id filter (the item group being scored). An item with positives but
    no assigned users has recall 0: not covering an item is a miss, not an exclusion.
    """
    pos = positives.select("item_id", "user_id").distinct()
    if items is not None:
        pos = pos.join(items.select("item_id").distinct(), "item_id", "left_semi")
    hit = assigned.select("item_id", "user_id").distinct().withColumn("_hit", F.lit(1))
    joined = pos.join(hit, ["item_id", "user_id"], "left")
    return (
        joined.groupBy("item_id")
        .agg(F.count(F.lit(1)).alias("positives"), F.sum(F.coalesce(F.col("_hit"), F.lit(0))).alias("hits"))
        .withColumn("recall", F.col("hits") / F.col("positives"))
    )


def summarize_recall(per_item: DataFrame) -> dict[str, float | int | None]:
    """``macro`` = mean recall over items with >= 1 positive (the headline); ``micro`` = hits / positives."""
    row = per_item.agg(
        F.avg("recall").alias("macro"),
        F.sum("hits").alias("hits"),
        F.sum("positives").alias("positives"),
        F.count(F.lit(1)).alias("items"),
    ).first()
    positives = int(row["positives"] or 0)
    return {
        "macro": float(row["macro"]) if row["macro"] is not None else None,
        "micro": (int(row["hits"]) / positives) if positives else None,
        "items": int(row["items"]),
        "positives": positives,
    }


def coverage_and_load(assigned: DataFrame, items: DataFrame) -> dict[str, int | float]:
    """Items of ``items`` covered (>= 1 user), mean users per covered item, and the max per-user load |D_u|."""
    a = assigned.join(items.select("item_id").distinct(), "item_id", "left_semi")
    per_item = a.groupBy("item_id").count()
    per_user = a.groupBy("user_id").count()
    ir = per_item.agg(F.count(F.lit(1)).alias("n"), F.avg("count").alias("mean")).first()
    ur = per_user.agg(F.max("count").alias("max"), F.count(F.lit(1)).alias("users")).first()
    return {
        "items": items.select("item_id").distinct().count(),
        "items_covered": int(ir["n"]),
        "users_per_item": float(ir["mean"]) if ir["mean"] is not None else 0.0,
        "users_matched": int(ur["users"]),
        "max_du": int(ur["max"] or 0),
    }


def users_over_cap(assigned: DataFrame, q: int) -> int:
    """How many users would receive more than ``q`` items (ALS has no capacity: the store does)."""
    return assigned.groupBy("user_id").count().where(F.col("count") > q).count()


def warm_items(next_day: DataFrame, uploads: DataFrame) -> DataFrame:
    """Items uploaded before D that still get exposure on D+1 (ALS's home turf).

    ``next_day``: interactions of D+1; ``uploads``: item_id of the items uploaded on D and on
    D+1 (both excluded: D's are the "new" group, D+1's did not exist when D ran).
    """
    exposed = next_day.select("item_id").distinct()
    return exposed.join(uploads.select("item_id").distinct(), "item_id", "left_anti")


def capped_dispatch(recs: DataFrame, order: DataFrame, available_users, L: int, Q: int):
    """ALS recommendations pushed through our store: available users only, |D_u| <= Q, upload order.

    ``recs``: (item_id, user_id, score) - ask ALS for more than L users so the cap does not
    starve late items; ``order``: (item_id, item_rank, batch) from :func:`dualrec.dispatch.item_order_df`.
    Returns a pandas frame (item_id, user_id) of the selected pairs. Separates what ALS's
    scores are worth from what the capacity constraint costs.
    """
    import numpy as np

    from dualrec.dispatch import dispatch_day_arrays

    e = recs.join(order, "item_id").select("batch", "item_id", "user_id", "score", "item_rank").toPandas()
    mask, _ = dispatch_day_arrays(
        e["batch"].to_numpy(np.int64), e["item_id"].to_numpy(np.int64), e["user_id"].to_numpy(np.int64),
        e["score"].to_numpy(np.float64), e["item_rank"].to_numpy(np.int64), np.asarray(available_users, np.int64),
        L, Q, policy="arrival",
    )
    return e.loc[mask, ["item_id", "user_id"]].reset_index(drop=True)
