"""Stage ``activity`` (paper 4.2.1): train the XGBoost activity model on recent labelled days
and write ``activity_scores`` dt=D (p_active for D + 1 and the availability flag a_u).

Thin on purpose: read, call :mod:`dualrec.activity` / :mod:`models.activity`, write.
``spark-submit jobs/activity.py --lake DIR --date D``.
"""

from __future__ import annotations

import datetime as dt
import logging

from dualrec import activity as A
from dualrec.lake import date_range
from dualrec.stages.base import StageContext
from models import activity as M

log = logging.getLogger(__name__)


def reads(cfg, day: dt.date) -> dict[str, list[dt.date]]:
    """Every upstream partition this stage may read for ``day`` (checked by the runner before ``run``).

    Training targets are the ``train_target_days`` latest labelled days t <= D; each reads
    visits/interactions [t - lookback, t - 1] and the users snapshot t - 1, and serving reads
    [D + 1 - lookback, D] and users D (the span ``load_daily`` covers), items D for the demand.
    """
    a = cfg.activity
    first_target = day - dt.timedelta(days=a.train_target_days - 1)
    history = date_range(first_target - dt.timedelta(days=a.lookback_days), day)
    return {
        "visits": history,
        "interactions": history,
        "users": date_range(first_target - dt.timedelta(days=1), day),
        "items": [day],
    }


def run(ctx: StageContext) -> dict:
    """Train the activity model for day D and score every user of users dt=D for D + 1."""
    lake, day, acfg = ctx.lake, ctx.day, ctx.cfg.activity
    spark = ctx.spark
    lookback = acfg.lookback_days
    names = A.feature_names(lookback)

    targets = A.training_target_days(lake, day, acfg.train_target_days)
    # per-(user, day) aggregates over every day any target (and the serving day) may read: each day
    # is reduced once and cached in the lake by the content version of its inputs (A.cached_daily)
    daily = A.cached_daily(spark, lake, date_range(targets[0] - dt.timedelta(days=lookback), day))
    # training rows (targets <= D) and serving rows (D + 1, users dt=D) from one pass over the history
    train_df, counts, feats, shared = A.training_and_serving(
        spark, lake, targets, (day + dt.timedelta(days=1), day), lookback, daily, acfg.max_train_rows,
        ctx.seed("activity.sample"),
    )
    data = A.collect_training(train_df, names, acfg.max_train_rows, counts)
    model = M.train(
        data["X_train"], data["y_train"], data["X_valid"], data["y_valid"], names, acfg, ctx.seed("activity.xgb")
    )
    M.save(
        lake,
        day,
        model,
        {
            "training_target_days": [t.isoformat() for t in targets],
            "validation_day": targets[-1].isoformat(),
            "lookback_days": lookback,
            "predicts_for": (day + dt.timedelta(days=1)).isoformat(),
            "label": "user present in visits dt=target",
        },
    )
    scores = A.predict_scores(spark, feats, model.model_bytes(), names).persist()
    n_items = A.count_items(lake, day)
    out, n_target = A.apply_policy(scores, acfg, n_items, ctx.cfg.dispatch.L, ctx.cfg.dispatch.Q)
    lake.write_df(out, "activity_scores", day)
    scores.unpersist()
    shared.unpersist()
    written = lake.read_table("activity_scores", day, columns=["available"])
    n_avail = int(written.column("available").to_numpy(zero_copy_only=False).sum())
    stats = {
        "users": written.num_rows,
        "available": n_avail,
        "policy": acfg.policy,
        "top_n": n_target,
        "items": n_items,
        "train_days": len(targets),
        "n_train": model.manifest.get("n_train"),
        "valid_auc": model.manifest.get("auc"),
        "valid_logloss": model.manifest.get("logloss"),
    }
    log.info("activity %s: %s", day, stats)
    return stats

