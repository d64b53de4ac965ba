"""Spark side of ranking (paper 3.3): point-in-time features, theta_u, g_ui, AUC helpers.

Point in time. A row is one exposure (training: a row of ``interactions`` on day d; scoring: a
candidate of day D at its batch cutoff). Its features use
- user, creator and similar-item statistics of the ``user_window_days`` days before the row's
  day (``feat_day`` = the row's day; stats cover [feat_day - U, feat_day - 1]);
- the item's own history "so far": exposures strictly before the row's timestamp (training) or
  before the item's batch cutoff (scoring), with each positive user's profile as of that day.
So a model trained on rows of days < D and applied to D's candidates sees features built the
same way in both cases, and nothing after a row's time (or batch cutoff) leaks in.

Content embeddings are projected with a fixed seeded Gaussian map to ``rank.profile_dim``
columns (inner products are preserved in expectation), so profile sums are plain Spark sums.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import numpy as np
import pyarrow as pa

from dualrec.batches import batch_cutoff_col
from dualrec.rank_inputs import (
    cached_daily,
    enriched_interactions,
    global_rates,
    item_table,
    projection_matrix,
    window_sums,
)
from dualrec.lake import date_range, parse_date
from dualrec.stats import roc_auc
from models.promo import batch_end_us, batch_start_us, completion_rate, feedback_value, pinnacle_lists
from schemas.feedback import VISIBLE_FEEDBACKS
from models.ranker import (
    TASKS,
    SideArrays,
    featurize,
    featurize_pairs,
    input_columns,
    item_table_columns,
    labels_of,
    load_ranker,
    model_from_bytes,
    model_to_bytes,
    pair_scorer,
    predict,
    predict_pairs,
    user_table_columns,
)

log = logging.getLogger(__name__)


def _rate_cols(prefix: str, a: float, g: dict[str, float]):
    from pyspark.sql import functions as F

    return [
        ((F.coalesce(F.col(f"n_{t}"), F.lit(0)) + F.lit(a * g[t])) / (F.coalesce(F.col("n_imp"), F.lit(0)) + F.lit(a))).alias(
            f"{prefix}_rate_{t}"
        )
        for t in TASKS
    ]


def user_features(spark, lake, daily, target_days: list[dt.date], cfg, g: dict[str, float]):
    """u_* features and theta per (user_id, feat_day) from the U days before feat_day + profile snapshot.

    ``daily`` is :func:`dualrec.rank_inputs.cached_daily` over (at least) those days."""
    from pyspark.sql import functions as F

    rc = cfg.rank
    p, a = rc.profile_dim, rc.rate_prior_strength
    sums = window_sums(spark, daily["user"], ["user_id"], target_days, rc.user_window_days)
    has = F.coalesce(F.col("n_prof"), F.lit(0)) > 0
    feats = sums.select(
        "user_id", "feat_day",
        F.log1p(F.col("n_imp")).alias("u_log_imp"),
        F.col("n_imp").alias("u_n_imp"), F.col("n_explicit").alias("u_n_explicit"),
        has.cast("float").alias("u_has_prof"),
        *_rate_cols("u", a, g),
        *[F.when(has, F.col(f"prof_{k}") / F.col("n_prof")).otherwise(F.lit(0.0)).alias(f"u_prof_{k}") for k in range(p)],
    )
    # profile snapshot of the day before feat_day (users registered later have none: zeros)
    snap_days = sorted({d - dt.timedelta(days=1) for d in target_days})
    users = lake.read_df(spark, "users", snap_days).select(
        "user_id", F.date_add("dt", 1).alias("feat_day"), "age_bucket", "gender", "region", "device",
        F.log1p(F.col("follower_count").cast("double")).alias("u_log_follower"),
    )
    return users.join(feats, ["user_id", "feat_day"], "full_outer")


def theta_expr(a: float, g_explicit: float):
    """theta_u = (explicit positives + a * global rate) / (impressions + a): never 0 for a new user."""
    from pyspark.sql import functions as F

    return (F.coalesce(F.col("u_n_explicit"), F.lit(0)) + F.lit(a * g_explicit)) / (
        F.coalesce(F.col("u_n_imp"), F.lit(0)) + F.lit(a)
    )


def theta_values(n_explicit: np.ndarray, n_imp: np.ndarray, a: float, g_explicit: float) -> np.ndarray:
    """NumPy twin of :func:`theta_expr` (tests, benchmarks)."""
    return (np.nan_to_num(n_explicit) + a * g_explicit) / (np.nan_to_num(n_imp) + a)


def creator_features(spark, daily, target_days, cfg, g):
    from pyspark.sql import functions as F

    rc = cfg.rank
    sums = window_sums(spark, daily["creator"], ["creator_id"], target_days, rc.user_window_days)
    return sums.select("creator_id", "feat_day", F.log1p("n_imp").alias("c_log_imp"),
                       *_rate_cols("c", rc.rate_prior_strength, g))


def similar_features(spark, lake, daily, keys, cfg, g, target: list[dt.date], up_days: list[dt.date]):
    """s_* per (item_id, feat_day): sim-weighted smoothed rates of S^I(i) (item_similar dt=upload day)."""
    from pyspark.sql import functions as F

    rc = cfg.rank
    sim = lake.read_df(spark, "item_similar", up_days).withColumnRenamed("dt", "upload_day")
    stats = window_sums(spark, daily["item"], ["item_id"], target, rc.user_window_days)
    stats = stats.select(F.col("item_id").alias("similar_item_id"), "feat_day", *_rate_cols("x", rc.rate_prior_strength, g))
    j = (
        keys.select("item_id", "upload_day", "feat_day").distinct()
        .join(sim, ["item_id", "upload_day"])
        .where(F.col("similar_item_id") != F.col("item_id"))
        .join(stats, ["similar_item_id", "feat_day"])
    )
    w = F.greatest(F.col("sim").cast("double"), F.lit(0.0))
    return j.groupBy("item_id", "feat_day").agg(
        (F.sum(w) > 0).cast("float").alias("s_has"),
        *[(F.sum(w * F.col(f"x_rate_{t}")) / F.greatest(F.sum(w), F.lit(1e-9))).alias(f"s_rate_{t}") for t in TASKS],
    )


def _sofar_finish(df, cfg, g):
    """Turn raw so-far sums (e_n_imp, e_n_<task>, e_n_pos, e_prof_k) into e_* features."""
    from pyspark.sql import functions as F

    p, a = cfg.rank.profile_dim, cfg.rank.rate_prior_strength
    n_imp = F.coalesce(F.col("e_n_imp"), F.lit(0))
    npos = F.coalesce(F.col("e_n_pos"), F.lit(0))
    df = df.withColumn("e_log_imp", F.log1p(n_imp)).withColumn("e_log_pos", F.log1p(npos))
    for t in TASKS:
        df = df.withColumn(f"e_rate_{t}", (F.coalesce(F.col(f"e_n_{t}"), F.lit(0)) + F.lit(a * g[t])) / (n_imp + F.lit(a)))
    for k in range(p):
        df = df.withColumn(f"e_pos_prof_{k}", F.when(npos > 0, F.col(f"e_prof_{k}") / npos).otherwise(F.lit(0.0)))
    return df


def _engaged_profile_cols(p: int):
    from pyspark.sql import functions as F

    return [(F.col("engaged") * F.coalesce(F.col(f"u_prof_{k}"), F.lit(0.0))).alias(f"_pp_{k}") for k in range(p)]


# ---------------------------------------------------------------------- rows
def _persist(df, cached: list | None):
    """Cache a DataFrame reused by several branches (the caller unpersists ``cached`` when done)."""
    if cached is None:
        return df
    df = df.cache()
    cached.append(df)
    return df


def release(cached: list) -> None:
    for df in cached:
        df.unpersist()
    cached.clear()


SAMPLE_SCALE = 1 << 31


def sample_rank_col(seed: int):
    """Deterministic hash rank in [0, 2^31) of an exposure (user, item, ts) and a seed.

    Why a hash and not ``rand``: the same rows are drawn whatever the partitioning or the order
    Spark reads them in, so a rerun with the same seed trains on the same rows."""
    from pyspark.sql import functions as F

    return F.pmod(F.xxhash64("user_id", "item_id", F.unix_micros("ts"), F.lit(int(seed))), F.lit(SAMPLE_SCALE))


def training_rows(spark, lake, start: dt.date, end: dt.date, cfg, sample_fraction: float = 1.0, seed: int = 0,
                  cached: list | None = None):
    """Labelled feature rows for the exposures of [start, end] (every column of ``input_columns``,
    ``y_<task>``, ``row_day``, ``upload_day``, ``ts`` and the sample rank ``_r``). Returns (DataFrame, global rates).

    ``sample_fraction`` < 1 keeps the exposures whose hash rank (:func:`sample_rank_col`) is below
    fraction * 2^31, drawn BEFORE any feature is attached: only the item's so-far history runs over
    every exposure (it needs them all), and only its engaged exposures are joined with the user
    profile; the user, creator and similar-item features are joined to the sampled rows alone.
    Pass a list as ``cached`` to cache the shared intermediates (then :func:`release` it)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    rc = cfg.rank
    p = rc.profile_dim
    H, U = rc.item_history_days, rc.user_window_days
    first = start - dt.timedelta(days=H + U)
    item_start = first - dt.timedelta(days=rc.item_lookback_days)
    items = _persist(item_table(spark, lake, item_start, end, p), cached)
    daily = cached_daily(spark, lake, first, end, cfg)
    g = global_rates(daily["user"])
    hist = _persist(enriched_interactions(spark, lake, start - dt.timedelta(days=H), end, items), cached)
    ufeat = _persist(user_features(spark, lake, daily, date_range(start - dt.timedelta(days=H), end), cfg, g), cached)
    ufeat = ufeat.withColumnRenamed("feat_day", "row_day")
    # the rows to return (sampled by hash rank), marked among every exposure of the history
    r = sample_rank_col(seed)
    q = F.col("row_day") >= F.lit(start)
    if sample_fraction < 1.0:
        q = q & (r < F.lit(int(sample_fraction * SAMPLE_SCALE)))
    y = [f"y_{t}" for t in TASKS]
    ev = hist.select("user_id", "item_id", "ts", "row_day", "engaged", *y, q.alias("_q"))
    # profile of the engaged users as of the exposure's day (the only rows whose profile counts)
    prof = ufeat.select("user_id", "row_day", *[F.col(f"u_prof_{k}").alias(f"_up_{k}") for k in range(p)])
    eng = ev.where(F.col("engaged") > 0).join(prof, ["user_id", "row_day"], "left")
    zero = [F.lit(None).cast("double").alias(f"_up_{k}") for k in range(p)]
    ev = eng.unionByName(ev.where(F.col("engaged") <= 0).select("*", *zero))
    ev = ev.select("*", *[(F.col("engaged") * F.coalesce(F.col(f"_up_{k}"), F.lit(0.0))).alias(f"_pp_{k}") for k in range(p)])
    # item so far: exposures of the same item strictly before this row's timestamp
    w = Window.partitionBy("item_id").orderBy(F.unix_micros("ts")).rangeBetween(Window.unboundedPreceding, -1)
    so = ev.select(
        "user_id", "item_id", "ts", "row_day", "_q", *y,
        F.count("*").over(w).alias("e_n_imp"),
        F.sum("engaged").over(w).alias("e_n_pos"),
        *[F.sum(f"y_{t}").over(w).alias(f"e_n_{t}") for t in TASKS],
        *[F.sum(f"_pp_{k}").over(w).alias(f"e_prof_{k}") for k in range(p)],
    ).where(F.col("_q")).drop("_q")
    # (no item-age feature: at scoring every item is < 1 batch old, a range training barely covers)
    rows = so.join(items, "item_id", "inner").join(ufeat, ["user_id", "row_day"], "left")
    rows = _sofar_finish(rows, cfg, g).withColumn("feat_day", F.col("row_day")).withColumn("_r", r)
    rows = _attach_item_side(spark, lake, rows, daily, cfg, g, date_range(start, end), date_range(item_start, end))
    cols = input_columns(p)
    return rows.select(*cols, *y, "row_day", "upload_day", "ts", "_r"), g


