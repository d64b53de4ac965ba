"""The ranker's per-day inputs, cached: projected items by upload day, exposure aggregates by day.

Why: the ranker's point-in-time features (``dualrec.ranking``) sum per-(user | creator | item,
day) exposure counts over a window of ``rank.user_window_days`` days, and a day's run needs them
three times (training rows, scoring tables, the metrics AUC frame), each over weeks of
interactions. Both inputs depend only on one day's partitions, so each is computed once and
kept in a :mod:`dualrec.daycache` entry:

* ``_cache/rank_items/dt=X``: the items uploaded on X with their content projected to
  ``rank.profile_dim`` columns (``i_proj_k``) instead of the ``content_emb`` list. Reading them
  back needs no Python worker and no list column.
* ``_cache/rank_daily/{user,creator,item}/dt=X``: the exposures of day X counted per key
  (impressions, any explicit feedback, each task) and, per user, the summed projected content of
  the engaged exposures (the profile). An exposure counts when its item was uploaded in
  [X - :func:`item_span`, X], the widest item range any ranker window looks up, so an entry is
  the same whichever window reads it.

An entry is keyed by the content version of the partitions it came from (interactions dt=X, items
of the span), so republishing either recomputes it.
"""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dualrec import daycache as DC
from dualrec.lake import Lake, date_range
from models.ranker import TASKS
from schemas.tables import spark_schema

log = logging.getLogger(__name__)

PROJ_SEED = 20250101
EXPLICIT = ("like", "comment", "follow", "share", "profile_enter")
ITEMS_CACHE = "_cache/rank_items"
DAILY_CACHE = "_cache/rank_daily"
KINDS = {"user": "user_id", "creator": "creator_id", "item": "item_id"}
VERSION = 1  # bump when an entry's content changes: older entries are recomputed


def projection_matrix(emb_dim: int, p: int, seed: int = PROJ_SEED) -> np.ndarray:
    """Fixed (emb_dim, p) Gaussian map with variance 1/p: x.W . y.W ~= x . y."""
    return (np.random.default_rng(seed + emb_dim * 1000 + p).normal(size=(emb_dim, p)) / np.sqrt(p)).astype(np.float32)


def add_projection(df, emb_col: str, prefix: str, p: int, emb_dim: int):
    """Replace a list<float> column by ``prefix_0..p-1`` float columns (vectorised mapInArrow)."""
    from pyspark.sql import types as T

    W = projection_matrix(emb_dim, p)
    keep = [f for f in df.schema.fields if f.name != emb_col]
    schema = T.StructType(keep + [T.StructField(f"{prefix}_{k}", T.FloatType()) for k in range(p)])
    names = [f.name for f in keep]

    def fn(batches):
        for b in batches:
            arrays = [b.column(n) for n in names] + list(_project(b.column(emb_col), W))
            yield pa.RecordBatch.from_arrays(arrays, names=names + [f"{prefix}_{k}" for k in range(p)])

    return df.mapInArrow(fn, schema)


def _project(col, W: np.ndarray) -> list[pa.Array]:
    """The p projected columns of a list<float> column (float32, like the Spark path)."""
    emb_dim, p = W.shape
    n = len(col)
    flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float32)
    x = flat.reshape(n, emb_dim) if n else np.zeros((0, emb_dim), np.float32)
    proj = x @ W
    return [pa.array(proj[:, k], pa.float32()) for k in range(p)]


def item_span(cfg) -> int:
    """Days of uploads an exposure's item may be looked up in (the widest of any ranker window)."""
    rc = cfg.rank
    return rc.item_lookback_days + rc.item_history_days + rc.user_window_days + rc.train_window_days


# ---------------------------------------------------------------------- projected items
def _emb_dim(lake: Lake, days: list[dt.date]) -> int:
    d = lake.emb_dim()
    if d:
        return int(d)
    for day in days:
        t = lake.read_table("items", day, columns=["content_emb"])
        if t.num_rows:
            return int(len(t.column("content_emb")[0]))
    return 1


def projected_items(lake: Lake, day: dt.date, p: int, emb_dim: int) -> pa.Table:
    """Items uploaded on ``day`` with ``content_emb`` replaced by ``i_proj_0..p-1`` (float32)."""
    t = lake.read_table("items", day)
    proj = _project(t.column("content_emb").combine_chunks() if t.num_rows else pa.array([], pa.list_(pa.float32())),
                    projection_matrix(emb_dim, p))
    out = t.drop_columns(["content_emb"])
    for k, a in enumerate(proj):
        out = out.append_column(f"i_proj_{k}", a)
    return out


def _items_schema(p: int):
    from pyspark.sql import types as T

    base = [f for f in spark_schema("items").fields if f.name != "content_emb"]
    return T.StructType(base + [T.StructField(f"i_proj_{k}", T.FloatType()) for k in range(p)]
                        + [T.StructField("dt", T.DateType())])


