"""User activity prediction (paper 4.2.1): point-in-time features and the availability policy.

The first half of the UAC module. For a target day t every user of a ``users`` snapshot
gets one feature row computed ONLY from partitions dt in [t - lookback, t - 1]; the same
function builds training rows (target t <= D, label = "user in visits dt=t") and the
serving rows (target D + 1, features from dt <= D), so there is no train/serve skew and no
way for a job of day D to look at D + 1.

How it scales (``benchmarks/activity.py``): visits and interactions are reduced once to one
row per (user, day) (:func:`load_daily`); the training sample is drawn on the users side by
a hash rank BEFORE any feature is built (:func:`training_frame`); and all target days come
out of one pass that gathers each user's history into a list and computes every window with
prefix sums in NumPy (:func:`features_from_users`, :func:`feature_kernel`), instead of one
40-column aggregation per target day.

Availability policies (``ActivityConfig.policy``), turning p_active into a_u:

* ``"probability"``: a_u = 1 iff p_active >= ``probability_threshold``. Simple, but the
  number of available users then drifts with the calendar (weekends, holidays) while the
  dispatch demand does not.
* ``"top_n"`` (default): a_u = 1 for the N users with the highest p_active (ties broken
  by user_id), N = ceil(items uploaded on D x L / Q x ``slack``), at least
  ``min_available``. items x L is the number of (item, user) slots to fill; each user takes
  at most Q of them, so items x L / Q users are the bare minimum; ``slack`` > 1 leaves the
  retrieval room to pick users who actually fit each item. N is further capped at
  ceil(``expected_active_cap`` x sum of p_active), the model's expected number of visitors
  on D + 1 (0 disables the cap): when demand exceeds the users who will come anyway, as it
  does in the synthetic presets (uploads x L / Q ~= the user base), adding more users only
  adds users who will not visit. N is finally capped at the user count.
* ``"value"`` (issue 15 item 3): N maximises a model of the day's expected feedback
  (:func:`value_sized_n`), using only what the stage has at D: every user's p_active and the
  demand S = items uploaded on D x L. The n-th most likely user brings Q slots worth p_n each
  while the store has fewer slots than the demand; once Q x N > S the S slots are shared and
  each further user takes slots away from better ones. On sparse logs (MovieLens-100K: Σ p ~= 7
  of 620 users) the Σ p cap of ``top_n`` leaves almost nobody; a user with p = 0.5 still adds
  half a user's worth of value, so this policy sizes by value, not by the expected head count.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dualrec import daycache as DC
from dualrec.config import ActivityConfig
from dualrec.lake import Lake, date_range, parse_date
from models.activity import cached_booster
from schemas.validate import BadInputError

log = logging.getLogger(__name__)

FEEDBACK_TYPES: tuple[str, ...] = ("click", "like", "comment", "follow", "share", "profile_enter", "long_view")
PROFILE_COLUMNS: tuple[str, ...] = ("age_bucket", "gender", "region", "device", "follower_count")
_COUNT_COLUMNS: tuple[str, ...] = ("sessions", "watch_ms", "impressions", "play_time_ms") + tuple(
    f"fb_{t}" for t in FEEDBACK_TYPES
)


def feature_names(lookback: int = 30) -> list[str]:
    """Model input columns, in the order the booster expects them."""
    return (
        [f"act_d{k}" for k in range(1, lookback + 1)]
        + ["active_days_7", "active_days", *_COUNT_COLUMNS, "days_since_last_visit", "tenure_days"]
        + list(PROFILE_COLUMNS)
        + ["dow"]
    )


def history_window(target_day: dt.date, lookback: int) -> list[dt.date]:
    """The days whose data may feed target ``target_day``: [t - lookback, t - 1]."""
    t = parse_date(target_day)
    return date_range(t - dt.timedelta(days=lookback), t - dt.timedelta(days=1))


# ---------------------------------------------------------------------- Spark transforms
def load_daily(spark, lake: Lake, days: Iterable[dt.date]):
    """Per (user_id, dt) activity aggregates over ``days`` (absent partitions simply absent).

    Visits and interactions are mapped to one common row shape and reduced by a single
    ``groupBy(user_id, dt)`` (no join: one shuffle, with map-side partial aggregation), so
    building several target days' features from one cached frame is cheap.
    """
    from pyspark.sql import functions as F

    days = [parse_date(d) for d in days]
    zero = F.lit(0.0)
    visits = lake.read_df(spark, "visits", days).select(
        "user_id",
        "dt",
        F.lit(1.0).alias("visited"),
        F.col("sessions").cast("double").alias("sessions"),
        F.col("watch_ms").cast("double").alias("watch_ms"),
        *(zero.alias(c) for c in _COUNT_COLUMNS if c not in ("sessions", "watch_ms")),
    )
    inter = lake.read_df(spark, "interactions", days).select(
        "user_id",
        "dt",
        zero.alias("visited"),
        zero.alias("sessions"),
        zero.alias("watch_ms"),
        F.lit(1.0).alias("impressions"),
        F.col("play_time_ms").cast("double").alias("play_time_ms"),
        *(F.col(f"is_{t}").cast("double").alias(f"fb_{t}") for t in FEEDBACK_TYPES),
    )
    return (
        visits.unionByName(inter)
        .groupBy("user_id", "dt")
        .agg(F.max("visited").alias("visited"), *(F.sum(c).alias(c) for c in _COUNT_COLUMNS))
    )


# ---------------------------------------------------------------------- per-day cache
DAILY_CACHE = "_cache/activity_daily"
CACHE_VERSION = 1  # bump when load_daily's output changes: older entries are recomputed


def _daily_schema():
    from pyspark.sql import types as T

    return T.StructType(
        [T.StructField("user_id", T.LongType()), T.StructField("dt", T.DateType()),
         T.StructField("visited", T.DoubleType())]
        + [T.StructField(c, T.DoubleType()) for c in _COUNT_COLUMNS]
    )


def daily_key(lake: Lake, day: dt.date) -> str | None:
    """Content version of day ``day``'s inputs to :func:`load_daily` (None: neither table has the day).

    The listing fingerprints of visits and interactions dt=day (any redelivery changes them) and
    the drop list a ``drop_and_report`` check left next to each (it changes what readers see).
    """
    versions = [[table, DC.partition_version(lake, table, day)] for table in ("visits", "interactions")]
    if all(v is None for _, v in versions):
        return None
    return DC.digest([CACHE_VERSION, parse_date(day).isoformat(), *versions])


DRIVER_MAX_ROWS = 3_000_000  # a day with at most this many visits + interactions rows is reduced with PyArrow (~100 B/row peak)


def _day_rows(lake: Lake, day: dt.date) -> int:
    return sum(
        pq.ParquetFile(f, filesystem=lake.fs).metadata.num_rows
        for t in ("visits", "interactions") if lake.has_partition(t, day) for f in lake.data_files(t, day)
    )


def daily_arrow(lake: Lake, day: dt.date) -> pa.Table:
    """:func:`load_daily` of one day with PyArrow on the driver (no ``dt`` column; same rows and values).

    A day D run normally reduces only D, one partition pair: a few columns of it are read (drop
    lists applied by :meth:`Lake.read_table`) and grouped in memory, cheaper than a Spark job
    until a day holds millions of rows (:data:`DRIVER_MAX_ROWS`)."""
    d = parse_date(day)
    parts = []
    if lake.has_partition("visits", d):
        v = lake.read_table("visits", d, columns=["user_id", "sessions", "watch_ms"])
        n = v.num_rows
        zero = pa.array(np.zeros(n), pa.float64())
        cols = {"user_id": v.column("user_id").cast(pa.int64()), "visited": pa.array(np.ones(n), pa.float64()),
                "sessions": v.column("sessions").cast(pa.float64()), "watch_ms": v.column("watch_ms").cast(pa.float64())}
        parts.append(pa.table({**cols, **{c: zero for c in _COUNT_COLUMNS if c not in cols}}))
    if lake.has_partition("interactions", d):
        fb = [f"is_{t}" for t in FEEDBACK_TYPES]
        it = lake.read_table("interactions", d, columns=["user_id", "play_time_ms", *fb])
        n = it.num_rows
        zero = pa.array(np.zeros(n), pa.float64())
        cols = {"user_id": it.column("user_id").cast(pa.int64()), "visited": zero, "sessions": zero,
                "watch_ms": zero, "impressions": pa.array(np.ones(n), pa.float64()),
                "play_time_ms": it.column("play_time_ms").cast(pa.float64()),
                **{f"fb_{t}": it.column(f"is_{t}").cast(pa.float64()) for t in FEEDBACK_TYPES}}
        parts.append(pa.table({c: cols[c] for c in ("user_id", "visited", *_COUNT_COLUMNS)}))
    names = ["user_id", "visited", *_COUNT_COLUMNS]
    if not parts:
        return pa.schema([("user_id", pa.int64())] + [(c, pa.float64()) for c in names[1:]]).empty_table()
    t = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    g = t.group_by("user_id").aggregate([("visited", "max"), *((c, "sum") for c in _COUNT_COLUMNS)])
    g = g.rename_columns([{"visited_max": "visited"}.get(c, c.removesuffix("_sum")) for c in g.column_names])
    return g.select(names).sort_by("user_id")


def _write_cache(spark, lake: Lake, days: list[dt.date], keys: dict[dt.date, str]) -> None:
    """Compute and publish the cache entries of ``days``: days of at most :data:`DRIVER_MAX_ROWS`
    rows with PyArrow (:func:`daily_arrow`), the others by one Spark job (one file per day)."""

    def fill(staging_of: dict[str, str], todo: list[dt.date]) -> None:
        staging = staging_of[DAILY_CACHE]
        small = [d for d in todo if _day_rows(lake, d) <= DRIVER_MAX_ROWS]
        large = [d for d in todo if d not in small]
        if large:
            load_daily(spark, lake, large).repartition("dt").write.mode("overwrite").option(
                "compression", "zstd").partitionBy("dt").parquet(lake.uri(staging))
        for d in small:
            rel = DC.entry_rel(staging, d)
            lake.fs.create_dir(lake.fs_path(rel), recursive=True)
            with lake.fs.open_output_stream(lake.fs_path(f"{rel}/part-00000.parquet")) as f:
                pq.write_table(daily_arrow(lake, d), f, compression="zstd")

    DC.publish(lake, DAILY_CACHE, days, keys, fill)


def cached_daily(spark, lake: Lake, days: Iterable[dt.date]):
    """:func:`load_daily` through a per-day cache in ``<lake>/_cache/activity_daily/dt=X``.

    Day X's aggregates depend only on visits and interactions dt=X, so each day is computed once
    and reused by every later run whose windows contain it; an entry is valid only for the
    content version (:func:`daily_key`) it was computed from, so republishing an input
    partition (or a changed drop list) recomputes that day. A day D run thus reduces only the
    days it has not seen (normally D itself) and reads the rest. Same rows as
    :func:`load_daily` (sums of integer counts are exact in float64, in any order). A lake that
    cannot be written falls back to computing every day.
    """
    days = sorted({parse_date(d) for d in days})
    keys = {d: k for d in days if (k := daily_key(lake, d)) is not None}
    missing = DC.missing_days(lake, [DAILY_CACHE], keys)
    if missing:
        try:
            _write_cache(spark, lake, missing, keys)
        except OSError as e:
            log.warning("activity daily cache not writable (%s): computing %d day(s) without it", e, len(days))
            return load_daily(spark, lake, days)
    log.info("activity daily aggregates: %d day(s) from the cache, %d computed", len(keys) - len(missing), len(missing))
    return DC.read(spark, lake, DAILY_CACHE, keys, _daily_schema())


def target_users(spark, lake: Lake, pairs: Sequence[tuple[dt.date, dt.date]]):
    """(user_id, target_dt, tenure_days, profile...) for each (target t, users snapshot day) pair.

    One row per user of the snapshot per target, so users without any history still get a
    feature row. Checks point-in-time: the snapshot must be strictly before t.
    """
    frames = []
    for t, ud in pairs:
        if ud >= t:
            raise ValueError(f"users snapshot dt={ud} is not before target day {t} (point-in-time)")
        lake.require_partition("users", ud, "activity")
        users = lake.read_df(spark, "users", [ud], with_dt=False)
        frames.append(users_for_target(users, t))
    out = frames[0]
    for f in frames[1:]:
        out = out.unionByName(f)
    return out


def users_for_target(users, target_day: dt.date):
    """Attach ``target_dt`` and the snapshot-derived features (tenure, profile) to a users frame."""
    from pyspark.sql import functions as F

    t = parse_date(target_day)
    return users.select(
        "user_id",
        F.lit(t).alias("target_dt"),
        F.greatest(F.coalesce(F.datediff(F.lit(t), F.col("register_dt")), F.lit(0)), F.lit(0))
        .cast("double")
        .alias("tenure_days"),
        *(F.coalesce(F.col(c).cast("double"), F.lit(0.0)).alias(c) for c in PROFILE_COLUMNS),
    )


def _check_history(lake: Lake, t: dt.date, lookback: int) -> None:
    window = history_window(t, lookback)
    if not any(lake.has_partition("visits", d) for d in window):
        raise BadInputError(
            f"table 'visits': no partition in dt={window[0]}..{window[-1]}, so target day {t} "
            f"has no prior history to compute activity features from"
        )


def _history(spark, lake: Lake, targets: Sequence[dt.date], lookback: int, daily=None):
    """Check that every target has prior history; the per-day frame covering all their windows."""
    for t in targets:
        _check_history(lake, t, lookback)
    if daily is not None:
        return daily
    lo, hi = min(targets) - dt.timedelta(days=lookback), max(targets) - dt.timedelta(days=1)
    return load_daily(spark, lake, date_range(lo, hi))


def features_from_users(daily, tusers, lookback: int = 30, targets: Sequence[dt.date] | None = None):
    """Feature rows for every (user_id, target_dt) row of ``tusers`` from per-day aggregates.

    All target days are computed in ONE pass: the history of each user over the span
    [min target - lookback, max target - 1] is gathered into one list per user, and a
    vectorised NumPy kernel (:func:`feature_kernel`, inside ``mapInArrow``) turns it into
    one row per target. For target t only days [t - lookback, t - 1] are used, whatever
    ``daily`` holds, so a superset frame cannot leak the target day or later. Users without
    history get zeros and ``days_since_last_visit`` = lookback + 1 (the cap), never NaN.

    ``tusers`` is the output of :func:`users_for_target` (possibly a union over targets,
    possibly sampled); ``targets`` lists its target days (looked up when not given).
    Returns ``user_id, target_dt, *feature_names(lookback)``.
    """
    from pyspark.sql import functions as F

    if targets is None:
        targets = [r[0] for r in tusers.select("target_dt").distinct().collect()]
    targets = sorted(parse_date(t) for t in targets)
    names = feature_names(lookback)
    schema = ", ".join(["user_id long", "target_dt date"] + [f"{c} double" for c in names])
    if not targets:
        return tusers.sparkSession.createDataFrame([], schema)
    span_start = targets[0] - dt.timedelta(days=lookback)
    span_days = (targets[-1] - span_start).days
    hist = (
        daily.filter((F.col("dt") >= F.lit(span_start)) & (F.col("dt") < F.lit(targets[-1])))
        .select(
            "user_id",
            F.datediff(F.col("dt"), F.lit(span_start)).alias("i"),
            F.when(F.col("visited") > 0, 1.0).otherwise(0.0).alias("visited"),
            *_COUNT_COLUMNS,
        )
        .groupBy("user_id")
        .agg(F.collect_list(F.struct("i", "visited", *_COUNT_COLUMNS)).alias("h"))
    )
    per_user = tusers.select(
        "user_id",
        F.datediff(F.col("target_dt"), F.lit(span_start)).alias("T"),
        "tenure_days",
        *PROFILE_COLUMNS,
    ).groupBy("user_id").agg(F.collect_list(F.struct("T", "tenure_days", *PROFILE_COLUMNS)).alias("u"))
    joined = per_user.join(hist, "user_id", "left")
    epoch_start = (span_start - dt.date(1970, 1, 1)).days

    def _kernel(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for b in batches:
            if b.num_rows:
                yield feature_kernel(b, span_days, epoch_start, lookback)

    return joined.mapInArrow(_kernel, schema)


def _list_rows(col: pa.Array) -> tuple[np.ndarray, pa.StructArray]:
    """Row index of every element of a list column (null lists count as empty), and the elements."""
    import pyarrow.compute as pc

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
    return np.repeat(np.arange(len(col)), lengths), col.flatten()


def feature_kernel(batch: pa.RecordBatch, span_days: int, epoch_start: int, lookback: int) -> pa.RecordBatch:
    """NumPy core of :func:`features_from_users` for one Arrow batch of users.

    ``batch`` has ``user_id``, ``u`` (list of (T, tenure_days, profile...): one entry per
    target, T = target index in the span) and ``h`` (list of (i, visited, counts...): one
    entry per day with activity, i = day index in the span; may be null). Day i of the span
    is epoch day ``epoch_start + i``. Sums over a window use prefix sums in float64, which
    are exact for the integer counts involved (< 2^53).
    """
    n = batch.num_rows
    uid = batch.column("user_id").to_numpy()
    h_rows, h = _list_rows(batch.column("h"))
    C = len(_COUNT_COLUMNS)
    vals = np.zeros((n, span_days, C + 1), np.float64)  # [..., 0] = visited, [..., 1:] = counts
    if len(h):
        i = h.field("i").to_numpy(zero_copy_only=False).astype(np.int64)
        ok = (i >= 0) & (i < span_days)
        flat = h_rows[ok] * span_days + i[ok]
        for k, c in enumerate(("visited", *_COUNT_COLUMNS)):
            w = h.field(c).to_numpy(zero_copy_only=False)[ok]
            vals[:, :, k] = np.bincount(flat, weights=w, minlength=n * span_days).reshape(n, span_days)
    prefix = np.zeros((n, span_days + 1, C + 1), np.float64)
    np.cumsum(vals, axis=1, out=prefix[:, 1:, :])
    visited = vals[:, :, 0] > 0

    r, u = _list_rows(batch.column("u"))
    T = u.field("T").to_numpy(zero_copy_only=False).astype(np.int64)
    ks = np.arange(1, lookback + 1)
    act = visited[r[:, None], T[:, None] - ks[None, :]].astype(np.float64)  # act[:, k-1] = act_dk
    sums = prefix[r, T, 1:] - prefix[r, T - lookback, 1:]
    any_visit = act.any(axis=1)
    dsl = np.where(any_visit, np.argmax(act > 0, axis=1) + 1, lookback + 1).astype(np.float64)
    epoch_day = epoch_start + T
    cols: dict[str, np.ndarray] = {f"act_d{k}": act[:, k - 1] for k in ks}
    cols["active_days_7"] = act[:, : min(7, lookback)].sum(axis=1)
    cols["active_days"] = act.sum(axis=1)
    for k, c in enumerate(_COUNT_COLUMNS):
        cols[c] = sums[:, k]
    cols["days_since_last_visit"] = dsl
    cols["tenure_days"] = u.field("tenure_days").to_numpy(zero_copy_only=False)
    for c in PROFILE_COLUMNS:
        cols[c] = u.field(c).to_numpy(zero_copy_only=False)
    cols["dow"] = ((epoch_day + 3) % 7).astype(np.float64)  # 1970-01-01 was a Thursday; 0 = Monday
    names = feature_names(lookback)
    arrays = [pa.array(uid[r], pa.int64()), pa.array(epoch_day.astype(np.int32), pa.date32())]
    arrays += [pa.array(np.asarray(cols[c], np.float64), pa.float64()) for c in names]
    return pa.RecordBatch.from_arrays(arrays, ["user_id", "target_dt", *names])


def features_from_daily(daily, users, target_day: dt.date, lookback: int = 30):
    """Features of every user of one ``users`` snapshot for ``target_day`` (see :func:`features_from_users`)."""
    return features_from_users(daily, users_for_target(users, target_day), lookback).drop("target_dt")


def features_for_targets(spark, lake: Lake, pairs: Sequence[tuple], lookback: int = 30, daily=None):
    """Point-in-time features for several (target day, users snapshot day) pairs in one pass.

    Used for training (target t, users_day t - 1) and serving (target D + 1, users_day D).
    Reads only partitions in [min t - lookback, max t - 1] (a pre-built ``daily`` frame is
    filtered per target). Raises :class:`BadInputError` when a target's window has no
    ``visits`` partition at all: a date with no prior history.
    """
    pairs = [(parse_date(t), parse_date(ud)) for t, ud in pairs]
    ts = [t for t, _ in pairs]
    daily = _history(spark, lake, ts, lookback, daily)
    tusers = target_users(spark, lake, pairs)  # checks point-in-time and the snapshots
    return features_from_users(daily, tusers, lookback, ts)


def features_for_target(spark, lake: Lake, target_day, users_day, lookback: int = 30, daily=None):
    """Point-in-time features of every user in ``users`` dt=``users_day`` for ``target_day``."""
    return features_for_targets(spark, lake, [(target_day, users_day)], lookback, daily).drop("target_dt")


def training_target_days(lake: Lake, day, n: int, max_scan: int = 60) -> list[dt.date]:
    """Up to ``n`` latest labelled target days t <= ``day`` (ascending).

    A target is usable when its label (visits dt=t) and its history (visits and users
    dt=t-1) exist. None usable is a bad input: the lake has no prior history for ``day``.
    """
    d = parse_date(day)
    out: list[dt.date] = []
    for i in range(max_scan):
        t = d - dt.timedelta(days=i)
        prev = t - dt.timedelta(days=1)
        if lake.has_partition("visits", t) and lake.has_partition("visits", prev) and lake.has_partition("users", prev):
            out.append(t)
            if len(out) >= n:
                break
    if not out:
        raise BadInputError(
            f"table 'visits': no labelled day with a prior day of history (visits and users dt=t-1) "
            f"on or before dt={d}: a date with no prior history cannot train the activity model"
        )
    return sorted(out)


def _sample_columns(df, targets: list[dt.date], seed: int):
    """``_r`` (deterministic hash rank of (user, target, seed)) and ``_valid`` (early-stopping split)."""
    from pyspark.sql import functions as F

    r = F.pmod(F.xxhash64("user_id", "target_dt", F.lit(int(seed))), F.lit(2**31))
    if len(targets) == 1:
        is_valid = F.pmod(F.xxhash64("user_id", F.lit(int(seed) + 1)), F.lit(5)) == 0
    else:
        is_valid = F.col("target_dt") == F.lit(max(targets))
    return df.withColumn("_r", r).withColumn("_valid", is_valid)


def _split_counts(lake: Lake, targets: list[dt.date], tusers) -> dict[bool, int]:
    """Rows per split (train / valid) before sampling: from the users snapshots' Parquet footers
    when the latest target is the validation split (one row per user and snapshot), else one
    Spark aggregation (a single target: a hashed fifth of its users is the validation split)."""
    if len(targets) > 1:
        rows = {t: sum(pq.ParquetFile(f, filesystem=lake.fs).metadata.num_rows
                       for f in lake.data_files("users", t - dt.timedelta(days=1))) for t in targets}
        return {False: sum(rows[t] for t in targets[:-1]), True: rows[targets[-1]]}
    return {bool(row["_valid"]): int(row["count"]) for row in tusers.groupBy("_valid").count().collect()}


def training_frame(
    spark, lake: Lake, targets: list[dt.date], lookback: int = 30, daily=None, max_rows: int | None = None, seed: int = 0
):
    """Features (users snapshot t - 1) + label (user in visits dt=t) for every target day t.

    With ``max_rows``, each split (train: all but the latest target; valid: the latest) is
    sampled BEFORE features are computed: a row is kept when its hash rank ``_r`` is below a
    threshold set to ~1.1 x max_rows / split size, so features are only built for a little
    more than what :func:`collect_training` keeps. Returns (frame, rows per split before
    sampling as {is_valid: count}).
    """
    out, counts, _, _ = training_and_serving(spark, lake, targets, None, lookback, daily, max_rows, seed)
    return out, counts


def training_and_serving(
    spark,
    lake: Lake,
    targets: list[dt.date],
    serve: tuple[dt.date, dt.date] | None,
    lookback: int = 30,
    daily=None,
    max_rows: int | None = None,
    seed: int = 0,
):
    """:func:`training_frame` and, with ``serve`` = (target day, users snapshot day), the serving
    features of every user of that snapshot, out of ONE pass over the history.

    Each user's history is gathered once for the training targets and the serving target
    together (:func:`features_from_users` computes every target from its own window only, so the
    rows equal separate calls); the shared feature frame is persisted, since the model must be
    trained on the training rows before the serving rows are scored. Returns (training frame,
    split counts, serving features or None, the persisted shared frame or None: the caller
    unpersists it when the serving rows are scored).
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    targets = sorted(parse_date(t) for t in targets)
    pairs = [(t, t - dt.timedelta(days=1)) for t in targets]
    daily = _history(spark, lake, targets if serve is None else [*targets, parse_date(serve[0])], lookback, daily)
    tusers = _sample_columns(target_users(spark, lake, pairs), targets, seed)
    counts = _split_counts(lake, targets, tusers)
    if max_rows:
        keep = F.lit(False)
        for valid in (False, True):
            n = counts.get(valid, 0)
            frac = 1.0 if n <= max_rows else min(1.0, 1.1 * max_rows / n + 1e-4)
            keep = keep | ((F.col("_valid") == F.lit(valid)) & (F.col("_r") < F.lit(int(frac * 2**31))))
        tusers = tusers.filter(keep)
    tusers = tusers.drop("_r", "_valid")
    all_targets = list(targets)
    serve_t = None
    if serve is not None:
        serve_t, serve_ud = parse_date(serve[0]), parse_date(serve[1])
        if serve_t in targets:
            raise ValueError(f"serving day {serve_t} is also a training target")
        tusers = tusers.unionByName(target_users(spark, lake, [(serve_t, serve_ud)]))
        all_targets.append(serve_t)
    feats = features_from_users(daily, tusers, lookback, all_targets)
    serving = shared = None
    if serve_t is not None:
        feats = shared = feats.persist(StorageLevel.MEMORY_AND_DISK)
        serving = feats.filter(F.col("target_dt") == F.lit(serve_t)).drop("target_dt")
        feats = feats.filter(F.col("target_dt") != F.lit(serve_t))
    labels = None
    for t in targets:
        lab = lake.read_df(spark, "visits", [t], with_dt=False, required=True).select(
            "user_id", F.lit(t).alias("target_dt"), F.lit(1.0).alias("label")
        )
        labels = lab if labels is None else labels.unionByName(lab)
    out = (
        feats.join(labels.distinct(), ["user_id", "target_dt"], "left")
        .withColumn("label", F.coalesce(F.col("label"), F.lit(0.0)))
    )
    # mapInArrow drops _r/_valid; the hash is recomputed (same seed, same values) for collect_training
    return _sample_columns(out, targets, seed), counts, serving, shared


