"""Micro-batches of a day's uploads (SPEC 2.6): one definition used by retrieval and dispatch.

Batch b of day D covers upload times [D + b*w, D + (b+1)*w) with w = 24h / batches_per_day.
A batch is processed after it closes, so its cutoff (the latest time whose data it may
use, exclusive) is the batch's end.
"""

from __future__ import annotations

import datetime as dt

import numpy as np


def batch_width_seconds(batches_per_day: int) -> float:
    return 86_400 / batches_per_day


def batch_of_seconds(seconds_of_day: np.ndarray, batches_per_day: int) -> np.ndarray:
    """Batch index for seconds since midnight UTC (vectorised)."""
    b = np.floor(np.asarray(seconds_of_day, dtype=np.float64) / batch_width_seconds(batches_per_day))
    return np.clip(b, 0, batches_per_day - 1).astype(np.int32)


def batch_cutoff(day: dt.date, batch: int, batches_per_day: int) -> dt.datetime:
    """Exclusive end of batch ``batch`` (UTC)."""
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
    return start + dt.timedelta(seconds=(batch + 1) * batch_width_seconds(batches_per_day))


def batch_col(ts_col, batches_per_day: int):
    """Spark column expression: batch index of a timestamp column (UTC session time zone)."""
    from pyspark.sql import functions as F

    secs = F.unix_timestamp(ts_col) - F.unix_timestamp(F.date_trunc("day", ts_col))
    w = batch_width_seconds(batches_per_day)
    return F.least(F.floor(secs / F.lit(w)), F.lit(batches_per_day - 1)).cast("int")


def batch_cutoff_col(day: dt.date, batch_col_expr, batches_per_day: int):
    """Spark column expression: exclusive cutoff timestamp of a batch column."""
    from pyspark.sql import functions as F

    start = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp())
    w = batch_width_seconds(batches_per_day)
    return F.timestamp_seconds(F.lit(start) + (batch_col_expr + F.lit(1)) * F.lit(w))
