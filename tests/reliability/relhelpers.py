"""Helpers of the reliability suite (imported by its tests; fixtures are in conftest.py): private lake copies, partition surgery, a hand-made dispatch day.

Every test works on its own copy of the session ``tiny_world`` (never the shared one), and
corrupts partitions by rewriting their Parquet file directly, i.e. the way a faulty upstream
delivery would look, bypassing the validating writer.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import os
import shutil
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dualrec.config import DualRecConfig
from dualrec.lake import Lake
from dualrec.stages.base import StageContext

DAY = dt.date(2026, 1, 11)  # tiny_world has 2026-01-01 .. 2026-01-14
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# activity settings that keep one stage run to a few seconds on tiny (the logic is unchanged)
FAST_ACTIVITY = {"n_estimators": 30, "train_target_days": 2, "early_stopping_rounds": 5}
FAST_SET = [f"activity.{k}={v}" for k, v in FAST_ACTIVITY.items()]


def fast_cfg(**sections) -> DualRecConfig:
    data = {"activity": dict(FAST_ACTIVITY)}
    for k, v in sections.items():
        data.setdefault(k, {}).update(v)
    return DualRecConfig.from_dict(data)


def copy_world(src: str, dst) -> Lake:
    shutil.copytree(src, str(dst), ignore=shutil.ignore_patterns("_truth"))
    return Lake(str(dst))


def part_file(lake: Lake, table: str, day: dt.date) -> str:
    files = sorted(glob.glob(os.path.join(lake.fs_path(lake.partition_rel(table, day)), "*.parquet")))
    assert len(files) == 1, files
    return files[0]


@contextlib.contextmanager
def replaced_partition(lake: Lake, table: str, day: dt.date, data: pa.Table | None) -> Iterator[None]:
    """Temporarily replace a partition's data file (``None``: remove the partition); restored after."""
    path = part_file(lake, table, day)
    part_dir = os.path.dirname(path)
    backup = part_dir + ".bak"
    shutil.copytree(part_dir, backup)
    try:
        if data is None:
            shutil.rmtree(part_dir)
        else:
            pq.write_table(data, path)
        yield
    finally:
        if os.path.exists(part_dir):
            shutil.rmtree(part_dir)
        os.rename(backup, part_dir)


def table_rows(lake: Lake, table: str, day: dt.date, keys: list[str]) -> pa.Table:
    """A partition sorted by its key: the form in which two runs' outputs are compared."""
    return lake.read_table(table, day).sort_by([(k, "ascending") for k in keys])


# ---------------------------------------------------------------------------------- dispatch day
def dispatch_tables(day: dt.date, seed: int = 0, n_items: int = 30, n_users: int = 40, batches: int = 2):
    """Hand-made items, activity_scores and ranked for ``day`` (crowded: Q binds, L binds)."""
    rng = np.random.default_rng(seed)
    t0 = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
    secs = np.sort(rng.integers(0, 86_400, n_items))
    item_ids = np.arange(500, 500 + n_items)[rng.permutation(n_items)]
    items = pa.table({
        "item_id": pa.array(item_ids, pa.int64()),
        "creator_id": pa.array(np.arange(n_items) % 3, pa.int64()),
        "upload_ts": pa.array([t0 + dt.timedelta(seconds=int(s)) for s in secs], pa.timestamp("us", tz="UTC")),
        "category": pa.array(np.zeros(n_items), pa.int32()),
        "duration_ms": pa.array(np.full(n_items, 1000), pa.int64()),
        "content_emb": pa.array(list(rng.normal(size=(n_items, 4)).astype(np.float32)), pa.list_(pa.float32())),
    })
    user_ids = np.arange(1, n_users + 1) * 7
    activity = pa.table({
        "user_id": pa.array(user_ids, pa.int64()),
        "p_active": pa.array(rng.random(n_users)),
        "available": pa.array(rng.random(n_users) < 0.8),
    })
    rows: dict[str, list] = {k: [] for k in ("batch", "item_id", "user_id", "g")}
    for i, s in zip(item_ids, secs):
        for u in rng.choice(user_ids, size=15, replace=False):
            rows["batch"].append(int(s // (86_400 / batches)))
            rows["item_id"].append(int(i))
            rows["user_id"].append(int(u))
            rows["g"].append(float(np.round(rng.random() * 4) / 4))  # ties on purpose
    n = len(rows["g"])
    ranked = pa.table({
        "batch": pa.array(rows["batch"], pa.int32()),
        "item_id": pa.array(rows["item_id"], pa.int64()),
        "user_id": pa.array(rows["user_id"], pa.int64()),
        "channels": pa.array([["two_tower"]] * n, pa.list_(pa.string())),
        **{f"s_{t}": pa.array(np.full(n, 0.1), pa.float32())
           for t in ("like", "comment", "follow", "share", "profile_enter", "long_view")},
        "theta": pa.array(np.full(n, 0.2), pa.float32()),
        "g": pa.array(rows["g"], pa.float32()),
    })
    return items, activity, ranked


def dispatch_lake(root, day: dt.date = DAY, seed: int = 0) -> Lake:
    lake = Lake(str(root))
    lake.write_meta({"emb_dim": 4})
    items, activity, ranked = dispatch_tables(day, seed)
    lake.write_table("items", day, items)
    lake.write_table("activity_scores", day, activity)
    lake.write_table("ranked", day, ranked)
    return lake


# an online policy: the retry tests crash the store between micro-batches (optimal assigns the day in one call)
DISPATCH = {"L": 5, "Q": 3, "batches_per_day": 2, "policy": "arrival"}


def dispatch_ctx(lake: Lake, spark, day: dt.date = DAY, **dispatch) -> StageContext:
    cfg = DualRecConfig.from_dict({"dispatch": {**DISPATCH, **dispatch}})
    return StageContext(lake=lake, day=day, cfg=cfg, _spark=spark)
