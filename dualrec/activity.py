"""User activity prediction (paper 4.2.1): point-in-time features, availability policy, metrics.

The first half of the UAC module. For a target day t every user of a ``users`` snapshot
gets one feature row computed ONLY from partitions dt in [t - lookback, t - 1]; the same
function builds training rows (target t <= D, label = "user in visits dt=t") and the
serving rows (target D + 1, features from dt <= D), so there is no train/serve skew and no
way for a job of day D to look at D + 1.

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
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from dualrec.config import ActivityConfig
from dualrec.lake import Lake, date_range, parse_date
from dualrec.stats import roc_auc
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

    Interactions are reduced to one row per user and day first, so building several target
    days' features from one cached frame is cheap.
    """
    from pyspark.sql import functions as F

    days = [parse_date(d) for d in days]
    visits = lake.read_df(spark, "visits", days).select(
        "user_id", "dt", "sessions", "watch_ms", F.lit(1).cast("int").alias("visited")
    )
    inter = (
        lake.read_df(spark, "interactions", days)
        .groupBy("user_id", "dt")
        .agg(
            F.count(F.lit(1)).alias("impressions"),
            F.sum("play_time_ms").alias("play_time_ms"),
            *(F.sum(F.col(f"is_{t}").cast("long")).alias(f"fb_{t}") for t in FEEDBACK_TYPES),
        )
    )
    daily = visits.join(inter, ["user_id", "dt"], "full")
    return daily.select(
        "user_id",
        "dt",
        *(F.coalesce(F.col(c).cast("double"), F.lit(0.0)).alias(c) for c in ("visited", *_COUNT_COLUMNS)),
    )


def features_from_daily(daily, users, target_day: dt.date, lookback: int = 30):
    """Feature rows for every user of ``users`` for ``target_day`` from per-day aggregates.

    Only rows with dt in [t - lookback, t - 1] are used, whatever ``daily`` holds, so a
    superset frame cannot leak the target day or later. Users without history get zeros,
    ``days_since_last_visit`` = lookback + 1 (the cap), never NaN.
    """
    from pyspark.sql import functions as F

    t = parse_date(target_day)
    lo = t - dt.timedelta(days=lookback)
    hi = t - dt.timedelta(days=1)
    cap = float(lookback + 1)
    w = daily.filter((F.col("dt") >= F.lit(lo)) & (F.col("dt") <= F.lit(hi))).withColumn(
        "d", F.datediff(F.lit(t), F.col("dt"))
    )
    visited = F.col("visited") > 0
    agg = w.groupBy("user_id").agg(
        *(F.max(F.when(visited & (F.col("d") == k), 1.0).otherwise(0.0)).alias(f"act_d{k}") for k in range(1, lookback + 1)),
        F.sum(F.when(visited & (F.col("d") <= 7), 1.0).otherwise(0.0)).alias("active_days_7"),
        F.sum(F.when(visited, 1.0).otherwise(0.0)).alias("active_days"),
        *(F.sum(c).alias(c) for c in _COUNT_COLUMNS),
        F.min(F.when(visited, F.col("d"))).cast("double").alias("days_since_last_visit"),
    )
    u = users.select("user_id", "register_dt", *PROFILE_COLUMNS)
    j = u.join(agg, "user_id", "left")
    zero_cols = [f"act_d{k}" for k in range(1, lookback + 1)] + ["active_days_7", "active_days", *_COUNT_COLUMNS]
    cols = [F.col("user_id")]
    cols += [F.coalesce(F.col(c), F.lit(0.0)).alias(c) for c in zero_cols]
    cols.append(F.coalesce(F.col("days_since_last_visit"), F.lit(cap)).alias("days_since_last_visit"))
    cols.append(
        F.greatest(F.coalesce(F.datediff(F.lit(t), F.col("register_dt")), F.lit(0)), F.lit(0))
        .cast("double")
        .alias("tenure_days")
    )
    cols += [F.coalesce(F.col(c).cast("double"), F.lit(0.0)).alias(c) for c in PROFILE_COLUMNS]
    cols.append(F.lit(float(t.weekday())).alias("dow"))  # 0 = Monday, of the TARGET day
    return j.select(*cols).select("user_id", *feature_names(lookback))