def _attach_item_side(spark, lake, rows, daily, cfg, g, target: list[dt.date], up_days: list[dt.date]):
    cre = creator_features(spark, daily, target, cfg, g)
    sim = similar_features(spark, lake, daily, rows.select("item_id", "upload_day", "feat_day"), cfg, g, target, up_days)
    rows = rows.join(cre, ["creator_id", "feat_day"], "left").join(sim, ["item_id", "feat_day"], "left")
    fill = {"c_log_imp": 0.0, "s_has": 0.0, **{f"c_rate_{t}": g[t] for t in TASKS}, **{f"s_rate_{t}": g[t] for t in TASKS}}
    return rows.fillna(fill)


def _scoring_parts(spark, lake, day: dt.date, candidates, cfg, cached: list | None = None):
    """(per-item features at the batch cutoff, per-user features as of D, global rates) for D's candidates."""
    from pyspark.sql import functions as F

    rc = cfg.rank
    p, U = rc.profile_dim, rc.user_window_days
    first = day - dt.timedelta(days=U)
    item_start = first - dt.timedelta(days=rc.item_lookback_days)
    items = _persist(item_table(spark, lake, item_start, day, p), cached)
    daily = cached_daily(spark, lake, first, day - dt.timedelta(days=1), cfg)
    g = global_rates(daily["user"])
    ufeat = _persist(user_features(spark, lake, daily, [day], cfg, g), cached)
    cand_items = (
        candidates.select("item_id", "batch").distinct()
        .withColumn("cutoff", batch_cutoff_col(day, F.col("batch"), cfg.dispatch.batches_per_day))
        .join(items, "item_id", "inner")
    )
    # item so far: D's exposures of the item before its batch cutoff, positive users' profile as of D-1
    ev = enriched_interactions(spark, lake, day, day, items).select("user_id", "item_id", "ts", "engaged",
                                                                     *[f"y_{t}" for t in TASKS])
    ev = ev.join(ufeat.select("user_id", *[f"u_prof_{k}" for k in range(p)]), "user_id", "left").select("*", *_engaged_profile_cols(p))
    so = (
        cand_items.select("item_id", "cutoff").join(ev, "item_id").where(F.col("ts") < F.col("cutoff"))
        .groupBy("item_id").agg(
            F.count("*").alias("e_n_imp"), F.sum("engaged").alias("e_n_pos"),
            *[F.sum(f"y_{t}").alias(f"e_n_{t}") for t in TASKS],
            *[F.sum(f"_pp_{k}").alias(f"e_prof_{k}") for k in range(p)],
        )
    )
    it = _sofar_finish(cand_items.join(so, "item_id", "left"), cfg, g).withColumn("feat_day", F.lit(day))
    it = _attach_item_side(spark, lake, it, daily, cfg, g, [day], date_range(item_start, day))
    return it, ufeat.drop("feat_day"), g


