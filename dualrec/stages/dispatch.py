"""Stage `dispatch` (paper 4.1-4.2, Algorithm 1): available-user store, assignment, outputs.

Reads ``ranked``, ``items`` and ``activity_scores`` for day D (and, for ``paced``, the
``items`` of up to ``dispatch.forecast_days`` earlier days: their upload curves forecast the
rest of the day); processes D's uploads in micro-batches in upload order with the
available-user store (restarted from ``activity_scores`` each day); checks every hard
invariant (|D_u| <= Q, item <= L, only available users, store consistent) BEFORE publishing,
so a violation raises and nothing is written; then publishes ``available_users``,
``user_match_sets`` and, last, ``match_sets`` (each atomically; match_sets present = the day's
dispatch is complete). Reruns recompute everything from the inputs and replace the
partitions, so they never double-count.

    spark-submit jobs/dispatch.py --lake DIR --date D [--set dispatch.policy=paced]
"""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pyarrow as pa

from dualrec.dispatch import PolicyParams, check_invariants, dispatch_day, paced_curve
from dualrec.experiment import clear as clear_experiment
from dualrec.experiment import is_experiment
from dualrec.stages import dispatch_arms
from dualrec.stages.base import StageContext, partition_rows, write_empty

log = logging.getLogger(__name__)


def reads(cfg, day):
    """Upstream partitions read for ``day``: D's uploads, plus the earlier days whose upload
    curves forecast the rest of the day when the policy is ``paced``."""
    if is_experiment(cfg):  # experiment.arms: each arm's own policy decides (issue 19)
        return dispatch_arms.reads(cfg, day)
    days = [day]
    if cfg.dispatch.policy == "paced":
        days = [day - dt.timedelta(days=k) for k in range(cfg.dispatch.forecast_days, 0, -1)] + days
    return {"items": days}


EMPTY_DAY_MAX_ROWS = 5_000_000  # store rows (available users x batches) built on the driver on a day with nothing ranked


def empty_day(ctx: StageContext) -> dict | None:
    """A day with nothing ranked (no uploads): publish the outputs without Spark, or None when the
    store is too large to build on the driver (the Spark path handles an empty day as well).

    Nothing is matched, so every available user keeps |D_u| = 0 through every batch."""
    lake, day, cfg = ctx.lake, ctx.day, ctx.cfg.dispatch
    scores = lake.read_table("activity_scores", day, columns=["user_id", "available"])
    users = np.unique(scores.filter(scores.column("available")).column("user_id").to_numpy(zero_copy_only=False))
    nb = cfg.batches_per_day
    if len(users) * nb > EMPTY_DAY_MAX_ROWS:
        return None
    store = pa.table({
        "batch": pa.array(np.repeat(np.arange(nb, dtype=np.int32), len(users)), pa.int32()),
        "user_id": pa.array(np.tile(users.astype(np.int64), nb), pa.int64()),
        "matched": pa.array(np.zeros(len(users) * nb, np.int32), pa.int32()),
        "available": pa.array(np.ones(len(users) * nb, bool)),
    })
    lake.write_table("available_users", day, store)
    write_empty(lake, "user_match_sets", day)
    write_empty(lake, "match_sets", day)  # last: match_sets present = the day's dispatch is complete
    clear_experiment(lake, day)  # a plain rerun of an experiment day: no stale assignment
    stats = {"policy": cfg.policy, "items": partition_rows(lake, "items", day), "available_users": int(len(users)),
             "pairs": 0, "total_g": 0.0, "users_matched": 0, "items_covered": 0, "items_full": 0}
    log.info("dispatch %s: nothing ranked, empty match sets published: %s", day, stats)
    return stats


def run(ctx: StageContext) -> dict:
    """Dispatch day D's uploads to available users (store, assignment, match sets)."""
    if is_experiment(ctx.cfg):  # co-diverted arms, each on its own creators and users (issue 19)
        return dispatch_arms.run(ctx)
    cfg = ctx.cfg.dispatch
    lake, day = ctx.lake, ctx.day
    if partition_rows(lake, "ranked", day) == 0 and (stats := empty_day(ctx)) is not None:
        return stats
    spark = ctx.spark
    ranked = lake.read_df(spark, "ranked", [day], with_dt=False)
    items = lake.read_df(spark, "items", [day], with_dt=False)
    activity = lake.read_df(spark, "activity_scores", [day], with_dt=False)
    curve = paced_curve(lake, day, cfg)
    out = dispatch_day(
        spark, ranked, items, activity, L=cfg.L, Q=cfg.Q, batches_per_day=cfg.batches_per_day,
        policy=cfg.policy, curve=curve, params=PolicyParams.from_config(cfg),
        on_batch=lambda j, n: ctx.step("batch", j, n),
    )
    check_invariants(out.match_sets, out.available_users, out.store0, cfg.L, cfg.Q, cfg.batches_per_day,
                     n_users=out.stats["available_users"])
    lake.write_df(out.available_users, "available_users", day, coalesce=None)
    lake.write_df(out.user_match_sets, "user_match_sets", day)
    lake.write_df(out.match_sets, "match_sets", day)
    clear_experiment(lake, day)  # a plain rerun of an experiment day: no stale assignment
    log.info("dispatch %s: %s", day, out.stats)
    return dict(out.stats)