def collect_training(df, names: list[str], max_rows: int, counts: dict[bool, int] | None = None) -> dict[str, Any]:
    """Bring the (pre-sampled) training frame to the driver as NumPy arrays.

    Each split keeps its ``max_rows`` rows with the smallest hash rank ``_r`` (ties by
    target day and user), so the sample does not depend on partitioning or row order. Rows
    of the latest target day are the early-stopping set; if it is the only target day, a
    hashed fifth of its users is held out instead (see :func:`training_frame`).
    """
    tbl = df.select("_r", "_valid", "user_id", "target_dt", "label", *names).toArrow()
    valid_col = tbl.column("_valid").to_numpy(zero_copy_only=False).astype(bool)
    r_np = tbl.column("_r").to_numpy()
    uid = tbl.column("user_id").to_numpy()
    tgt = tbl.column("target_dt").cast(pa.int32()).to_numpy()
    X_all = np.column_stack([tbl.column(c).to_numpy(zero_copy_only=False).astype(np.float32) for c in names]) if len(
        tbl
    ) else np.zeros((0, len(names)), np.float32)
    y_all = tbl.column("label").to_numpy()
    parts = {}
    for valid in (False, True):
        idx = np.flatnonzero(valid_col == valid)
        order = idx[np.lexsort((uid[idx], tgt[idx], r_np[idx]))][:max_rows]
        parts[valid] = (X_all[order], y_all[order])
        log.info("activity training %s rows: %d of %s", "valid" if valid else "train", len(order), (counts or {}).get(valid))
    return {
        "X_train": parts[False][0],
        "y_train": parts[False][1],
        "X_valid": parts[True][0],
        "y_valid": parts[True][1],
        "n_rows": counts if counts is not None else {v: int((valid_col == v).sum()) for v in (False, True)},
    }