def features_for_target(spark, lake: Lake, target_day, users_day, lookback: int = 30, daily=None):
    """Point-in-time features of every user in ``users`` dt=``users_day`` for ``target_day``.

    Used for training (target t, users_day t - 1) and serving (target D + 1, users_day D).
    Reads only partitions in [t - lookback, t - 1] (unless a pre-built ``daily`` frame is
    passed, which is then filtered to that window). Raises :class:`BadInputError` when the
    window has no ``visits`` partition at all: a date with no prior history.
    """
    t = parse_date(target_day)
    ud = parse_date(users_day)
    if ud >= t:
        raise ValueError(f"users snapshot dt={ud} is not before target day {t} (point-in-time)")
    window = history_window(t, lookback)
    if not any(lake.has_partition("visits", d) for d in window):
        raise BadInputError(
            f"table 'visits': no partition in dt={window[0]}..{window[-1]}, so target day {t} "
            f"has no prior history to compute activity features from"
        )
    lake.require_partition("users", ud, "activity")
    if daily is None:
        daily = load_daily(spark, lake, window)
    users = lake.read_df(spark, "users", [ud], with_dt=False)
    return features_from_daily(daily, users, t, lookback)


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


def training_frame(spark, lake: Lake, targets: list[dt.date], lookback: int = 30, daily=None):
    """Union over target days of features (users snapshot t - 1) + label (in visits dt=t)."""
    from pyspark.sql import functions as F

    frames = []
    for t in targets:
        feats = features_for_target(spark, lake, t, t - dt.timedelta(days=1), lookback, daily)
        labels = lake.read_df(spark, "visits", [t], with_dt=False, required=True).select(
            "user_id", F.lit(1.0).alias("label")
        ).distinct()
        frames.append(
            feats.join(labels, "user_id", "left")
            .withColumn("label", F.coalesce(F.col("label"), F.lit(0.0)))
            .withColumn("target_dt", F.lit(t))
        )
    out = frames[0]
    for f in frames[1:]:
        out = out.unionByName(f)
    return out


