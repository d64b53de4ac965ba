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

from dualrec import two_tower as T
from dualrec.artifacts import read_manifest  # noqa: E402
from dualrec.config import EXPLICIT_FEEDBACKS  # noqa: E402
from dualrec.lake import Lake, LakeError, date_range  # noqa: E402
from dualrec.stages.base import StageContext  # noqa: E402
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


def train_model(ctx: StageContext) -> tuple[Any, Any, dict[str, Any]]:
    """Train (or warm-start and fine-tune) the model on the window; returns (model, user_feats_df, manifest)."""

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

    feats = T.user_features(users, visits, inter, items, day, content_dim, exclude).cache()
    pairs = T.positive_pairs(inter, exclude).join(items.select("item_id"), "item_id", "left_semi")
    # every collected frame is put in a fixed order: Spark's row order varies run to run, and the
    # subsample, the normalisers (float means) and the data order of training depend on it
    pair_pd = pairs.select("user_id", "item_id", "day").toPandas()
    pair_pd = pair_pd.sort_values(["day", "user_id", "item_id"], kind="stable").reset_index(drop=True)
    if len(pair_pd) > cfg.max_train_pairs:
        pair_pd = pair_pd.sample(n=cfg.max_train_pairs, random_state=ctx.seed("two_tower.subsample")).sort_index()
    pair_pd = pair_pd.sort_values(["day", "user_id", "item_id"], kind="stable").reset_index(drop=True)
    pos_items = T.item_features(items.join(pairs.select("item_id").distinct(), "item_id", "left_semi")).toArrow()
    pos_items = pos_items.sort_by("item_id")

    act_days = [d for d in window if lake.has_partition("activity_scores", d)]
    activity = lake.read_df(spark, "activity_scores", act_days) if act_days else None
    pool_df = T.negative_pool(activity, visits, window)
    pools: dict[dt.date, np.ndarray] = {}
    if pool_df is not None:
        pool_pd = pool_df.toPandas()
        for d, g in pool_pd.groupby("day"):
            pools[d] = np.sort(g["user_id"].to_numpy(np.int64))
    feat_arrow = feats.toArrow().sort_by("user_id")

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
    manifest = {
        **kept,
        "day": day.isoformat(),
        "training_window": [window[0].isoformat(), window[-1].isoformat()],
        "warm_start_from": warm_from.isoformat() if warm_from else None,
        "metrics": {**metrics, "users": feat_arrow.num_rows, "negative_pool_days": len(pools)},
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
    return model, feats, manifest


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


def run(ctx: StageContext) -> dict:
    """Train the two-tower model, write user_embeddings for every user and the user index of available users."""

    lake, day, cfg = ctx.lake, ctx.day, ctx.cfg.two_tower
    t0 = time.perf_counter()
    model, feats, manifest = train_model(ctx)
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
        "seconds_embed": round(t2 - t1, 1),
        "seconds_index": round(t3 - t2, 1),
        "pairs": manifest["metrics"]["pairs"],
        "final_loss": (manifest["metrics"]["epoch_loss"] or [None])[-1],
        "users_embedded": manifest["metrics"]["users"],
        "index_kind": index_manifest["kind"],
        "index_n": index_manifest["n"],
        "index_recall": index_manifest["recall_at_k"],
    }