def scoring_rows(spark, lake, day: dt.date, candidates, cfg, cached: list | None = None):
    """Feature rows for D's candidates (batch, item_id, user_id, channels, ...) at their batch cutoff.

    The joined, ~100-column form (reference for :func:`score_candidates`, which gathers the same
    features from per-user and per-item tables). Also returns theta per row (column ``theta``).
    Returns (DataFrame, global rates)."""
    rc = cfg.rank
    it, ufeat, g = _scoring_parts(spark, lake, day, candidates, cfg, cached)
    rows = candidates.drop("batch").join(it, "item_id", "inner").join(ufeat, "user_id", "left")
    rows = rows.withColumn("theta", theta_expr(rc.theta_prior_strength, g["explicit"]).cast("float"))
    keep = ["batch", "channels", "theta"]
    return rows.select(*input_columns(rc.profile_dim), *[c for c in keep if c in rows.columns]), g


THETA_INPUTS = ("u_n_explicit", "u_n_imp")


def scoring_tables(spark, lake, day: dt.date, candidates, cfg, cached: list | None = None):
    """(users Arrow table, items Arrow table, global rates): the two halves of every candidate's
    features, collected to the driver (candidate users x ~30 columns, candidate items x ~60).

    Same point-in-time rules as :func:`scoring_rows` (users as of D from the U days before D,
    items at their batch cutoff); only the users that appear in ``candidates`` are kept.
    """
    p = cfg.rank.profile_dim
    it, ufeat, g = _scoring_parts(spark, lake, day, candidates, cfg, cached)
    users = ufeat.join(candidates.select("user_id").distinct(), "user_id", "left_semi")
    users = compact(users.select(*user_table_columns(p), *THETA_INPUTS)).toArrow()
    items = compact(it.select(*item_table_columns(p))).toArrow()
    log.info("ranker scoring tables %s: %d users, %d items (%.1f MiB)", day, users.num_rows, items.num_rows,
             (users.nbytes + items.nbytes) / 2**20)
    return users, items, g


