"""Stage two_tower for day D: train the two-tower model, embed every user, build the user index.

Reads (all dt <= D): users dt=D, interactions/visits dt in [D-W+1, D], items dt in
[D-W-lookback+1, D], activity_scores dt=D (the available users the index holds) and earlier
activity_scores partitions in the window (negative pools; visits where missing).
Writes: ``_models/two_tower/dt=D`` (model.pt + manifest.json), ``user_embeddings`` dt=D,
``_models/user_index/dt=D`` (FAISS index over available users + ids.npy + manifest.json with
the recall@K measured against exact search).

    spark-submit jobs/two_tower.py --lake LAKE --date D
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dualrec import two_tower as T
from dualrec.artifacts import keep_previous, read_manifest  # noqa: E402
from dualrec.config import EXPLICIT_FEEDBACKS  # noqa: E402
from dualrec.lake import Lake, LakeError, date_range  # noqa: E402
from dualrec.stages.base import StageContext, partition_rows, write_empty  # noqa: E402
from models.ann import build_index, tune_nprobe
from models.two_tower import (
    build_train_data,
    emb_matrix,
    item_embeddings,
    load_two_tower,
    model_spec,
    new_two_tower,
    save_two_tower,
    spec_matches,
    train_two_tower,
)

log = logging.getLogger("dualrec.two_tower")

NAME = "two_tower"
INDEX_NAME = "user_index"


def reads(cfg, day: dt.date) -> dict[str, list[dt.date]]:
    """Upstream partitions read for ``day`` (checked by the runner before ``run``): the windows of :func:`train_model`."""
    c = cfg.two_tower
    window = date_range(day - dt.timedelta(days=c.train_window_days - 1), day)
    return {
        "users": [day],
        "interactions": window,
        "visits": window,
        "items": date_range(window[0] - dt.timedelta(days=c.item_lookback_days), day),
    }


def _content_dim(ctx: StageContext, items) -> int:
    d = ctx.lake.emb_dim()
    if d:
        return int(d)
    row = items.selectExpr("size(content_emb) AS d").limit(1).collect()
    if not row:
        raise LakeError("two_tower: cannot tell the content embedding dimension (no _lake.json emb_dim, no items)")
    return int(row[0]["d"])


def train_model(ctx: StageContext) -> tuple[Any, Any, dict[str, Any], dict[str, float]]:
    """Train (or warm-start and fine-tune) the model on the window; returns (model, user_feats_df, manifest,
    timings of the collects and the fit)."""

    from pyspark.sql import functions as F

    lake, day, cfg = ctx.lake, ctx.day, ctx.cfg.two_tower
    spark = ctx.spark
    window = date_range(day - dt.timedelta(days=cfg.train_window_days - 1), day)
    item_days = date_range(window[0] - dt.timedelta(days=cfg.item_lookback_days), day)

    users = lake.read_df(spark, "users", [day], with_dt=False)
    inter = lake.read_df(spark, "interactions", window)
    visits = lake.read_df(spark, "visits", window)
    items = lake.read_df(spark, "items", item_days)
    exclude = lake.read_df(spark, "items", [day]).select("item_id") if cfg.exclude_day_uploads else None
    content_dim = _content_dim(ctx, items)
    t0 = time.perf_counter()

    spec = model_spec(cfg, content_dim)
    warm_from = lake.latest_model_before(NAME, day) if cfg.warm_start else None
    model = None
    if warm_from is not None:
        prev = load_two_tower(lake, warm_from)
        if spec_matches(prev.spec, spec):
            model = prev
        else:
            log.info("two_tower: previous model dt=%s has another shape; cold start", warm_from)
            warm_from = None
    if model is None:
        model = new_two_tower(spec, ctx.seed("two_tower.init"))  # seeded: the initial weights were the global RNG's
    seen_end, seen_day = _seen(model.manifest) if (warm_from is not None and cfg.incremental) else (None, None)

    # explicit positives of the window, cached: they feed the features, the sample and the item set
    pos = T.positive_pairs(inter, exclude).join(items.select("item_id"), "item_id", "left_semi").cache()
    feats = T.user_features(users, visits, inter, items, day, content_dim, exclude, pairs=pos).cache()
    # the pairs trained on: all of the window, or (incremental warm start) those the previous model has not
    # seen plus a replayed sample of those it has (two_tower.replay_ratio x the new ones)
    seen_items = None  # the uploads the previous model's day left out of its training
    if seen_end is not None and cfg.exclude_day_uploads:
        seen_items = lake.read_df(spark, "items", [seen_day], with_dt=False)
    train_pos = pos if seen_end is None else T.new_pairs(pos, seen_items, seen_end)
    n_pairs = train_pos.count()
    n_window = n_pairs if train_pos is pos else pos.count()
    n_new, n_replay, replay = n_pairs, 0, None
    if seen_end is not None and (keep := T.replay_size(n_new, cfg.replay_ratio)) > 0:
        replay = T.replay_pairs(pos, seen_items, window[0], seen_end, keep, ctx.seed("two_tower.replay"),
                                total=n_window - n_new).cache()
        n_replay = replay.count()
        train_pos = train_pos.select(*pos.columns).unionByName(replay)
        n_pairs = n_new + n_replay
        log.info("two_tower %s: %d new pairs + %d replayed seen pairs (ratio %s) of %d in the window",
                 day, n_new, n_replay, cfg.replay_ratio, n_window)
    # every driver collect below is bounded by config, not by the lake: pairs and pool users are
    # sampled on the executors by a hash rank, trimmed exactly on the driver, and only the users
    # and items they touch come back. Each collected frame is put in a fixed order (Spark's row
    # order varies run to run; the normalisers, the data order and the sampling depend on it).
    sampled = T.sample_pairs(train_pos.select("user_id", "item_id", "day"), n_pairs, cfg.max_train_pairs,
                             ctx.seed("two_tower.subsample"))
    pair_tab = T.smallest_rank(sampled.toArrow(), cfg.max_train_pairs, ["user_id", "item_id"])
    pair_tab = pair_tab.sort_by([("day", "ascending"), ("user_id", "ascending"), ("item_id", "ascending")])
    pair_pd = pd.DataFrame({
        "user_id": pair_tab.column("user_id").to_numpy(),
        "item_id": pair_tab.column("item_id").to_numpy(),
        "day": pair_tab.column("day").cast(pa.int32()).to_numpy(),  # days since the epoch, as the pool keys
    })
    pos_items = T.item_features(items.join(sampled.select("item_id").distinct(), "item_id", "left_semi")).toArrow()
    pos_items = pos_items.sort_by("item_id")

    act_days = [d for d in window if lake.has_partition("activity_scores", d)]
    activity = lake.read_df(spark, "activity_scores", act_days) if act_days else None
    pool_df = T.negative_pool(activity, visits, window, act_days)
    if pool_df is not None and seen_end is not None and n_replay == 0:  # negatives come from the pairs' days' pools
        pool_df = pool_df.where(F.col("day") >= F.lit(min(seen_day, seen_end + dt.timedelta(days=1))))
    pools: dict[int, np.ndarray] = {}
    touched = sampled.select("user_id")
    pool_users = 0
    if pool_df is not None:
        pool_users = pool_df.select("user_id").distinct().count()
        pool_s = T.sample_pool(pool_df, pool_users, cfg.negative_pool_max_users, ctx.seed("two_tower.pool"))
        pool_tab = T.trim_pool(pool_s.toArrow(), cfg.negative_pool_max_users)
        p_day = pool_tab.column("day").cast(pa.int32()).to_numpy()
        p_user = pool_tab.column("user_id").to_numpy().astype(np.int64)
        order = np.lexsort((p_user, p_day))
        p_day, p_user = p_day[order], p_user[order]
        cuts = np.flatnonzero(np.diff(p_day)) + 1
        for d_users, d in zip(np.split(p_user, cuts), p_day[np.r_[0, cuts]] if len(p_day) else []):
            pools[int(d)] = d_users
        touched = touched.unionByName(pool_s.select("user_id"))
    feat_arrow = feats.join(touched.distinct(), "user_id", "left_semi").toArrow().sort_by("user_id")
    pos.unpersist()
    if replay is not None:
        replay.unpersist()
    t_collect = time.perf_counter() - t0

    kept: dict[str, Any] = {}
    if len(pair_pd) == 0 and warm_from is not None:
        # a quiet window (no explicit feedback): keep the previous model rather than stop the day
        reason = f"no positive pairs in the training window {window[0]}..{window[-1]}"
        log.warning("two_tower %s: %s; keeping the model of %s", day, reason, warm_from)
        prev_manifest = read_manifest(lake, NAME, warm_from)
        kept = {"kept_previous": True, "kept_from": prev_manifest.get("kept_from") or warm_from.isoformat(),
                "reason": reason}
        metrics = {"pairs": 0, "epoch_loss": []}
    else:
        data = build_train_data(feat_arrow, pos_items, pair_pd, pools, spec)
        metrics = train_two_tower(model, data, cfg, ctx.seed("two_tower.train"), fit_normalizers=warm_from is None)
    # timings go to the stage stats, not the manifest (artefacts of two identical runs are equal byte for byte)
    timings = {"seconds_collect": round(t_collect, 1), "seconds_fit": round(time.perf_counter() - t0 - t_collect, 1)}
    manifest = {
        **kept,
        "day": day.isoformat(),
        "training_window": [window[0].isoformat(), window[-1].isoformat()],
        "warm_start_from": warm_from.isoformat() if warm_from else None,
        # the pairs trained on this time: the whole window, or only the ones a warm start had not seen
        "trained_pairs_after": seen_end.isoformat() if seen_end is not None else None,
        "replay_ratio": cfg.replay_ratio if seen_end is not None else None,
        "metrics": {**metrics, "positive_pairs": int(n_window), "new_positive_pairs": int(n_new),
                    "replay_pairs": int(n_replay), "feature_users": feat_arrow.num_rows,
                    "negative_pool_users": int(min(pool_users, cfg.negative_pool_max_users)),
                    "negative_pool_days": len(pools)},
        "feature_config": {
            "user_features": list(spec.user_cat) + list(spec.user_num) + ["liked_emb", "user_id(hashed)"],
            "item_features": ["content_emb", "creator_id(hashed)", "category", "duration_ms", "item_id(hashed, dropout)"],
            "item_id_dropout": cfg.item_id_dropout,
            "exclude_day_uploads": cfg.exclude_day_uploads,
            "negatives_per_positive": cfg.negatives_per_positive,
            "in_batch_negatives": cfg.in_batch_negatives,
            "positives": "explicit feedback: " + ", ".join(EXPLICIT_FEEDBACKS),
        },
        "dims": {"embedding": spec.dim, "content": content_dim, "hidden": spec.hidden, "id_buckets": spec.id_buckets},
    }
    return model, feats, manifest, timings


def _seen(m: dict[str, Any]) -> tuple[dt.date, dt.date]:
    """(last day of the previous model's training window, the day whose uploads it left out).

    Followed through kept models: a kept model's manifest is its source's, so its window is the
    one the weights were trained on. ``m`` is the manifest the warm start loaded with the model."""
    end = dt.date.fromisoformat(m["training_window"][1])
    return end, dt.date.fromisoformat(m.get("kept_from") or m.get("day") or end.isoformat())


def build_user_index(ctx: StageContext, model, emb_df) -> dict[str, Any]:
    """FAISS index over available users' embeddings, recall measured against exact search."""
    from pyspark.sql import functions as F


    lake, day, cfg = ctx.lake, ctx.day, ctx.cfg.two_tower
    avail = lake.read_df(ctx.spark, "activity_scores", [day], with_dt=False).where(F.col("available")).select("user_id")
    tab = emb_df.join(avail, "user_id", "left_semi").orderBy("user_id").toArrow()
    ids = tab.column("user_id").to_numpy().astype(np.int64)
    vectors, _ = emb_matrix(tab.column("emb"), model.spec.dim)
    index = build_index(vectors, ids, cfg, seed=ctx.seed("user_index"))
    rng = np.random.default_rng(ctx.seed("user_index.recall"))
    new_items = lake.read_table("items", day) if lake.has_partition("items", day) else None
    if new_items is not None and new_items.num_rows:
        take = np.sort(rng.choice(new_items.num_rows, min(cfg.recall_queries, new_items.num_rows), replace=False))
        queries, qsource = item_embeddings(model, new_items.take(take)), "items_of_day"
    else:
        qsource = "random_users"
        queries = vectors[rng.choice(len(vectors), min(cfg.recall_queries, len(vectors)), replace=False)] if len(vectors) else vectors
    recall = tune_nprobe(index, vectors, queries, cfg.recall_k, cfg.recall_target) if len(vectors) else float("nan")
    extra = {
        "name": INDEX_NAME,
        "day": day.isoformat(),
        "model": f"two_tower/dt={day.isoformat()}",
        "recall_at_k": None if np.isnan(recall) else round(float(recall), 5),
        "recall_k": cfg.recall_k,
        "recall_queries": int(len(queries)),
        "recall_query_source": qsource,
    }
    with lake.publish_dir(Lake.model_rel(INDEX_NAME, day)) as staging:
        manifest = index.save(lake, staging, extra)
    return manifest


def empty_day(ctx: StageContext) -> dict | None:
    """A day without uploads: keep the previous model, publish empty embeddings and an empty index.

    Why: nothing is retrieved on such a day (retrieve and similarity publish empty outputs without
    reading the embeddings or the index), and training on the day only moves a model whose next
    fine-tune covers the day anyway (the window ends at the next day). Real logs have many such days
    (45 of MovieLens-100K's last 90). Returns None when the day must run normally: it has uploads,
    ``two_tower.train_without_uploads`` is set, or there is no previous model to keep."""
    lake, day, cfg = ctx.lake, ctx.day, ctx.cfg.two_tower
    if cfg.train_without_uploads or partition_rows(lake, "items", day) > 0:
        return None
    prev = lake.latest_model_before(NAME, day)
    if prev is None:
        return None
    t0 = time.perf_counter()
    model = load_two_tower(lake, prev)
    keep_previous(lake, NAME, day, prev, f"no uploads on {day}: nothing to retrieve")
    write_empty(lake, "user_embeddings", day)
    empty = build_index(np.zeros((0, model.spec.dim), np.float32), np.zeros(0, np.int64), cfg,
                        seed=ctx.seed("user_index"))
    with lake.publish_dir(Lake.model_rel(INDEX_NAME, day)) as staging:
        index_manifest = empty.save(lake, staging, {
            "name": INDEX_NAME, "day": day.isoformat(), "model": f"two_tower/dt={day.isoformat()}",
            "recall_at_k": None, "recall_k": cfg.recall_k, "recall_queries": 0,
            "recall_query_source": "none: no uploads on the day",
        })
    log.info("two_tower %s: no uploads; kept the model of %s, empty embeddings and index published", day, prev)
    return {"seconds_train": 0.0, "kept_previous": str(prev), "pairs": 0, "final_loss": None, "users_embedded": 0,
            "feature_users": 0, "index_kind": index_manifest["kind"], "index_n": index_manifest["n"],
            "index_recall": None, "seconds_total": round(time.perf_counter() - t0, 3)}


def run(ctx: StageContext) -> dict:
    """Train the two-tower model, write user_embeddings for every user and the user index of available users."""

    if (stats := empty_day(ctx)) is not None:
        return stats
    lake, day, cfg = ctx.lake, ctx.day, ctx.cfg.two_tower
    t0 = time.perf_counter()
    model, feats, manifest, timings = train_model(ctx)
    with lake.publish_dir(Lake.model_rel(NAME, day)) as staging:
        save_two_tower(model, lake, staging, manifest)
    t1 = time.perf_counter()
    emb = T.embed_users(ctx.spark, feats, model, cfg.infer_batch_rows)
    lake.write_df(emb, "user_embeddings", day, coalesce=None)
    feats.unpersist()
    t2 = time.perf_counter()
    emb_df = lake.read_df(ctx.spark, "user_embeddings", [day], with_dt=False)
    index_manifest = build_user_index(ctx, model, emb_df)
    t3 = time.perf_counter()
    return {
        "seconds_train": round(t1 - t0, 1),
        **timings,
        "seconds_embed": round(t2 - t1, 1),
        "seconds_index": round(t3 - t2, 1),
        "pairs": manifest["metrics"]["pairs"],
        "final_loss": (manifest["metrics"]["epoch_loss"] or [None])[-1],
        "users_embedded": sum(pq.ParquetFile(f, filesystem=lake.fs).metadata.num_rows
                              for f in lake.data_files("user_embeddings", day)),
        "feature_users": manifest["metrics"].get("feature_users"),
        "index_kind": index_manifest["kind"],
        "index_n": index_manifest["n"],
        "index_recall": index_manifest["recall_at_k"],
    }

