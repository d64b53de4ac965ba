"""The one retrieval-channel interface, the channel registry and the mixer (paper 3.2, Eq. 5/8).

A channel turns the day's new items into (item_id, user_id, score) candidates. Adding a channel
means adding a module with a :class:`Channel` subclass and one entry in :data:`REGISTRY`; the
retrieve job, the mixer and the metrics pick it up by name from ``cfg.retrieval.channels``.

Point in time: ``items_df`` carries each item's micro-batch (``batch``); a channel may use only
data strictly before that batch's cutoff (:func:`with_cutoff` adds the cutoff column).
"""

from __future__ import annotations

import abc
import importlib
import logging
from typing import Any

log = logging.getLogger(__name__)

REGISTRY: dict[str, str] = {
    "two_tower": "dualrec.channels.two_tower:TwoTowerChannel",
    "i2i2u": "dualrec.channels.i2i2u:I2I2UChannel",
    "i2u2u": "dualrec.channels.i2u2u:I2U2UChannel",
}
"""Channel name -> "module:Class". A new channel = a new module + one entry here."""


class Channel(abc.ABC):
    """A retrieval channel: finds up to K users for each new item.

    ``retrieve(ctx, items_df)``: ``ctx`` is a :class:`jobs.common.StageContext` (lake, day, cfg,
    spark); ``items_df`` has the day's items (columns of the ``items`` table plus ``batch``).
    Returns a Spark DataFrame (item_id long, user_id long, score float), at most K rows per item,
    unique (item_id, user_id), only users of the available set.
    """

    name: str = ""

    @abc.abstractmethod
    def retrieve(self, ctx: Any, items_df: Any) -> Any:  # pragma: no cover - interface
        ...

    def k(self, cfg) -> int:
        return int(cfg.retrieval.k[self.name])


def register(name: str, target: str) -> None:
    """Register a channel at runtime ("module:Class"), e.g. from a plugin or a test."""
    REGISTRY[name] = target


def registered_names() -> list[str]:
    """Names of every registered channel, sorted, without importing any channel module.

    :mod:`dualrec.config` validates ``retrieval.channels`` and ``retrieval.k`` against this at
    load time, so this package's ``__init__`` and this module must stay free of imports of
    channel modules and of :mod:`dualrec.config`.
    """
    return sorted(REGISTRY)


def get_channel(name: str) -> Channel:
    """Instantiate a registered channel by name."""
    try:
        target = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown retrieval channel {name!r}; registered: {', '.join(sorted(REGISTRY))}") from None
    mod, cls = target.split(":")
    obj = getattr(importlib.import_module(mod), cls)()
    if obj.name != name:
        raise ValueError(f"channel class {target} has name {obj.name!r}, registered as {name!r}")
    return obj


def channel_names(cfg) -> list[str]:
    """The enabled channels, in configuration order (all must be registered)."""
    names = list(cfg.retrieval.channels)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"retrieval.channels has unregistered channel(s): {', '.join(unknown)}")
    return names


# ---------------------------------------------------------------------- shared Spark helpers
def with_cutoff(items_df, day, batches_per_day: int):
    """Add ``cutoff`` (exclusive end of the item's micro-batch): the channel's data horizon."""
    from pyspark.sql import functions as F

    from dualrec.batches import batch_cutoff_col

    return items_df.withColumn("cutoff", batch_cutoff_col(day, F.col("batch"), batches_per_day))


def available_users(ctx):
    """Users with ``available = true`` in ``activity_scores`` dt=D (the set U~ of Eq. 12)."""
    from pyspark.sql import functions as F

    ctx.lake.require_partition("activity_scores", ctx.day, stage="retrieve")
    df = ctx.lake.read_df(ctx.spark, "activity_scores", [ctx.day], with_dt=False)
    return df.where(F.col("available")).select("user_id").distinct()