def item_table(spark, lake: Lake, start: dt.date, end: dt.date, p: int):
    """Items uploaded in [start, end] with projected content, ``upload_day`` and ``i_log_duration``."""
    from pyspark.sql import functions as F

    days = [d for d in date_range(start, end) if lake.has_partition("items", d)]
    emb_dim = _emb_dim(lake, days)
    keys = {d: DC.digest([VERSION, "items", d.isoformat(), p, PROJ_SEED, emb_dim, DC.partition_version(lake, "items", d)])
            for d in days}
    missing = DC.missing_days(lake, [ITEMS_CACHE], keys)

    def fill(staging: dict[str, str], todo: list[dt.date]) -> None:
        for d in todo:
            rel = DC.entry_rel(staging[ITEMS_CACHE], d)
            lake.fs.create_dir(lake.fs_path(rel), recursive=True)
            with lake.fs.open_output_stream(lake.fs_path(f"{rel}/part-00000.parquet")) as f:
                pq.write_table(projected_items(lake, d, p, emb_dim), f, compression="zstd")

    if missing:
        try:
            DC.publish(lake, ITEMS_CACHE, missing, keys, fill)
        except OSError as e:  # a read-only lake: project in Spark
            log.warning("ranker item cache not writable (%s): projecting %d day(s) in Spark", e, len(days))
            items = lake.read_df(spark, "items", days)
            items = add_projection(items, "content_emb", "i_proj", p, emb_dim).withColumnRenamed("dt", "upload_day")
            return items.withColumn("i_log_duration", F.log1p(F.col("duration_ms") / F.lit(1000.0)))
    items = DC.read(spark, lake, ITEMS_CACHE, days, _items_schema(p)).withColumnRenamed("dt", "upload_day")
    return items.withColumn("i_log_duration", F.log1p(F.col("duration_ms") / F.lit(1000.0)))


# ---------------------------------------------------------------------- exposures
def enriched_interactions(spark, lake: Lake, start: dt.date, end: dt.date, items):
    """Exposures of [start, end] of items in ``items``: flags as ints, ``row_day``, ``creator_id``.

    Narrow on purpose (13 columns): it is cached and scanned by every aggregate; the item's
    content columns are joined only where a feature needs them (:func:`daily_aggregates`
    profiles, the returned rows)."""
    return _flags(lake.read_df(spark, "interactions", date_range(start, end)).withColumnRenamed("dt", "row_day")).join(
        items.select("item_id", "creator_id"), "item_id", "inner")


def _flags(inter):
    from pyspark.sql import functions as F

    cols = [F.col(f"is_{t}").cast("int").alias(f"y_{t}") for t in TASKS]
    ex = F.greatest(*[F.col(f"is_{t}").cast("int") for t in EXPLICIT])
    eng = F.greatest(ex, F.col("is_long_view").cast("int"))
    return inter.select("user_id", "item_id", "ts", "row_day", *cols, ex.alias("explicit"), eng.alias("engaged"))


def daily_aggregates(enriched, key: str, p: int, items=None):
    """Per-(key, day) counts; with ``items`` also the engaged exposures' summed projected content
    (``n_prof``, ``prof_k``: the profile), joined to the engaged rows only."""
    from pyspark.sql import functions as F

    aggs = [F.count("*").alias("n_imp"), F.sum("explicit").alias("n_explicit")]
    aggs += [F.sum(f"y_{t}").alias(f"n_{t}") for t in TASKS]
    if items is None:
        return enriched.groupBy(key, F.col("row_day").alias("dt")).agg(*aggs)
    aggs += [F.sum(F.col("engaged")).alias("n_prof")]
    counts = enriched.groupBy(key, F.col("row_day").alias("dt")).agg(*aggs)
    prof = (
        enriched.where(F.col("engaged") > 0).select(key, "row_day", "item_id")
        .join(items.select("item_id", *[f"i_proj_{k}" for k in range(p)]), "item_id")
        .groupBy(key, F.col("row_day").alias("dt")).agg(*[F.sum(f"i_proj_{k}").alias(f"prof_{k}") for k in range(p)])
    )
    return counts.join(prof, [key, "dt"], "left").fillna(0.0, subset=[f"prof_{k}" for k in range(p)])


def _daily_schema(kind: str, p: int):
    from pyspark.sql import types as T

    cols = [T.StructField(KINDS[kind], T.LongType()), T.StructField("n_imp", T.LongType()),
            T.StructField("n_explicit", T.LongType())] + [T.StructField(f"n_{t}", T.LongType()) for t in TASKS]
    if kind == "user":
        cols += [T.StructField("n_prof", T.LongType())] + [T.StructField(f"prof_{k}", T.DoubleType()) for k in range(p)]
    return T.StructType(cols + [T.StructField("dt", T.DateType())])


