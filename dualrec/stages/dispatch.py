"""Stage `dispatch` (paper 4.1-4.2, Algorithm 1): available-user store, assignment, outputs.

Reads ``ranked``, ``items`` and ``activity_scores`` for day D; processes D's uploads in
micro-batches in upload order with the available-user store (restarted from
``activity_scores`` each day); checks every hard invariant (|D_u| <= Q, item <= L, only
available users, store consistent) BEFORE publishing, so a violation raises and nothing is
written; then publishes ``available_users``, ``user_match_sets`` and, last, ``match_sets``
(each atomically; match_sets present = the day's dispatch is complete). Reruns recompute
everything from the inputs and replace the partitions, so they never double-count.

    spark-submit jobs/dispatch.py --lake DIR --date D [--set dispatch.policy=matching]
"""

from __future__ import annotations

import logging

from dualrec.dispatch import check_invariants, dispatch_day
from dualrec.stages.base import StageContext

log = logging.getLogger(__name__)


def reads(cfg, day):
    """Upstream partitions read for ``day``: D's uploads only."""
    return {"items": [day]}




def run(ctx: StageContext) -> dict:
    """Dispatch day D's uploads to available users (store, assignment, match sets)."""
    cfg = ctx.cfg.dispatch
    lake, spark, day = ctx.lake, ctx.spark, ctx.day
    ranked = lake.read_df(spark, "ranked", [day], with_dt=False)
    items = lake.read_df(spark, "items", [day], with_dt=False)
    activity = lake.read_df(spark, "activity_scores", [day], with_dt=False)
    out = dispatch_day(
        spark, ranked, items, activity, L=cfg.L, Q=cfg.Q, batches_per_day=cfg.batches_per_day,
        policy=cfg.policy, engine=cfg.engine,
    )
    check_invariants(out.match_sets, out.available_users, out.store0, cfg.L, cfg.Q, cfg.batches_per_day)
    lake.write_df(out.available_users, "available_users", day, coalesce=None)
    lake.write_df(out.user_match_sets, "user_match_sets", day)
    lake.write_df(out.match_sets, "match_sets", day)
    log.info("dispatch %s: %s", day, out.stats)
    return dict(out.stats)