def predict_scores(spark, features_df, model_bytes: bytes, names: list[str]):
    """p_active for every feature row, inside Spark: model broadcast once, batched predict per Arrow batch."""
    bc = spark.sparkContext.broadcast(model_bytes)
    cols = list(names)

    def _predict(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        booster = cached_booster(bc.value)
        for b in batches:
            if b.num_rows == 0:
                continue
            X = np.column_stack(
                [b.column(c).to_numpy(zero_copy_only=False).astype(np.float32, copy=False) for c in cols]
            )
            p = np.asarray(booster.inplace_predict(X), dtype=np.float64)
            yield pa.RecordBatch.from_arrays([b.column("user_id"), pa.array(p, pa.float64())], ["user_id", "p_active"])

    return features_df.select("user_id", *cols).mapInArrow(_predict, "user_id long, p_active double")


# ---------------------------------------------------------------------- policy
def demand_top_n(
    n_items: int,
    L: int,
    Q: int,
    slack: float,
    min_available: int = 0,
    expected_active: float | None = None,
    expected_active_cap: float = 0.0,
) -> int:
    """N for the top-N policy: ceil(items x L / Q x slack), capped at
    ceil(expected_active_cap x expected_active) when both are given and > 0, and at least
    ``min_available``."""
    if n_items < 0 or L < 1 or Q < 1 or slack < 0:
        raise ValueError(f"bad demand inputs: items={n_items} L={L} Q={Q} slack={slack}")
    n = int(math.ceil(n_items * L / Q * slack - 1e-9))
    if expected_active is not None and expected_active_cap > 0:
        n = min(n, int(math.ceil(expected_active * expected_active_cap - 1e-9)))
    return max(n, int(min_available))


def value_curve(
    p_active: np.ndarray, n_items: int, L: int, Q: int, *, min_p: float = 0.0, slot_value: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Modelled expected feedback V(N) of making the N best users available, N = 1..eligible users.

    Users are taken by ``p_active`` x ``slot_value`` (desc); eligible: p_active > 0 and >= ``min_p``.
    The model: a dispatched pair is worth p_u x w_u (w = ``slot_value``, default 1: at D nothing
    says which user will fit the day's uploads better, since the ranker runs after this stage), the
    store holds Q x N slots and the day wants S = n_items x L. While Q x N <= S every user fills
    its Q slots; beyond, the S slots are split over the N users (the dispatch ranks by g, not by
    p), so each user gets S / N of them:

        V(N) = min(Q, S / N) x Σ_{n <= N} p_n w_n.

    The marginal value of the n-th user, V(n) - V(n-1) (:func:`value_marginals`), is its own slots'
    worth p_n w_n min(Q, S/n) minus the slots it takes from the n - 1 better users. Pure, vectorised.
    Returns (values sorted desc, V) with V[k] = V(k + 1).
    """
    if n_items < 0 or L < 1 or Q < 1:
        raise ValueError(f"bad demand inputs: items={n_items} L={L} Q={Q}")
    p = np.asarray(p_active, dtype=np.float64)
    w = np.ones_like(p) if slot_value is None else np.asarray(slot_value, dtype=np.float64)
    if w.shape != p.shape:
        raise ValueError(f"slot_value must be aligned with p_active ({p.shape}), got {w.shape}")
    ok = np.isfinite(p) & (p > 0) & (p >= min_p) & np.isfinite(w) & (w > 0)
    v = np.sort(p[ok] * w[ok])[::-1]
    n = np.arange(1, v.size + 1, dtype=np.float64)
    slots = np.minimum(float(Q), float(n_items) * L / n)
    return v, slots * np.cumsum(v)


def value_marginals(V: np.ndarray) -> np.ndarray:
    """V(n) - V(n-1) for n = 1..len(V) (V(0) = 0): positive while a further user adds value."""
    V = np.asarray(V, dtype=np.float64)
    return np.diff(np.concatenate([[0.0], V]))


def value_sized_n(
    p_active: np.ndarray, n_items: int, L: int, Q: int, *, min_p: float = 0.0, min_available: int = 0,
    slot_value: np.ndarray | None = None,
) -> int:
    """N of the ``value`` policy: the smallest N maximising :func:`value_curve` (0 with no demand),
    at least ``min_available`` but never more than the eligible users (p_active > 0, >= ``min_p``).

    With p sorted desc, V rises as Q Σp up to N = ⌊S/Q⌋ and then falls as S x mean p, so N is
    ⌊S/Q⌋ or ⌊S/Q⌋ + 1 whatever the sum of p (unlike ``top_n``'s Σ p cap); ``slot_value``
    (per-user worth of a slot, e.g. from earlier days) can move it."""
    v, V = value_curve(p_active, n_items, L, Q, min_p=min_p, slot_value=slot_value)
    if n_items == 0 or v.size == 0:
        return int(min(min_available, v.size))
    top = float(V.max())
    n = int(np.argmax(V >= top - 1e-9 * abs(top))) + 1  # the smallest N reaching the maximum (rounding-proof)
    return int(min(max(n, int(min_available)), v.size))


def apply_policy(scores, cfg: ActivityConfig, n_items: int, L: int, Q: int):
    """Add ``available`` (a_u) to a (user_id, p_active) frame under the configured policy.

    Returns (frame, N) where N is the top-N target (None for the probability policy).
    See the module docstring for the three policies (``value`` sizes N by :func:`value_sized_n`).
    """
    from pyspark.sql import functions as F

    if cfg.policy == "probability":
        return scores.withColumn("available", F.col("p_active") >= F.lit(float(cfg.probability_threshold))), None
    if cfg.policy not in ("top_n", "value"):
        raise ValueError(f"activity.policy must be 'top_n', 'value' or 'probability', got {cfg.policy!r}")
    if cfg.policy == "value":
        p = scores.select("p_active").toArrow().column("p_active").to_numpy(zero_copy_only=False)
        n = value_sized_n(p, n_items, L, Q, min_p=cfg.value_min_p, min_available=cfg.min_available)
        log.info("activity value: items=%d -> N=%d (of %d users, sum p %.1f, top_n's N would be %d)", n_items, n, p.size,
                 float(np.nansum(p)), demand_top_n(n_items, L, Q, cfg.slack, cfg.min_available, float(np.nansum(p)),
                                                   cfg.expected_active_cap))
    else:
        expected = None
        if cfg.expected_active_cap > 0:
            expected = float(scores.agg(F.sum("p_active")).collect()[0][0] or 0.0)
        n = demand_top_n(n_items, L, Q, cfg.slack, cfg.min_available, expected, cfg.expected_active_cap)
        log.info("activity top_n: items=%d -> N=%d (expected visitors %s)", n_items, n, expected)
    if n == 0:
        return scores.withColumn("available", F.lit(False)), 0
    top = (
        scores.orderBy(F.col("p_active").desc(), F.col("user_id").asc())
        .limit(n)
        .select("user_id", F.lit(True).alias("_top"))
    )
    out = scores.join(top, "user_id", "left").select(
        "user_id", "p_active", F.coalesce(F.col("_top"), F.lit(False)).alias("available")
    )
    return out, n


# ---------------------------------------------------------------------- demand
def count_items(lake: Lake, day) -> int:
    """Items uploaded on ``day`` (0 with a warning when the partition is absent)."""
    d = parse_date(day)
    if not lake.has_partition("items", d):
        log.warning("table 'items': partition dt=%s missing; dispatch demand taken as 0 items", d)
        return 0
    return lake.read_table("items", d, columns=["item_id"]).num_rows


__all__ = [
    "FEEDBACK_TYPES",
    "cached_daily",
    "daily_arrow",
    "daily_key",
    "apply_policy",
    "collect_training",
    "count_items",
    "demand_top_n",
    "value_curve",
    "value_marginals",
    "value_sized_n",
    "feature_names",
    "feature_kernel",
    "features_for_target",
    "features_for_targets",
    "features_from_users",
    "features_from_daily",
    "history_window",
    "load_daily",
    "predict_scores",
    "training_and_serving",
    "training_frame",
    "training_target_days",
]
