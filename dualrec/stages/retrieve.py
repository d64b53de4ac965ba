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
    check_channel_inputs,
    get_channel,
    mix,
    score_columns,
    seen_pairs,
)
from dualrec.registry import table_producer
from dualrec.stages.base import StageContext, partition_rows, write_empty

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


def candidate_stats(cand, names: list[str]) -> dict:
    """Counts of the written candidates in ONE aggregation: pairs and items overall and per channel,
    and each channel's share of the credit (a pair found by n channels gives each 1/n, as
    :func:`dualrec.channels.base.channel_shares`)."""
    from pyspark.sql import functions as F

    aggs = [F.count(F.lit(1)).alias("_pairs"), F.countDistinct("item_id").alias("_items")]
    for k, n in enumerate(names):
        has = F.array_contains("channels", n)
        aggs += [
            F.sum(F.when(has, 1).otherwise(0)).alias(f"p{k}"),
            F.countDistinct(F.when(has, F.col("item_id"))).alias(f"i{k}"),
            F.sum(F.when(has, F.lit(1.0) / F.size("channels")).otherwise(0.0)).alias(f"w{k}"),
        ]
    r = cand.agg(*aggs).first()
    credit = {n: float(r[f"w{k}"] or 0.0) for k, n in enumerate(names)}
    total = sum(credit.values())
    return {
        "candidates": int(r["_pairs"]),
        "items_with_candidates": int(r["_items"]),
        "pairs_by_channel": {n: int(r[f"p{k}"] or 0) for k, n in enumerate(names)},
        "items_by_channel": {n: int(r[f"i{k}"]) for k, n in enumerate(names)},
        "channel_share": {c: v / total for c, v in sorted(credit.items()) if v} if total else {},
    }


def run(ctx: StageContext) -> dict:
    """Retrieve candidates for D's uploads from every configured channel."""
    names = channel_names(ctx.cfg)
    if partition_rows(ctx.lake, "items", ctx.day) == 0:
        # a day without uploads: nothing to retrieve and no channel input is read; a valid empty
        # partition, no Spark job
        write_empty(ctx.lake, "candidates", ctx.day, score_columns(names))
        log.info("retrieve %s: no uploads, empty candidates published", ctx.day)
        return {"items": 0, "candidates": 0, "items_with_candidates": 0,
                "pairs_by_channel": {n: 0 for n in names}, "items_by_channel": {n: 0 for n in names},
                "channel_share": {}}
    check_channel_inputs(ctx.lake, ctx.day, names, table_producer)
    items = day_items(ctx).cache()
    avail = available_users(ctx).cache()
    # the channels are planned here and run inside the one job that writes the merged candidates
    # (no per-channel count: a Spark job each, only for a log line)
    outs = {name: get_channel(name).retrieve(ctx, items) for name in names}
    seen = seen_pairs(ctx, items) if ctx.cfg.retrieval.exclude_seen else None
    merged = mix(outs, items, avail, names, exclude_df=seen)
    ctx.lake.write_df(merged, "candidates", ctx.day, coalesce=4)
    cand = ctx.lake.read_df(ctx.spark, "candidates", [ctx.day], with_dt=False)
    stats = {
        "items": items.count(),
        "available_users": avail.count(),
        **candidate_stats(cand, names),
    }
    items.unpersist()
    avail.unpersist()
    log.info("retrieve %s: %s", ctx.day, stats)
    return stats
