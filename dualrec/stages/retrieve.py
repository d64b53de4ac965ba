"""Stage ``retrieve``: every enabled channel for the items uploaded on D, merged -> ``candidates``.

Reads ``items`` dt=D (micro-batch of each item from its upload time), ``activity_scores`` dt=D
(available users), ``interactions`` dt=D (pairs already seen before the item's batch cutoff are
dropped, ``retrieval.exclude_seen``) and what each enabled channel declares in its
:class:`~dualrec.channels.base.ChannelSpec` (checked here before any work, since the stage's
channel inputs depend on the configured channels); writes ``candidates`` dt=D with one row per
(item, user), a ``score_<channel>`` column per channel and the list of channels that found the pair.
"""

from __future__ import annotations

import datetime as dt
import logging

from dualrec.channels.base import (
    available_users,
    channel_names,
    channel_shares,
    check_channel_inputs,
    get_channel,
    mix,
    seen_pairs,
)
from dualrec.registry import table_producer
from dualrec.stages.base import StageContext

log = logging.getLogger("dualrec.retrieve")


def reads(cfg, day: dt.date) -> dict[str, list[dt.date]]:
    """Upstream partitions read for ``day`` (checked by the runner before ``run``)."""
    r = cfg.retrieval
    items = [day - dt.timedelta(days=i) for i in range(r.creator_seed_days + 1)] if r.i2u2u_creator_seed else [day]
    return {"items": sorted(items), "interactions": [day] if r.exclude_seen else []}


def day_items(ctx: StageContext):
    """Items uploaded on D with their micro-batch index."""
    from pyspark.sql import functions as F

    from dualrec.batches import batch_col

    items = ctx.lake.read_df(ctx.spark, "items", [ctx.day], with_dt=False)
    return items.withColumn("batch", batch_col(F.col("upload_ts"), ctx.cfg.dispatch.batches_per_day))


def run(ctx: StageContext) -> dict:
    """Retrieve candidates for D's uploads from every configured channel."""
    import time

    from pyspark.sql import functions as F

    names = channel_names(ctx.cfg)
    check_channel_inputs(ctx.lake, ctx.day, names, table_producer)
    items = day_items(ctx).cache()
    avail = available_users(ctx).cache()
    outs, seconds = {}, {}
    for name in names:
        t0 = time.time()
        df = get_channel(name).retrieve(ctx, items).cache()
        df.count()  # materialise here so the timing belongs to the channel
        outs[name] = df
        seconds[name] = round(time.time() - t0, 3)
    seen = seen_pairs(ctx, items).cache() if ctx.cfg.retrieval.exclude_seen else None
    merged = mix(outs, items, avail, names, exclude_df=seen)
    ctx.lake.write_df(merged, "candidates", ctx.day, coalesce=4)
    cand = ctx.lake.read_df(ctx.spark, "candidates", [ctx.day], with_dt=False)
    per_channel = {
        n: cand.where(F.array_contains("channels", n)).agg(F.count("*").alias("p"), F.countDistinct("item_id").alias("i")).first()
        for n in names
    }
    stats = {
        "items": items.count(),
        "available_users": avail.count(),
        "candidates": cand.count(),
        "items_with_candidates": cand.select("item_id").distinct().count(),
        "pairs_by_channel": {n: int(r["p"]) for n, r in per_channel.items()},
        "items_by_channel": {n: int(r["i"]) for n, r in per_channel.items()},
        "channel_share": channel_shares(cand),
        "channel_seconds": seconds,
        "seen_pairs_excluded_at_most": seen.count() if seen is not None else 0,
    }
    for df in outs.values():
        df.unpersist()
    items.unpersist()
    avail.unpersist()
    if seen is not None:
        seen.unpersist()
    log.info("retrieve %s: %s", ctx.day, stats)
    return stats