def score_candidates(candidates, side: SideArrays, model, beta: dict[str, float], theta_prior: float, g_explicit: float,
                     batch_rows: int = 8192):
    """Score D's candidates in ``mapInArrow`` from :class:`SideArrays` broadcast once.

    Only (batch, item_id, user_id, channels) cross into Python and (those + s_<task>, theta, g)
    come back: each worker finds each pair's user and item rows by ``searchsorted`` and runs the
    model in batches of ``batch_rows``, its first layer computed once per user and per item
    (:func:`models.ranker.pair_scorer`; PROMO models, whose prompt features are per pair, build
    the pair rows with :func:`models.ranker.featurize_pairs`). Pairs whose item has no features
    are dropped (the inner join of :func:`scoring_rows`); unknown users get the zero row (its left
    join). Equal to
    ``integrated_score(score_in_spark(scoring_rows(...)))`` up to float32 summation order.
    """
    from dataclasses import asdict

    from pyspark.sql import types as T

    spark = candidates.sparkSession
    keep = [f for f in candidates.schema.fields]
    keep_names = [f.name for f in keep]
    b = np.array([float(beta.get(t, 0.0)) for t in TASKS], np.float64)
    bc = spark.sparkContext.broadcast({"spec": asdict(model.spec), "blob": model_to_bytes(model), "side": side})
    schema = T.StructType(keep + [T.StructField(f"s_{t}", T.FloatType()) for t in TASKS]
                          + [T.StructField("theta", T.FloatType()), T.StructField("g", T.FloatType())])
    cache: dict[str, Any] = {}

    def fn(batches):
        if "m" not in cache:
            import torch

            torch.set_num_threads(1)
            cache["m"] = model_from_bytes(bc.value["spec"], bc.value["blob"])
            cache["side"] = bc.value["side"]
            # the first layer's per-user / per-item halves, once per task (not per batch)
            cache["scorer"] = pair_scorer(cache["m"], cache["side"]) if cache["m"].spec.promo == "off" else None
        m, sd, scorer = cache["m"], cache["side"], cache["scorer"]
        for bt in batches:
            if bt.num_rows == 0:
                continue
            users = bt.column("user_id").to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
            items = bt.column("item_id").to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
            i_rows = sd.item_rows(items)
            found = i_rows >= 0
            if not found.all():
                bt, users, i_rows = bt.filter(pa.array(found)), users[found], i_rows[found]
                if bt.num_rows == 0:
                    continue
            u_rows = sd.user_rows(users)
            if scorer is not None:
                s = predict_pairs(m, scorer, users, u_rows, i_rows, batch_rows)
            else:  # PROMO: the prompt features are per pair
                cat, dense = featurize_pairs(sd, users, u_rows, i_rows, m.spec, mask_item_id=True)
                prompt = sd.item_prompt.take(i_rows) if sd.item_prompt is not None else None
                s = predict(m, cat, dense, batch_rows, prompt=prompt)
            theta = ((sd.user_extra["u_n_explicit"][u_rows] + theta_prior * g_explicit)
                     / (sd.user_extra["u_n_imp"][u_rows] + theta_prior)).astype(np.float32)
            total = np.zeros(len(s), np.float64)
            for k in range(len(TASKS)):  # the order of integrated_score's sum (same rounding)
                total = total + b[k] * s[:, k].astype(np.float64)
            g = (total / theta.astype(np.float64)).astype(np.float32)
            yield pa.RecordBatch.from_arrays(
                [bt.column(c) for c in keep_names] + [pa.array(s[:, k], pa.float32()) for k in range(len(TASKS))]
                + [pa.array(theta, pa.float32()), pa.array(g, pa.float32())],
                names=keep_names + [f"s_{t}" for t in TASKS] + ["theta", "g"],
            )

    return candidates.mapInArrow(fn, schema)