def seen_pairs(ctx, items_df):
    """(item_id, user_id) of D's new items that the user already interacted with before the
    item's micro-batch cutoff, i.e. what the dispatcher can know at dispatch time.

    Dispatching an item to a user who has already seen it wastes one of that user's Q slots,
    so :func:`mix` drops these pairs (``retrieval.exclude_seen``). Later interactions are not
    visible at the cutoff and are not used.
    """
    from pyspark.sql import functions as F

    cut = with_cutoff(items_df, ctx.day, ctx.cfg.dispatch.batches_per_day).select("item_id", "cutoff")
    inter = ctx.lake.read_df(ctx.spark, "interactions", [ctx.day], with_dt=False).select("item_id", "user_id", "ts")
    return (
        inter.join(F.broadcast(cut), "item_id")
        .where(F.col("ts") < F.col("cutoff"))
        .select("item_id", "user_id")  # unique: (user_id, item_id) is the interactions key
    )


def top_k_per_item(scored, k: int):
    """Keep the K best users per item (ties broken by user_id, so the result is deterministic)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy("item_id").orderBy(F.col("score").desc(), F.col("user_id").asc())
    return scored.withColumn("_rk", F.row_number().over(w)).where(F.col("_rk") <= k).drop("_rk")


# ---------------------------------------------------------------------- mixer
def score_columns(channels: list[str]) -> list[str]:
    """``score_<channel>`` for the enabled channels plus those the candidates contract names."""
    from schemas.tables import table_spec

    contract = [c for c in table_spec("candidates").names if c.startswith("score_")]
    extra = [f"score_{c}" for c in channels if f"score_{c}" not in contract]
    return contract + extra


def mix(
    channel_dfs: dict[str, Any],
    items_df,
    available_df,
    channel_order: list[str] | None = None,
    exclude_df=None,
):
    """Merge channel outputs per (item, user) with provenance, keeping only available users
    and dropping the (item_id, user_id) pairs of ``exclude_df`` (e.g. :func:`seen_pairs`).

    Output: batch, item_id, user_id, score_<channel> (null when that channel did not find the
    pair), channels (list of the channels that found it, in ``channel_order``).
    """
    from pyspark.sql import functions as F

    order = list(channel_order or channel_dfs)
    cols = score_columns(order)
    parts = []
    for name, df in channel_dfs.items():
        sel = [F.col("item_id").cast("long"), F.col("user_id").cast("long")]
        sel += [
            (F.col("score").cast("float") if c == f"score_{name}" else F.lit(None).cast("float")).alias(c) for c in cols
        ]
        parts.append(df.select(*sel))
    if not parts:
        raise ValueError("mix: no channel outputs to merge")
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.unionByName(p)
    merged = merged.groupBy("item_id", "user_id").agg(*[F.max(c).alias(c) for c in cols])
    prov = F.array(*[F.when(F.col(f"score_{n}").isNotNull(), F.lit(n)) for n in order])
    merged = merged.withColumn("channels", F.filter(prov, lambda x: x.isNotNull()))
    merged = merged.join(available_df.select("user_id"), "user_id", "left_semi")
    if exclude_df is not None:
        merged = merged.join(exclude_df.select("item_id", "user_id"), ["item_id", "user_id"], "left_anti")
    merged = merged.join(items_df.select("item_id", F.col("batch").cast("int")), "item_id", "inner")
    return merged.select("batch", "item_id", "user_id", *cols, "channels")


def channel_shares(df) -> dict[str, float]:
    """Share of candidate/exposure credit per channel; a pair found by n channels gives each 1/n.

    Shares sum to 1 (comparable with the paper's Table 3). Accepts a Spark DataFrame or a pandas
    DataFrame with a ``channels`` list column. Empty input -> {}.
    """
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        from pyspark.sql import functions as F

        ex = df.select(F.explode("channels").alias("ch"), (F.lit(1.0) / F.size("channels")).alias("w"))
        rows = ex.groupBy("ch").agg(F.sum("w").alias("w")).collect()
        credit = {r["ch"]: float(r["w"]) for r in rows}
    else:
        credit: dict[str, float] = {}
        for chs in df["channels"]:
            chs = list(chs)
            for c in chs:
                credit[c] = credit.get(c, 0.0) + 1.0 / len(chs)
    total = sum(credit.values())
    return {c: v / total for c, v in sorted(credit.items())} if total else {}
