"""i2u2u channel (paper Eq. 5): users similar to the users who already liked the new item.

score(i, u) = sum over u' in H^I(i) of weight(u', i) * sim(u', u), with H^I(i) = positives on i
strictly before i's batch cutoff. An item without feedback yet gets no candidates (paper).

Our extension (``retrieval.i2u2u_creator_seed``, off by default): the seed set also contains the
users who gave positive feedback to the creator's earlier items (before the cutoff), with weight
``i2u2u_creator_seed_weight``, so a brand-new item of a known creator is not always empty.
"""

from __future__ import annotations

import datetime as dt
import logging

from dualrec.channels.base import Channel, ChannelSpec, available_users, top_k_per_item, with_cutoff

log = logging.getLogger(__name__)


def item_seeds(items_df, item_positive_users):
    """H^I(i) before the cutoff: item_id, seed_user_id, seed_weight."""
    from pyspark.sql import functions as F

    pos = item_positive_users.select("item_id", F.col("user_id").alias("seed_user_id"), "ts",
                                     F.col("weight").cast("double").alias("seed_weight"))
    return (
        items_df.select("item_id", "cutoff").join(pos, "item_id")
        .where(F.col("ts") < F.col("cutoff"))
        .select("item_id", "seed_user_id", "seed_weight")
    )


def creator_seeds(items_df, recent_items, item_positive_users, weight: float):
    """Positives on the creator's *other* items before the cutoff: item_id, seed_user_id, seed_weight."""
    from pyspark.sql import functions as F

    earlier = recent_items.select(F.col("item_id").alias("prev_item_id"), "creator_id",
                                  F.col("upload_ts").alias("prev_upload_ts"))
    pos = item_positive_users.select(F.col("item_id").alias("prev_item_id"), F.col("user_id").alias("seed_user_id"),
                                     "ts", F.col("weight").cast("double").alias("w"))
    return (
        items_df.select("item_id", "creator_id", "cutoff")
        .join(earlier, "creator_id")
        .where((F.col("prev_item_id") != F.col("item_id")) & (F.col("prev_upload_ts") < F.col("cutoff")))
        .join(pos, "prev_item_id")
        .where(F.col("ts") < F.col("cutoff"))
        .groupBy("item_id", "seed_user_id")
        .agg((F.lit(weight) * F.max("w")).alias("seed_weight"))
    )


def i2u2u_scores(seeds, user_similar, available_df, k: int):
    """Pure transform: seeds (item_id, seed_user_id, seed_weight) -> item_id, user_id, score."""
    from pyspark.sql import functions as F

    # one weight per (item, seed user): the item's own positive wins over a creator seed
    seeds = seeds.groupBy("item_id", "seed_user_id").agg(F.max("seed_weight").alias("seed_weight"))
    sim = user_similar.select(F.col("user_id").alias("seed_user_id"), F.col("similar_user_id").alias("user_id"),
                              F.col("sim").cast("double").alias("sim"))
    pairs = seeds.join(sim, "seed_user_id").join(available_df.select("user_id"), "user_id", "left_semi")
    scored = pairs.groupBy("item_id", "user_id").agg(F.sum(F.col("seed_weight") * F.col("sim")).alias("score"))
    return top_k_per_item(scored, k).select("item_id", "user_id", F.col("score").cast("float").alias("score"))


class I2U2UChannel(Channel):
    name = "i2u2u"

    def retrieve(self, ctx, items_df):
        lake, day, cfg = ctx.lake, ctx.day, ctx.cfg
        for t in ("item_positive_users", "user_similar"):
            lake.require_partition(t, day, stage="retrieve/i2u2u")
        items = with_cutoff(items_df, day, cfg.dispatch.batches_per_day)
        pos = lake.read_df(ctx.spark, "item_positive_users", [day], with_dt=False)
        seeds = item_seeds(items, pos)
        if cfg.retrieval.i2u2u_creator_seed:
            days = [day - dt.timedelta(days=i) for i in range(cfg.retrieval.creator_seed_days + 1)]
            recent = lake.read_df(ctx.spark, "items", days, with_dt=False)
            seeds = seeds.unionByName(creator_seeds(items, recent, pos, cfg.retrieval.i2u2u_creator_seed_weight))
        return i2u2u_scores(seeds, lake.read_df(ctx.spark, "user_similar", [day], with_dt=False),
                            available_users(ctx), self.k(cfg))


CHANNEL = ChannelSpec(
    name="i2u2u", factory=I2U2UChannel, k=300, enabled=True, tables=("item_positive_users", "user_similar"), order=2,
    doc="users similar to the item's positive users (paper Eq. 5)",
)
