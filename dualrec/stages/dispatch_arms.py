"""The dispatch stage under a co-diverted experiment (paper 5.1.1; ``experiment.arms`` >= 2 arms).

Each arm is dispatched by itself: its creators' items, its users, its own store and its own
config (policy, L, Q, ...), through the same :func:`dualrec.dispatch.dispatch_day` and the same
:func:`dualrec.dispatch.check_invariants` as a plain run, per arm. The stages before dispatch ran
once for everyone; ``ranked`` is cut to the arm's items x the arm's users, so an item can only
ever reach its own arm's users. That is checked again on the union (cross-arm pairs must be 0)
before anything is published. Then ``buckets`` (the assignment), the manifest
(``_experiments/dt=D``), ``available_users``, ``user_match_sets`` and, last, ``match_sets``.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging

from pyspark.sql import functions as F

from dualrec.dispatch import DispatchInvariantError, PolicyParams, check_invariants, dispatch_day, paced_curve
from dualrec.experiment import BUCKETS, arm_configs, arm_names, buckets_table, with_arm, write_manifest
from dualrec.stages.base import StageContext

log = logging.getLogger(__name__)


def reads(cfg, day: dt.date) -> dict[str, list[dt.date]]:
    """D's uploads, plus the earlier days whose upload curves forecast the rest of the day for an arm that is ``paced``."""
    days = {day}
    for c in arm_configs(cfg).values():
        if c.dispatch.policy == "paced":
            days |= {day - dt.timedelta(days=k) for k in range(c.dispatch.forecast_days, 0, -1)}
    return {"items": sorted(days)}


def cross_arm_pairs(match_df, user_arms, item_arms) -> int:
    """Dispatched pairs whose user and item (creator) are in different arms, or unassigned."""
    j = (match_df.select("user_id", "item_id")
         .join(user_arms.select("user_id", F.col("arm").alias("_ua")), "user_id", "left")
         .join(item_arms.select("item_id", F.col("arm").alias("_ia")), "item_id", "left"))
    return j.filter(F.col("_ua").isNull() | F.col("_ia").isNull() | (F.col("_ua") != F.col("_ia"))).count()


def run(ctx: StageContext) -> dict:
    """Dispatch every arm on its own creators' items and users; publish the union and the assignment."""
    cfg, lake, spark, day = ctx.cfg, ctx.lake, ctx.spark, ctx.day
    exp = cfg.experiment
    ranked = lake.read_df(spark, "ranked", [day], with_dt=False)
    items = with_arm(lake.read_df(spark, "items", [day], with_dt=False), "creator_id", "creator", exp).localCheckpoint()
    activity = with_arm(lake.read_df(spark, "activity_scores", [day], with_dt=False), "user_id", "user", exp)
    activity = activity.localCheckpoint()
    confs = arm_configs(cfg)
    names = arm_names(exp)
    outs, stats = {}, {}
    for k, name in enumerate(names):
        c = confs[name].dispatch
        it = items.filter(F.col("arm") == name).drop("arm")
        act = activity.filter(F.col("arm") == name).drop("arm")
        rk = ranked.join(it.select("item_id"), "item_id", "left_semi").join(act.select("user_id"), "user_id", "left_semi")
        curve = paced_curve(lake, day, c)
        out = dispatch_day(
            spark, rk, it, act, L=c.L, Q=c.Q, batches_per_day=c.batches_per_day, policy=c.policy, curve=curve,
            params=PolicyParams.from_config(c),
            on_batch=lambda j, n, k=k: ctx.step("batch", k * n + j, len(names) * n),
        )
        try:
            check_invariants(out.match_sets, out.available_users, out.store0, c.L, c.Q, c.batches_per_day)
        except DispatchInvariantError as e:
            raise DispatchInvariantError(f"arm {name!r}: {e}") from e
        outs[name] = out
        stats[name] = {**out.stats, "L": c.L, "Q": c.Q, "share": exp.arms[name].share}
        log.info("dispatch %s arm %s: %s", day, name, out.stats)

    def union(attr):
        return functools.reduce(lambda a, b: a.unionByName(b), [getattr(outs[n], attr) for n in names])

    match_sets, user_match_sets, available = union("match_sets"), union("user_match_sets"), union("available_users")
    cross = cross_arm_pairs(match_sets, activity.select("user_id", "arm"), items.select("item_id", "arm"))
    if cross:
        raise DispatchInvariantError(f"{cross} dispatched pair(s) cross arms; nothing published")
    users = activity.select("user_id").toArrow().column(0).to_numpy()
    creators = items.select("creator_id").toArrow().column(0).to_numpy()
    lake.write_table(BUCKETS, day, buckets_table(users, creators, exp))
    write_manifest(lake, day, cfg, stats)
    lake.write_df(available, "available_users", day, coalesce=None)
    lake.write_df(user_match_sets, "user_match_sets", day)
    lake.write_df(match_sets, "match_sets", day)
    total = {k: sum(s[k] for s in stats.values()) for k in ("items", "edges", "available_users", "pairs", "users_matched",
                                                             "items_covered", "items_full")}
    return {**total, "policy": "experiment", "cross_arm_pairs": 0, "arms": stats}
