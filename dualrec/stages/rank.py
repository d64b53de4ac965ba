"""Stage ``rank``: train the multi-task ranker (on its cadence) and score D's candidates -> ``ranked``.

Training. The model published as ``_models/ranker/dt=D`` is trained on exposures of days before D
(at most ``rank.train_window_days``), so D's own exposures stay held out for ``ranking_auc`` and
the model never learns from feedback that arrived after a batch's cutoff. Warm start: from
``lake.latest_model_before("ranker", D)`` when its spec matches, training only on the days it has
not seen yet (incremental); otherwise a cold start over the whole window. With
``rank.cadence_days`` > 1 a recent enough model is reused and nothing is trained.

Scoring. Every candidate of ``candidates`` dt=D gets point-in-time features at its batch cutoff:
the user half (as of D) and the item half (at the batch cutoff) are built once per user and per
item in Spark, broadcast, and gathered per pair inside ``mapInArrow`` (model broadcast once, item
ID masked: new items), which also computes theta_u and g_ui = sum_m beta_m s^m / theta_u (Eq. 10).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import asdict

from dualrec.artifacts import keep_previous
from dualrec.lake import Lake, LakeError, date_range
from dualrec.ranking import (
    THETA_INPUTS,
    model_for_day,
    promo_scoring_lists,
    promo_training_lists,
    release,
    score_candidates,
    scoring_tables,
    training_frame,
)
from dualrec.stages.base import StageContext, partition_rows, write_empty
from models.ranker import (
    TASKS,
    RankerSpec,
    featurize,
    labels_of,
    load_ranker,
    new_model,
    save_ranker,
    side_arrays,
    train_ranker,
)

log = logging.getLogger("dualrec.rank")


def reads(cfg, day: dt.date) -> dict[str, list[dt.date]]:
    """Upstream partitions read for ``day`` (checked by the runner before ``run``).

    The cold-start training window (the widest: a warm start or a reused model reads less)
    [D - train_window_days, D - 1] with its feature history (item_history_days +
    user_window_days before it) and item lookback, plus the scoring features of D.
    """
    rc = cfg.rank
    start = day - dt.timedelta(days=rc.train_window_days)
    first = start - dt.timedelta(days=rc.item_history_days + rc.user_window_days)
    return {
        "interactions": date_range(first, day),
        "items": date_range(first - dt.timedelta(days=rc.item_lookback_days), day),
        "users": date_range(start - dt.timedelta(days=rc.item_history_days + 1), day),
    }


def train_window(lake, day: dt.date, cfg, prev_day: dt.date | None, prev_train_end: dt.date | None) -> tuple[dt.date, dt.date, bool]:
    """(start, end, warm) of the days the model for ``day`` trains on (end = day - 1)."""
    end = day - dt.timedelta(days=1)
    start = day - dt.timedelta(days=cfg.rank.train_window_days)
    warm = bool(cfg.rank.warm_start and prev_day is not None and prev_train_end is not None)
    if warm:
        start = max(start, prev_train_end + dt.timedelta(days=1))
        if start > end:
            start = end
    return start, end, warm


def _keep_model(lake, day: dt.date, prev_day: dt.date, reason: str) -> dict:
    """Publish the model of ``prev_day`` as D's (its train_end stays) and report it as kept."""
    keep_previous(lake, "ranker", day, prev_day, reason)
    return {"trained": False, "kept_previous": str(prev_day), "model_day": str(day), "reason": reason}


def train(ctx: StageContext) -> dict:
    """Train (or reuse) the ranker for D; returns the manifest-level report."""

    lake, day, cfg = ctx.lake, ctx.day, ctx.cfg
    prev_day = lake.latest_model_before("ranker", day)
    if prev_day is not None and (day - prev_day).days < cfg.rank.cadence_days:
        log.info("ranker: reusing model of %s (cadence %d days)", prev_day, cfg.rank.cadence_days)
        return {"trained": False, "model_day": str(prev_day)}
    spec = RankerSpec.from_cfg(cfg.rank)
    prev = load_ranker(lake, prev_day) if prev_day is not None else None
    if prev is not None and prev.manifest["spec"] != asdict(spec):
        log.info("ranker: previous model's spec differs; cold start")
        prev = None
    prev_end = dt.date.fromisoformat(prev.manifest["train_end"]) if prev is not None else None
    start, end, warm = train_window(lake, day, cfg, prev_day if prev is not None else None, prev_end)
    have = [d for d in lake.partitions("interactions") if start <= d <= end]
    pdf = None
    t0 = time.time()
    if have:
        pdf, g = training_frame(ctx.spark, lake, start, end, cfg, max_rows=cfg.rank.max_train_rows,
                                seed=ctx.seed("rank_sample"))
    if pdf is None or len(pdf) == 0:
        reason = (f"no interactions partition in the training window {start}..{end}" if not have
                  else f"no exposures in the training window {start}..{end}")
        if prev is None:
            raise LakeError(f"ranker: {reason} and no earlier model to keep (a date with no prior history)")
        # a quiet day: keep the previous model (its train_end stays, so the next window covers these days)
        log.warning("ranker %s: %s; keeping the model of %s", day, reason, prev_day)
        return _keep_model(lake, day, prev_day, reason)
    frame_seconds = round(time.time() - t0, 3)
    t0 = time.time()
    cat, dense = featurize(pdf, spec)
    y = labels_of(pdf)
    prompt = promo_training_lists(lake, pdf, cfg) if spec.promo != "off" else None
    model = prev if warm else new_model(spec, ctx.seed("rank_init"))
    report = train_ranker(model, cat, dense, y, cfg.rank.epochs, cfg.rank.batch_size, cfg.rank.lr,
                          ctx.seed("rank_train"), cold_start=not warm, threads=cfg.rank.torch_threads, prompt=prompt)
    torch_seconds = round(time.time() - t0, 3)
    manifest = {
        "train_start": str(start), "train_end": str(end), "warm_start_from": str(prev_day) if warm else None,
        "global_rates": g, "report": report,
    }

    with lake.publish_dir(Lake.model_rel("ranker", day)) as rel:
        save_ranker(model, lake, rel, manifest)
    return {"trained": True, "model_day": str(day), "rows": report["rows"], "skipped_tasks": report["skipped_tasks"],
            "epoch_loss": report["epoch_loss"], "warm": warm, "window": [str(start), str(end)],
            "frame_seconds": frame_seconds, "torch_seconds": torch_seconds}


