"""Stage similarity for day D: item content index + S^I, H^I and S^U.

Reads (all dt <= D): items dt in [D-N+1, D] (N = item_window_days), interactions dt in
[D-P+1, D] (P = positives_window_days), user_embeddings dt=D and ``_models/user_index/dt=D``
(written by the two_tower stage, which must run first).
Writes: ``_models/item_index/dt=D`` (FAISS over normalised content of the window's items, with
the recall measured against exact search), tables ``item_similar``, ``item_positive_users`` and
``user_similar`` dt=D.

    spark-submit jobs/similarity.py --lake LAKE --date D
"""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np

from dualrec.channels.base import channel_names, trainers_for  # noqa: E402
from dualrec.lake import Lake, date_range  # noqa: E402
from dualrec.similarity import (
    item_positive_users,
    l2_normalize,
    similar_items,
    similar_users,
)
from dualrec.stages.base import StageContext, partition_rows, write_empty  # noqa: E402
from models.ann import build_index, load_index, tune_nprobe
from models.two_tower import emb_matrix

log = logging.getLogger("dualrec.similarity")

NAME = "similarity"
ITEM_INDEX = "item_index"


def reads(cfg, day: dt.date) -> dict[str, list[dt.date]]:
    """Upstream partitions read for ``day`` (checked by the runner before ``run``)."""
    s = cfg.similarity
    return {
        "items": date_range(day - dt.timedelta(days=s.item_window_days - 1), day),
        "interactions": date_range(day - dt.timedelta(days=s.positives_window_days - 1), day),
    }


def build_item_index(ctx: StageContext):
    """Content index over the window's items; returns (index, upload_us, day_items arrow table)."""

    lake, day, scfg, tcfg = ctx.lake, ctx.day, ctx.cfg.similarity, ctx.cfg.two_tower
    window = date_range(day - dt.timedelta(days=scfg.item_window_days - 1), day)
    items = lake.read_tables("items", window, columns=["item_id", "upload_ts", "content_emb"])
    items = items.sort_by([("upload_ts", "ascending"), ("item_id", "ascending")])
    ids = items.column("item_id").to_numpy().astype(np.int64)
    dim = lake.emb_dim() or (len(items.column("content_emb")[0]) if items.num_rows else 1)
    vecs, _ = emb_matrix(items.column("content_emb"), int(dim))
    vecs = l2_normalize(vecs)
    upload_us = items.column("upload_ts").cast("int64").to_numpy()
    index = build_index(vecs, ids, tcfg, seed=ctx.seed("item_index"))
    is_day = (items.column("dt").to_numpy(zero_copy_only=False) == np.datetime64(day)) if items.num_rows else np.zeros(0, bool)
    rng = np.random.default_rng(ctx.seed("item_index.recall"))
    cand = np.flatnonzero(is_day) if is_day.any() else np.arange(len(ids))
    q = vecs[np.sort(rng.choice(cand, min(tcfg.recall_queries, len(cand)), replace=False))] if len(cand) else vecs[:0]
    k = min(scfg.item_k + 1, max(len(ids), 1))
    recall = tune_nprobe(index, vecs, q, k, tcfg.recall_target) if len(q) else float("nan")
    extra = {
        "name": ITEM_INDEX,
        "day": day.isoformat(),
        "window": [window[0].isoformat(), window[-1].isoformat()],
        "normalized": True,
        "recall_at_k": None if np.isnan(recall) else round(float(recall), 5),
        "recall_k": int(k),
        "recall_queries": int(len(q)),
    }
    with lake.publish_dir(Lake.model_rel(ITEM_INDEX, day)) as staging:
        index.save(lake, staging, extra)
    return index, upload_us, vecs, ids, is_day


def write_item_similar(ctx: StageContext):
    """S^I alone: build the item content index and publish ``item_similar`` dt=D.

    Why separate: the ranker's similar-items features (EF) need S^I of every upload day of its
    training window, while H^I and S^U need the day's two-tower user index; the ranking ablation
    backfills S^I for past days without retraining the two-tower model.
    Returns (index, upload_us, vecs, ids, is_day, item_similar table)."""
    index, upload_us, vecs, ids, is_day = build_item_index(ctx)
    sim = similar_items(index, upload_us, ids[is_day], vecs[is_day], upload_us[is_day], ctx.cfg.similarity.item_k)
    ctx.lake.write_table("item_similar", ctx.day, sim)
    return index, upload_us, vecs, ids, is_day, sim


def run(ctx: StageContext) -> dict:
    """Build the item content index and write item_similar, item_positive_users and user_similar for D."""
    from pyspark.sql import functions as F


    lake, day, scfg = ctx.lake, ctx.day, ctx.cfg.similarity
    if partition_rows(lake, "items", day) == 0:
        # a day without uploads: S^I, H^I and S^U only serve retrieval of the day's items, so valid empty
        # partitions (no index, no Spark job) are the whole output
        for t in ("item_similar", "item_positive_users", "user_similar"):
            write_empty(lake, t, day)
        log.info("similarity %s: no uploads, empty outputs published", day)
        return {"window_items": None, "day_items": 0, "item_similar_rows": 0, "user_similar_rows": 0, "su_query_users": 0}
    spark = ctx.spark
    user_index = load_index(lake, "user_index", day)  # fails clearly before anything is published

    # S^I
    index, upload_us, vecs, ids, is_day, sim = write_item_similar(ctx)

    # H^I
    window = date_range(day - dt.timedelta(days=scfg.item_window_days - 1), day)
    pos_days = date_range(day - dt.timedelta(days=scfg.positives_window_days - 1), day)
    items = lake.read_df(spark, "items", window, with_dt=False).select("item_id")
    inter = lake.read_df(spark, "interactions", pos_days, with_dt=False)
    hi = item_positive_users(inter, items, scfg.positives_cap)
    lake.write_df(hi, "item_positive_users", day, coalesce=None)

    # S^U for every user in H^I
    hi_users = lake.read_df(spark, "item_positive_users", [day], with_dt=False).select("user_id").distinct()
    emb = (
        lake.read_df(spark, "user_embeddings", [day], with_dt=False)
        .join(hi_users, "user_id", "left_semi")
        .orderBy(F.col("user_id"))
        .toArrow()
    )
    qids = emb.column("user_id").to_numpy().astype(np.int64)
    qvecs, _ = emb_matrix(emb.column("emb"), user_index.dim)
    su = similar_users(user_index, qids, qvecs, scfg.user_k)
    lake.write_table("user_similar", day, su)
    trained = {f"{n}_training": train(ctx) for n, train in trainers_for(NAME, channel_names(ctx.cfg))}
    return {
        **trained,
        "window_items": int(len(ids)),
        "day_items": int(is_day.sum()),
        "item_index_kind": index.meta.get("kind"),
        "item_index_recall": index.meta.get("recall_at_k"),
        "item_similar_rows": sim.num_rows,
        "user_similar_rows": su.num_rows,
        "su_query_users": int(len(qids)),
    }