def collect_training(df, names: list[str], max_rows: int, seed: int, targets: list[dt.date]) -> dict[str, Any]:
    """Bring a deterministic sample of the training frame to the driver as NumPy arrays.

    Each row gets r = hash(user_id, target_dt, seed) mod 2^31; a split keeps its
    ``max_rows`` rows with the smallest r (Spark pre-filters with a margin so only a little
    more than needed is collected). Rows of the latest target day are the early-stopping
    set; if it is the only target day, a hashed fifth of its users is held out instead.
    """
    from pyspark.sql import functions as F

    r = F.pmod(F.xxhash64("user_id", "target_dt", F.lit(int(seed))), F.lit(2**31))
    if len(targets) == 1:
        is_valid = F.pmod(F.xxhash64("user_id", F.lit(int(seed) + 1)), F.lit(5)) == 0
    else:
        is_valid = F.col("target_dt") == F.lit(max(targets))
    df = df.withColumn("_r", r).withColumn("_valid", is_valid).persist()
    counts = {bool(row["_valid"]): int(row["count"]) for row in df.groupBy("_valid").count().collect()}
    parts = {}
    for valid in (False, True):
        n = counts.get(valid, 0)
        frac = 1.0 if n <= max_rows else min(1.0, 1.1 * max_rows / n + 1e-4)
        sub = df.filter(F.col("_valid") == F.lit(valid))
        if frac < 1.0:
            sub = sub.filter(F.col("_r") < F.lit(int(frac * 2**31)))
        tbl = sub.select("_r", "user_id", "target_dt", "label", *names).toArrow()
        r_np = tbl.column("_r").to_numpy()
        uid = tbl.column("user_id").to_numpy()
        tgt = tbl.column("target_dt").cast(pa.int32()).to_numpy()
        order = np.lexsort((uid, tgt, r_np))[:max_rows]
        X = np.column_stack([tbl.column(c).to_numpy(zero_copy_only=False).astype(np.float32) for c in names])
        parts[valid] = (X[order] if X.size else np.zeros((0, len(names)), np.float32), tbl.column("label").to_numpy()[order])
        log.info("activity training %s rows: %d of %d", "valid" if valid else "train", len(order), n)
    df.unpersist()
    return {
        "X_train": parts[False][0],
        "y_train": parts[False][1],
        "X_valid": parts[True][0],
        "y_valid": parts[True][1],
        "n_rows": counts,
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


def apply_policy(scores, cfg: ActivityConfig, n_items: int, L: int, Q: int):
    """Add ``available`` (a_u) to a (user_id, p_active) frame under the configured policy.

    Returns (frame, N) where N is the top-N target (None for the probability policy).
    See the module docstring for the two policies.
    """
    from pyspark.sql import functions as F

    if cfg.policy == "probability":
        return scores.withColumn("available", F.col("p_active") >= F.lit(float(cfg.probability_threshold))), None
    if cfg.policy != "top_n":
        raise ValueError(f"activity.policy must be 'top_n' or 'probability', got {cfg.policy!r}")
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


# ---------------------------------------------------------------------- metrics
def _user_ids(lake: Lake, table: str, day: dt.date) -> np.ndarray | None:
    if not lake.has_partition(table, day):
        return None
    return np.unique(lake.read_table(table, day, columns=["user_id"]).column("user_id").to_numpy())


def _share_active(users: np.ndarray | None, active: np.ndarray | None) -> float | None:
    if users is None or active is None or users.size == 0:
        return None
    return float(np.isin(users, active).mean())


def activity_metrics(spark, lake: Lake, day) -> dict[str, float | None]:
    """Activity metrics of day D for ``evaluate`` (None where not computable).

    * ``auc``: p_active of activity_scores dt=D against "user in visits dt=D+1".
    * ``auc_baseline_last_day``: same labels, score = "user in visits dt=D".
    * ``hit_rate``: share of dispatched users (match_sets dt=D) active on D+1; the
      available users of activity_scores dt=D when no match_sets partition exists.
    * ``hit_rate_available``: share of available users active on D+1.
    * ``hit_rate_all_users``: share of the users snapshot dt=D active on D+1 (the
      "no activity model" reference: paper 49 % vs 82 %).

    Reads with PyArrow (columns only); ``spark`` is accepted for a uniform metrics API.
    """
    d = parse_date(day)
    nxt = d + dt.timedelta(days=1)
    out: dict[str, float | None] = {
        "auc": None,
        "auc_baseline_last_day": None,
        "hit_rate": None,
        "hit_rate_available": None,
        "hit_rate_all_users": None,
    }
    active_next = _user_ids(lake, "visits", nxt)
    if active_next is None:
        return out
    out["hit_rate_all_users"] = _share_active(_user_ids(lake, "users", d), active_next)
    available = None
    if lake.has_partition("activity_scores", d):
        s = lake.read_table("activity_scores", d, columns=["user_id", "p_active", "available"])
        uid = s.column("user_id").to_numpy()
        p = s.column("p_active").to_numpy()
        avail = s.column("available").to_numpy(zero_copy_only=False).astype(bool)
        y = np.isin(uid, active_next)
        out["auc"] = roc_auc(y, p)
        active_today = _user_ids(lake, "visits", d)
        if active_today is not None:
            out["auc_baseline_last_day"] = roc_auc(y, np.isin(uid, active_today).astype(np.float64))
        available = np.unique(uid[avail])
        out["hit_rate_available"] = _share_active(available, active_next)
    dispatched = _user_ids(lake, "match_sets", d)
    out["hit_rate"] = _share_active(dispatched if dispatched is not None else available, active_next)
    return out


def count_items(lake: Lake, day) -> int:
    """Items uploaded on ``day`` (0 with a warning when the partition is absent)."""
    d = parse_date(day)
    if not lake.has_partition("items", d):
        log.warning("table 'items': partition dt=%s missing; dispatch demand taken as 0 items", d)
        return 0
    return lake.read_table("items", d, columns=["item_id"]).num_rows


__all__ = [
    "FEEDBACK_TYPES",
    "activity_metrics",
    "apply_policy",
    "collect_training",
    "count_items",
    "demand_top_n",
    "feature_names",
    "features_for_target",
    "features_from_daily",
    "history_window",
    "load_daily",
    "predict_scores",
    "training_frame",
    "training_target_days",
]