def score(ctx: StageContext, model) -> dict:
    """Score D's candidates and write ``ranked``.

    The per-user and per-item feature tables are built once in Spark and broadcast; the workers
    gather each pair's features from them (``score_candidates``), so no ~100-column pair rows are
    ever joined or shipped."""
    from pyspark.sql import functions as F

    lake, day, cfg = ctx.lake, ctx.day, ctx.cfg
    cand = lake.read_df(ctx.spark, "candidates", [day], with_dt=False).select("batch", "item_id", "user_id", "channels")
    cached: list = []
    t0 = time.time()
    try:
        users, items, g = scoring_tables(ctx.spark, lake, day, cand, cfg, cached)
    finally:
        release(cached)
    tables_seconds = round(time.time() - t0, 3)
    side = side_arrays(users, items, model.spec, user_extra=THETA_INPUTS)
    if model.spec.promo != "off":
        # each item's pinnacle lists at its batch cutoff (feedback of D before it, or S^I pseudo users)
        ib = cand.select("item_id", "batch").distinct().toArrow()
        side.item_prompt = promo_scoring_lists(lake, day, side.item_ids, (ib.column("item_id").to_numpy(),
                                                                           ib.column("batch").to_numpy()), cfg)
    scored = score_candidates(cand, side, model, cfg.rank.beta, cfg.rank.theta_prior_strength, g["explicit"],
                              cfg.rank.score_batch_rows)
    out = scored.select("batch", "item_id", "user_id", "channels", *[f"s_{t}" for t in TASKS], "theta", "g")
    lake.write_df(out, "ranked", day, coalesce=4)
    r = lake.read_df(ctx.spark, "ranked", [day], with_dt=False).agg(
        F.count("*").alias("n"), F.avg("g").alias("g"), F.avg("theta").alias("theta")
    ).first()
    n_cand = cand.count()
    if int(r["n"]) != n_cand:
        log.warning("rank: %d candidates but %d ranked rows (items missing from the items table?)", n_cand, r["n"])
    return {"candidates": n_cand, "ranked": int(r["n"]), "mean_g": r["g"], "mean_theta": r["theta"],
            "users_table": users.num_rows, "items_table": items.num_rows, "tables_seconds": tables_seconds}


def empty_day(ctx: StageContext) -> dict | None:
    """A day without candidates (no uploads): keep the previous model and publish an empty ``ranked``.

    Why: there is nothing to score, and the warm start is incremental from the model's
    ``train_end``, which a kept model keeps, so the next trained day covers this one. Returns None
    when the day must run normally: it has candidates, ``rank.train_without_uploads`` is set, or no
    earlier model with the configured spec exists (the first day trains, so later days can start warm)."""
    lake, day, cfg = ctx.lake, ctx.day, ctx.cfg
    if cfg.rank.train_without_uploads or partition_rows(lake, "candidates", day) > 0:
        return None
    prev_day = lake.latest_model_before("ranker", day)
    prev = load_ranker(lake, prev_day) if prev_day is not None else None
    if prev is None or prev.manifest["spec"] != asdict(RankerSpec.from_cfg(cfg.rank)):
        return None
    t0 = time.time()
    if (day - prev_day).days < cfg.rank.cadence_days:
        train = {"trained": False, "model_day": str(prev_day)}
    else:
        train = _keep_model(lake, day, prev_day, f"no candidates on {day} (no uploads): nothing to score")
    write_empty(lake, "ranked", day)
    log.info("rank %s: no candidates; kept the model of %s, empty ranked published", day, prev_day)
    return {"train": train, "train_seconds": round(time.time() - t0, 3),
            "score": {"candidates": 0, "ranked": 0, "mean_g": None, "mean_theta": None},
            "score_seconds": 0.0, "model_day": train["model_day"]}


def run(ctx: StageContext) -> dict:
    """Train the ranker on its cadence and score D's candidates."""

    if (stats := empty_day(ctx)) is not None:
        return stats
    t0 = time.time()
    stats = {"train": train(ctx)}
    stats["train_seconds"] = round(time.time() - t0, 3)
    m_day, model = model_for_day(ctx.lake, ctx.day)
    if model is None:

        raise LakeError(f"no ranker model usable on {ctx.day}")
    t1 = time.time()
    stats["score"] = score(ctx, model)
    stats["score_seconds"] = round(time.time() - t1, 3)
    stats["model_day"] = str(m_day)
    log.info("rank %s: %s", ctx.day, stats)
    return stats