def parse_bytes(text: str | None, default: int = 1 << 30) -> int:
    """A Spark size string ("1g", "512m", "2048k", "0") in bytes; 0 means unlimited."""
    if text is None or not str(text).strip():
        return default
    t = str(text).strip().lower().rstrip("b")
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(float(t))


def training_row_bytes(p: int) -> int:
    """Bytes of one :func:`compact` training row once collected as Arrow: 64-bit IDs, ``ts`` and
    sample rank, float32 features, int8 labels, two date columns."""
    return 8 * 3 + 4 * (len(input_columns(p)) - 3) + len(TASKS) + 8 + 8 + 2 * 4


def driver_row_cap(spark, row_size: int, share: float = 0.5) -> int:
    """How many rows of ``row_size`` bytes may be collected to the driver: ``share`` of
    ``spark.driver.maxResultSize`` (default 1g; 0 = unlimited, then ``share`` of the driver memory)."""
    limit = parse_bytes(spark.conf.get("spark.driver.maxResultSize", "1g"))
    if limit == 0:
        limit = parse_bytes(spark.conf.get("spark.driver.memory", "1g"))
    return max(1, int(share * limit / max(row_size, 1)))


def exposures_in(lake, start: dt.date, end: dt.date) -> int:
    """Rows of ``interactions`` in [start, end] from the Parquet footers (no Spark job)."""
    import pyarrow.parquet as pq

    n = 0
    for d in date_range(start, end):
        if not lake.has_partition("interactions", d):
            continue
        for path in lake._data_files(lake.partition_rel("interactions", d)):
            with lake.fs.open_input_file(path) as f:
                n += pq.ParquetFile(f).metadata.num_rows
    return n