def _daily_keys(lake: Lake, days: list[dt.date], cfg) -> dict[dt.date, str]:
    span = item_span(cfg)
    p = cfg.rank.profile_dim
    present = [d for d in days if lake.has_partition("interactions", d)]
    if not present:
        return {}
    items_v = {d: DC.partition_version(lake, "items", d)
               for d in date_range(min(present) - dt.timedelta(days=span), max(present))}
    return {d: DC.digest([VERSION, "daily", d.isoformat(), p, PROJ_SEED, span,
                          DC.partition_version(lake, "interactions", d),
                          [items_v[d - dt.timedelta(days=k)] for k in range(span + 1)]])
            for d in present}


def cached_daily(spark, lake: Lake, first: dt.date, last: dt.date, cfg) -> dict[str, object]:
    """Per-(user | creator | item, day) aggregates of the days [first, last], computed where missing.

    Returns {kind: DataFrame(key, n_imp, n_explicit, n_<task>..., [n_prof, prof_k...], dt)}."""
    from pyspark.sql import functions as F

    p, span = cfg.rank.profile_dim, item_span(cfg)
    days = date_range(first, last) if last >= first else []
    keys = _daily_keys(lake, days, cfg)
    roots = {kind: f"{DAILY_CACHE}/{kind}" for kind in KINDS}
    missing = DC.missing_days(lake, roots.values(), keys)

    def fill(staging: dict[str, str], todo: list[dt.date]) -> None:
        items = item_table(spark, lake, min(todo) - dt.timedelta(days=span), max(todo), p)
        inter = _flags(lake.read_df(spark, "interactions", todo).withColumnRenamed("dt", "row_day"))
        enr = inter.join(items.select("item_id", "creator_id", "upload_day"), "item_id", "inner").where(
            F.col("upload_day") >= F.date_sub("row_day", span)).drop("upload_day").cache()
        try:
            for kind, key in KINDS.items():
                agg = daily_aggregates(enr, key, p, items if kind == "user" else None)
                schema = _daily_schema(kind, p)
                agg = agg.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields])
                agg.repartition("dt").write.mode("overwrite").option("compression", "zstd").partitionBy("dt").parquet(
                    lake.uri(staging[roots[kind]]))
        finally:
            enr.unpersist()

    if missing:
        DC.publish(lake, list(roots.values()), missing, keys, fill)
    log.info("ranker daily aggregates %s..%s: %d day(s) from the cache, %d computed", first, last,
             len(keys) - len(missing), len(missing))
    return {kind: DC.read(spark, lake, roots[kind], keys, _daily_schema(kind, p)) for kind in KINDS}


def global_rates(daily_user) -> dict[str, float]:
    """Population rate of each task and of any explicit feedback over the days of ``daily_user``
    (the smoothing prior): sums of the per-(user, day) counts, equal to counting the exposures."""
    from pyspark.sql import functions as F

    r = daily_user.agg(F.sum("n_imp").alias("n"), F.sum("n_explicit").alias("explicit"),
                       *[F.sum(f"n_{t}").alias(t) for t in TASKS]).first()
    n = max(int(r["n"] or 0), 1)
    out = {t: float(r[t] or 0) / n for t in TASKS}
    out["explicit"] = float(r["explicit"] or 0) / n
    return out


def window_sums(spark, daily, keys: list[str], target_days: list[dt.date], window: int):
    """Sum the per-day aggregates ``daily`` (keys + dt + numeric columns) over each feat_day's window
    [feat_day - window, feat_day - 1]; a (keys, feat_day) row only where that window has a daily row.

    One range window per key over the daily rows plus a query row per (key, feat_day), instead of
    joining every daily row to each of the up to ``window`` feat_days it serves (a ``window``-fold
    copy of the daily rows that was shuffled and re-aggregated)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    vals = [c for c in daily.columns if c not in keys and c != "dt"]
    epoch = F.lit(dt.date(1970, 1, 1))
    days = spark.createDataFrame([(t,) for t in sorted(set(target_days))], "feat_day date")
    data = daily.select(*keys, F.datediff("dt", epoch).alias("_d"), F.lit(1).alias("_one"), *vals)
    queries = daily.select(*keys).distinct().crossJoin(F.broadcast(days)).select(
        *keys, F.datediff("feat_day", epoch).alias("_d"), F.lit(None).cast("int").alias("_one"),
        *[F.lit(None).cast(daily.schema[c].dataType).alias(c) for c in vals],
    )
    w = Window.partitionBy(*keys).orderBy("_d").rangeBetween(-window, -1)
    out = data.unionByName(queries).select(
        *keys, "_d", F.col("_one").isNull().alias("_q"), F.count("_one").over(w).alias("_n"),
        *[F.sum(c).over(w).alias(c) for c in vals],
    )
    return out.where(F.col("_q") & (F.col("_n") > 0)).select(*keys, F.date_add(epoch, F.col("_d")).alias("feat_day"), *vals)


__all__ = ["DAILY_CACHE", "EXPLICIT", "ITEMS_CACHE", "PROJ_SEED", "add_projection", "cached_daily", "daily_aggregates",
           "enriched_interactions", "global_rates", "item_span", "item_table", "projected_items", "projection_matrix",
           "window_sums"]
