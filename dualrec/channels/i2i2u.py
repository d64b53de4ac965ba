"""i2i2u channel (paper Eq. 5): users who liked items similar to the new item.

score(i, u) = sum over i' in S^I(i) of sim(i, i') * weight(u, i'), over positives of i' that
happened strictly before the batch cutoff of i (point in time), top K per item among the
available users.
"""

from __future__ import annotations

import logging

from dualrec.channels.base import Channel, ChannelSpec, available_users, top_k_per_item, with_cutoff

log = logging.getLogger(__name__)


def i2i2u_scores(items_df, item_similar, item_positive_users, available_df, k: int):
    """Pure transform. ``items_df`` needs item_id and cutoff; returns item_id, user_id, score."""
    from pyspark.sql import functions as F

    it = items_df.select("item_id", "cutoff")
    sim = item_similar.select("item_id", "similar_item_id", F.col("sim").cast("double").alias("sim"))
    pos = item_positive_users.select(
        F.col("item_id").alias("similar_item_id"), "user_id", F.col("ts").alias("pos_ts"),
        F.col("weight").cast("double").alias("weight"),
    )
    pairs = (
        it.join(sim, "item_id")
        .where(F.col("similar_item_id") != F.col("item_id"))
        .join(pos, "similar_item_id")
        .where(F.col("pos_ts") < F.col("cutoff"))
        .join(available_df.select("user_id"), "user_id", "left_semi")
    )
    scored = pairs.groupBy("item_id", "user_id").agg(F.sum(F.col("sim") * F.col("weight")).alias("score"))
    return top_k_per_item(scored, k).select("item_id", "user_id", F.col("score").cast("float").alias("score"))


class I2I2UChannel(Channel):
    name = "i2i2u"

    def retrieve(self, ctx, items_df):
        lake, day = ctx.lake, ctx.day
        for t in ("item_similar", "item_positive_users"):
            lake.require_partition(t, day, stage="retrieve/i2i2u")
        items = with_cutoff(items_df, day, ctx.cfg.dispatch.batches_per_day)
        return i2i2u_scores(
            items,
            lake.read_df(ctx.spark, "item_similar", [day], with_dt=False),
            lake.read_df(ctx.spark, "item_positive_users", [day], with_dt=False),
            available_users(ctx),
            self.k(ctx.cfg),
        )


CHANNEL = ChannelSpec(
    name="i2i2u", factory=I2I2UChannel, k=500, enabled=True, tables=("item_similar", "item_positive_users"), order=1,
    doc="positive users of content-similar items (paper Eq. 5)",
)