def compact(df):
    """Float32 features and int8 labels: what the model consumes, half the bytes of doubles."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    cols = []
    for f in df.schema.fields:
        if isinstance(f.dataType, T.DoubleType):
            cols.append(F.col(f.name).cast("float").alias(f.name))
        elif f.name.startswith("y_"):
            cols.append(F.col(f.name).cast("byte").alias(f.name))
        else:
            cols.append(F.col(f.name))
    return df.select(*cols)


def training_frame(spark, lake, start: dt.date, end: dt.date, cfg, max_rows: int | None = None, seed: int = 0):
    """:func:`training_rows` collected to pandas, a uniform sample of at most ``max_rows`` rows.

    Bounded on the driver: the exposures are sampled by hash rank before any feature is joined
    (:func:`training_rows`) at the rate max_rows / exposures, where exposures come from the
    Parquet footers, so the full feature frame is never built; the cap is also held under half
    of ``spark.driver.maxResultSize`` (a medium day's 2M rows x 100 doubles exceeded 1 GiB).
    Features travel as float32. The rows with the smallest hash ranks are kept, in rank order,
    so the frame (and its row order) is the same on every run with the same seed. Caches are
    released on return.
    """
    import pyarrow.compute as pc

    cached: list = []
    try:
        n_est = exposures_in(lake, start, end)
        cap = driver_row_cap(spark, training_row_bytes(cfg.rank.profile_dim))
        if max_rows is not None:
            cap = min(cap, max_rows)
        frac = 1.0
        if n_est > cap:
            frac = min(1.0, 1.03 * cap / n_est + 1e-6)  # a little over: the exact cap is cut by rank below
            log.info("ranker training frame %s..%s: sampling %d of ~%d exposures by hash rank", start, end, cap, n_est)
        df, g = training_rows(spark, lake, start, end, cfg, sample_fraction=frac, seed=seed, cached=cached)
        tab = compact(df).toArrow()
        order = pc.sort_indices(tab, sort_keys=[(c, "ascending") for c in ("_r", "user_id", "item_id", "ts")])
        tab = tab.take(order[: min(cap, tab.num_rows)]).drop_columns(["_r"])
        log.info("ranker training frame %s..%s: %d rows, %.0f MiB on the driver", start, end, tab.num_rows, tab.nbytes / 2**20)
        return tab.to_pandas(), g
    finally:
        release(cached)


# ---------------------------------------------------------------------- PROMO inputs
def feedback_events(lake, start: dt.date, end: dt.date, cfg) -> dict[str, np.ndarray]:
    """Exposures of [start, end] as PROMO feedback events: item, user, ts (µs), v_ui, positive.

    v_ui = alpha * CR + beta * IR (``rank.promo``): CR = min(play_time_ms / duration_ms, 1),
    IR = share of the creator-visible feedbacks given; positive = any visible feedback or a long
    view. Arrow + NumPy (no Spark job): five columns of a few million rows."""
    import pyarrow.compute as pc


    pcfg = cfg.rank.promo
    days = date_range(start, end)
    cols = ["user_id", "item_id", "ts", "play_time_ms", "is_long_view", *[f"is_{t}" for t in VISIBLE_FEEDBACKS]]
    inter = lake.read_tables("interactions", days, cols)
    items = lake.read_tables("items", date_range(start - dt.timedelta(days=cfg.rank.item_lookback_days), end),
                             ["item_id", "duration_ms"])
    it_ids = items.column("item_id").to_numpy().astype(np.int64)
    order = np.argsort(it_ids, kind="stable")
    it_ids, dur = it_ids[order], pc.fill_null(items.column("duration_ms"), 0).to_numpy().astype(np.int64)[order]
    item = inter.column("item_id").to_numpy().astype(np.int64)
    pos = np.minimum(np.searchsorted(it_ids, item), max(len(it_ids) - 1, 0))
    d = np.where((len(it_ids) > 0) & (it_ids[pos] == item), dur[pos], 0) if len(it_ids) else np.zeros(len(item), np.int64)

    def flag(c):
        return pc.fill_null(inter.column(c), 0).to_numpy().astype(np.float64)

    vis = np.stack([flag(f"is_{t}") for t in VISIBLE_FEEDBACKS], 1) if inter.num_rows else np.zeros((0, 5))
    ir = vis.mean(1)
    cr = completion_rate(pc.fill_null(inter.column("play_time_ms"), 0).to_numpy(), d)
    ts = pc.cast(inter.column("ts"), pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
    return {"item": item, "user": inter.column("user_id").to_numpy().astype(np.int64), "ts": ts.astype(np.int64),
            "value": feedback_value(cr, ir, pcfg.alpha, pcfg.beta),
            "positive": (vis.max(1) > 0) | (flag("is_long_view") > 0)}


def _similar_arrays(lake, start: dt.date, end: dt.date):
    t = lake.read_tables("item_similar", date_range(start, end), ["item_id", "similar_item_id", "sim"])
    return (t.column("item_id").to_numpy().astype(np.int64), t.column("similar_item_id").to_numpy().astype(np.int64),
            t.column("sim").to_numpy().astype(np.float64))


def promo_lists(lake, q_item: np.ndarray, q_cutoff_us: np.ndarray, first: dt.date, last: dt.date, cfg):
    """Pinnacle / negative / pseudo-pinnacle users of (item, cutoff) queries from feedback of
    [first, last] strictly before each cutoff (point-in-time), S^I of the upload days in range.

    Unique (item, cutoff) pairs are solved once and broadcast back to the queries."""

    q = np.stack([np.asarray(q_item, np.int64), np.asarray(q_cutoff_us, np.int64)], 1)
    uq, inv = np.unique(q, axis=0, return_inverse=True) if len(q) else (q, np.zeros(0, np.int64))
    ev = feedback_events(lake, first, last, cfg)
    sim = _similar_arrays(lake, first - dt.timedelta(days=cfg.rank.item_lookback_days), last)
    lists = pinnacle_lists(ev["item"], ev["user"], ev["ts"], ev["value"], ev["positive"], uq[:, 0], uq[:, 1],
                           cfg.rank.promo, sim)
    log.info("promo lists %s..%s: %d queries (%d unique), %d events; own pinnacle %.1f%%, pseudo %.1f%%", first, last,
             len(q), len(uq), len(ev["item"]), 100 * (lists.pos >= 0).any(1).mean() if len(uq) else 0.0,
             100 * (lists.pseudo >= 0).any(1).mean() if len(uq) else 0.0)
    return lists.take(np.asarray(inv).reshape(-1))


def promo_training_lists(lake, pdf, cfg):
    """PROMO lists of training / held-out rows (``item_id``, ``ts``, ``row_day``): each row's cutoff
    is the start of the dispatch batch containing its timestamp, so only feedback that a batch
    scored at that time could have seen is used (never the row's own or later feedback)."""

    ts = _epoch_us(pdf["ts"])
    cut = batch_start_us(ts, cfg.dispatch.batches_per_day)
    days = pd_days(pdf["row_day"])
    first = min(days) - dt.timedelta(days=cfg.rank.item_history_days)
    return promo_lists(lake, pdf["item_id"].to_numpy(np.int64), cut, first, max(days), cfg)


def _epoch_us(col) -> np.ndarray:
    """A pandas timestamp column (tz-aware or naive UTC) as int64 µs since the epoch."""
    import pandas as pd

    return ((pd.to_datetime(col, utc=True) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)).to_numpy(np.int64)


def pd_days(col) -> list[dt.date]:
    vals = np.unique(col.to_numpy().astype("datetime64[D]"))
    return [dt.date.fromisoformat(str(v)) for v in vals]


def promo_scoring_lists(lake, day: dt.date, item_ids: np.ndarray, item_batch: tuple[np.ndarray, np.ndarray], cfg):
    """PROMO lists of D's candidate items at their batch cutoffs, in ``item_ids`` order.

    ``item_batch``: (item IDs, batch) arrays; an item in several batches takes its earliest."""

    b_items, b_batch = (np.asarray(a, np.int64) for a in item_batch)
    o = np.lexsort((b_batch, b_items))
    b_items, b_batch = b_items[o], b_batch[o]
    first_of = np.searchsorted(b_items, item_ids)
    first_of = np.minimum(first_of, max(len(b_items) - 1, 0))
    batch = np.where((len(b_items) > 0) & (b_items[first_of] == item_ids), b_batch[first_of], 0) if len(b_items) else \
        np.zeros(len(item_ids), np.int64)
    day0 = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp()) * 1_000_000
    cut = batch_end_us(day0, batch, cfg.dispatch.batches_per_day)
    return promo_lists(lake, np.asarray(item_ids, np.int64), cut, day - dt.timedelta(days=cfg.rank.item_history_days),
                       day, cfg)


# ---------------------------------------------------------------------- scores
def integrated_score(df, beta: dict[str, float]):
    """Eq. 10: g = sum_m beta_m * s_m / theta (Spark)."""
    from pyspark.sql import functions as F

    total = sum((F.lit(float(beta.get(t, 0.0))) * F.col(f"s_{t}") for t in TASKS), F.lit(0.0))
    return df.withColumn("g", (total / F.col("theta")).cast("float"))


def integrated_score_np(s: np.ndarray, theta: np.ndarray, beta: dict[str, float]) -> np.ndarray:
    """NumPy twin of :func:`integrated_score`: s is [n, M] in TASKS order."""
    b = np.array([beta.get(t, 0.0) for t in TASKS], np.float64)
    return (s @ b) / theta


def score_in_spark(rows, model, batch_rows: int = 8192):
    """Score feature rows in ``mapInArrow`` (model broadcast once; item IDs masked: new items).

    Returns the rows' key and pass-through columns (user_id, item_id and every column that is not
    a model feature, e.g. batch, channels, theta) plus s_<task>. The ~100 feature columns go in
    as float32 and do not come back out: they would double the Arrow traffic for nothing.
    """
    from dataclasses import asdict

    from pyspark.sql import types as T


    spark = rows.sparkSession
    rows = compact(rows)
    features = set(input_columns(model.spec.profile_dim)) - {"user_id", "item_id"}
    keep = [f for f in rows.schema.fields if f.name not in features]
    keep_names = [f.name for f in keep]
    bc = spark.sparkContext.broadcast({"spec": asdict(model.spec), "blob": model_to_bytes(model)})
    schema = T.StructType(keep + [T.StructField(f"s_{t}", T.FloatType()) for t in TASKS])
    cache: dict[str, Any] = {}

    def fn(batches):
        if "m" not in cache:
            import torch

            torch.set_num_threads(1)
            cache["m"] = model_from_bytes(bc.value["spec"], bc.value["blob"])
        m = cache["m"]
        for b in batches:
            if b.num_rows == 0:
                continue
            cat, dense = featurize(b, m.spec, mask_item_id=True)  # Arrow straight in: no pandas per batch
            s = predict(m, cat, dense, batch_rows)
            yield pa.RecordBatch.from_arrays(
                [b.column(c) for c in keep_names] + [pa.array(s[:, k], pa.float32()) for k in range(len(TASKS))],
                names=keep_names + [f"s_{t}" for t in TASKS],
            )

    return rows.mapInArrow(fn, schema)


# ---------------------------------------------------------------------- evaluation helpers


def auc_per_task(labels: np.ndarray, scores: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float | None]:
    out = {}
    for k, t in enumerate(TASKS):
        sel = slice(None) if mask is None else mask
        out[t] = roc_auc(labels[sel, k], scores[sel, k]) if len(labels[sel]) else None
    return out


def model_for_day(lake, day: dt.date):
    """(model day, model) of the ranker used on ``day``: latest artefact <= day trained on days < day."""

    for m in reversed([d for d in lake.model_days("ranker") if d <= day]):
        model = load_ranker(lake, m)
        if dt.date.fromisoformat(model.manifest["train_end"]) < day:
            return m, model
    return None, None


def score_rows_local(model, pdf, train_end: dt.date, lake=None, cfg=None) -> np.ndarray:
    """Score held-out feature rows on the driver; an item uploaded after the training window has
    an unknown ID, i.e. the masked bucket (the same rule scoring applies to new uploads).
    A PROMO model also needs ``lake`` and ``cfg`` (its rows' pinnacle lists)."""

    mask = (pdf["upload_day"].to_numpy() > np.datetime64(train_end)) if len(pdf) else np.zeros(0, bool)
    cat, dense = featurize(pdf, model.spec, mask_item_id=mask)
    prompt = None
    if model.spec.promo != "off":
        if lake is None or cfg is None:
            raise ValueError("scoring a PROMO ranker needs the lake and config for its pinnacle lists")
        prompt = promo_training_lists(lake, pdf, cfg)
    return predict(model, cat, dense, prompt=prompt)


RANKING_AUC_ROWS = 100_000


def ranking_auc(spark, lake, day, cfg, max_rows: int = RANKING_AUC_ROWS) -> dict[str, float | None]:
    """AUC per task of the ranker used on ``day``, on the exposures of ``day`` (interactions dt=D).

    The model used on D is trained on days strictly before D (jobs/rank.py), so D's exposures are
    held out. At most ``max_rows`` exposures, drawn by hash rank before any feature is built
    (:func:`training_frame`, seed 7): the same rows on every run, and every feature but the item's
    so-far history (which needs all exposures) is joined to the sample only. None per task when the model, the partition, or
    one of the classes is missing.
    """

    day = parse_date(day)
    none = {t: None for t in TASKS}
    if not lake.has_partition("interactions", day):
        return none
    m_day, model = model_for_day(lake, day)
    if model is None:
        return none
    pdf, _ = training_frame(spark, lake, day, day, cfg, max_rows=max_rows, seed=7)
    if len(pdf) == 0:
        return none
    s = score_rows_local(model, pdf, dt.date.fromisoformat(model.manifest["train_end"]), lake, cfg)
    return auc_per_task(labels_of(pdf), s)


__all__ = [
    "training_rows", "scoring_rows", "integrated_score", "integrated_score_np", "theta_expr", "theta_values",
    "score_in_spark", "scoring_tables", "score_candidates", "auc_per_task", "feedback_events", "promo_lists",
    "promo_training_lists", "promo_scoring_lists", "ranking_auc", "model_for_day", "score_rows_local", "projection_matrix",
]
