"""next_user channel: generative next-user retrieval (papers/next-user-retrieval.txt, SPEC 2.4).

For each new item the model of :mod:`models.next_user` reads the item's prompts (content,
creator, category, duration; the item ID once the item has a positive user) and its positive users
before the item's batch cutoff (H^I, chronological, at most ``next_user.max_seq``; zero is fine),
generates a next-user embedding in the two-tower user space and searches the FAISS index of the
available users (``_models/user_index``). Score = the dot product.

Training (``train``, run by the ``similarity`` stage when the channel is enabled, see the
registry): warm items uploaded in [D-W, D-1], each with its positive users up to D in
chronological order (the H^I definition of :func:`dualrec.similarity.item_positive_users`) and
the users it was exposed to without explicit feedback (negatives of the CE loss). Targets are
``user_embeddings`` dt=D. Items uploaded on D are never trained on. Warm-started from the latest
earlier artefact of the same shape; published as ``_models/next_user/dt=D`` with a manifest.

Not enabled by default: add it with ``retrieval.channels``; see BENCHMARKS.md for what it buys.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa

from dualrec.channels.base import Channel, ChannelSpec, driver_candidates, warm_start_model, with_cutoff
from dualrec.config import EXPLICIT_FEEDBACKS
from dualrec.lake import Lake, date_range

log = logging.getLogger(__name__)

NAME = "next_user"
_ITEM_COLS = ("item_id", "creator_id", "category", "duration_ms", "content_emb")


# ---------------------------------------------------------------------- Spark -> arrays (pure)
def positive_sequences(positives_df, items_df, cap: int) -> dict[int, np.ndarray]:
    """item_id -> its positive user ids in chronological order (first positive, ties by user_id),
    at most the ``cap`` most recent. ``positives_df``: (item_id, user_id, ts); only rows of
    ``items_df`` (item_id) with ``ts < cutoff`` when ``items_df`` has a ``cutoff`` column."""
    from pyspark.sql import functions as F

    pos = positives_df.select("item_id", "user_id", "ts").join(items_df.select(*[c for c in ("item_id", "cutoff") if c in items_df.columns]), "item_id")
    if "cutoff" in items_df.columns:
        pos = pos.where(F.col("ts") < F.col("cutoff"))
    rows = (
        pos.groupBy("item_id")
        .agg(F.sort_array(F.collect_list(F.struct("ts", "user_id"))).alias("s"))
        .select("item_id", F.slice(F.col("s.user_id"), F.greatest(F.lit(1), F.size("s") - cap + 1), cap).alias("users"))
        .toArrow()
    )
    ids = rows.column("item_id").to_numpy()
    users = rows.column("users").to_pylist()
    return {int(i): np.asarray(u, np.int64) for i, u in zip(ids, users)}


def exposed_negatives(interactions_df, items_df, cap: int) -> dict[int, np.ndarray]:
    """item_id -> up to ``cap`` users exposed to the item without any explicit feedback on it
    (a deterministic pseudo-random subset: lowest hash of (item, user))."""
    from pyspark.sql import functions as F

    flags = [F.col(f"is_{f}").cast("int") for f in EXPLICIT_FEEDBACKS]
    n = flags[0]
    for f in flags[1:]:
        n = n + f
    per = (
        interactions_df.join(items_df.select("item_id"), "item_id", "left_semi")
        .groupBy("item_id", "user_id").agg(F.max(n).alias("n"))
        .where(F.col("n") == 0)
        .withColumn("h", F.xxhash64("item_id", "user_id"))
        .groupBy("item_id")
        .agg(F.slice(F.sort_array(F.collect_list(F.struct("h", "user_id"))), 1, cap).alias("s"))
        .select("item_id", F.col("s.user_id").alias("users"))
        .toArrow()
    )
    return {int(i): np.asarray(u, np.int64) for i, u in zip(per.column("item_id").to_numpy(), per.column("users").to_pylist())}


def item_arrays(items: pa.Table, spec) -> dict[str, np.ndarray]:
    """Prompt inputs of an ``items``-table slice (order kept)."""
    from models.next_user import encode_items
    from models.two_tower import emb_matrix

    content, _ = emb_matrix(items.column("content_emb"), spec.content_dim)
    return encode_items(items.column("item_id").to_numpy(), items.column("creator_id").to_numpy(),
                        items.column("category").to_numpy(), items.column("duration_ms").fill_null(0).to_numpy(), content, spec)


def user_table(emb_df, only_users_df=None):
    """:class:`models.next_user.UserTable` from ``user_embeddings`` (optionally only some users)."""
    from models.next_user import UserTable
    from models.two_tower import emb_matrix

    if only_users_df is not None:
        emb_df = emb_df.join(only_users_df.select("user_id").distinct(), "user_id", "left_semi")
    t = emb_df.select("user_id", "emb").toArrow()
    dim = len(t.column("emb")[0]) if t.num_rows else 0
    vecs, _ = emb_matrix(t.column("emb"), dim) if t.num_rows else (np.zeros((0, 0), np.float32), None)
    return UserTable.build(t.column("user_id").to_numpy(), vecs)


def training_inputs(spark, lake: Lake, day: dt.date, cfg, seed: int = 0) -> dict[str, Any]:
    """Warm items uploaded in [D-W, D-1] with their positive sequences (up to D) and exposed negatives."""
    from dualrec.similarity import item_positive_users

    ncfg = cfg.next_user
    item_days = date_range(day - dt.timedelta(days=ncfg.train_window_days), day - dt.timedelta(days=1))
    inter_days = date_range(item_days[0], day)
    items = lake.read_df(spark, "items", item_days, with_dt=False).select(*_ITEM_COLS)
    inter = lake.read_df(spark, "interactions", inter_days, with_dt=False)
    pos = item_positive_users(inter, items, 4 * ncfg.max_seq)  # the most recent 4*max_seq positives per item
    seqs = positive_sequences(pos, items, 4 * ncfg.max_seq)
    seqs = {i: s for i, s in seqs.items() if len(s) >= ncfg.min_positives}
    if len(seqs) > ncfg.max_train_items:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(np.array(sorted(seqs)), ncfg.max_train_items, replace=False))
        seqs = {int(i): seqs[int(i)] for i in keep}
    negs = exposed_negatives(inter, items, 4 * ncfg.max_exposed_negatives)
    ids = np.array(sorted(seqs), np.int64)
    item_t = items.where(items.item_id.isin([int(i) for i in ids])).toArrow() if len(ids) else None
    if item_t is not None:
        order = np.argsort(item_t.column("item_id").to_numpy(), kind="stable")
        item_t = item_t.take(order)
    users = user_table(lake.read_df(spark, "user_embeddings", [day], with_dt=False))
    return {"items": item_t, "seqs": [seqs[int(i)] for i in ids], "negs": [negs.get(int(i), np.zeros(0, np.int64)) for i in ids],
            "users": users, "window": [item_days[0].isoformat(), item_days[-1].isoformat()]}


def fit(inputs: dict[str, Any], cfg, seed: int, model=None, content_dim: int | None = None, **spec_over: Any):
    """Train a (new or warm-started) model on :func:`training_inputs`; returns (model, metrics)."""
    from models.next_user import NextUserModel, NextUserSpec, build_sequence_data, train_next_user

    users = inputs["users"]
    cdim = content_dim or (len(inputs["items"].column("content_emb")[0]) if inputs["items"] is not None and inputs["items"].num_rows else 1)
    spec = NextUserSpec.from_cfg(cfg.next_user, users.emb.shape[1] if users.emb.ndim == 2 else 1, cdim, **spec_over)
    warm = model is not None
    if model is None:
        import torch

        torch.manual_seed(seed)  # the initial weights too: reruns and ablation variants start alike
        model = NextUserModel(spec)
    if inputs["items"] is None or not len(inputs["seqs"]):
        return model, {"items": 0, "samples_per_epoch": 0, "epoch_loss": []}
    data = build_sequence_data(item_arrays(inputs["items"], model.spec), inputs["seqs"], inputs["negs"], users,
                               cfg.next_user.min_positives)
    return model, train_next_user(model, data, cfg.next_user, seed, fit_normalizers=not warm)


def train(ctx) -> dict[str, Any]:
    """Trainer declared in :data:`CHANNEL`: train and publish ``_models/next_user/dt=D``."""

    from models.next_user import NextUserSpec, load_next_user, save_next_user

    lake, day, cfg = ctx.lake, ctx.day, ctx.cfg
    t0 = time.perf_counter()
    inputs = training_inputs(ctx.spark, lake, day, cfg, ctx.seed("next_user.items"))
    users = inputs["users"]
    cdim = lake.emb_dim() or (len(inputs["items"].column("content_emb")[0]) if inputs["items"] is not None else 1)
    spec = NextUserSpec.from_cfg(cfg.next_user, users.emb.shape[1], cdim)
    model, warm_from = warm_start_model(lake, NAME, day, cfg.next_user.warm_start, load_next_user, spec)
    model, metrics = fit(inputs, cfg, ctx.seed("next_user.train"), model, cdim)
    manifest = {
        "day": day.isoformat(),
        "training_items_uploaded": inputs["window"],
        "warm_start_from": warm_from.isoformat() if warm_from else None,
        "metrics": metrics,
        "targets": f"user_embeddings/dt={day.isoformat()} (two-tower user space)",
        "losses": {k: getattr(cfg.next_user, k) for k in ("loss_contrastive", "loss_ce", "loss_aux", "temperature")},
        "positives": "explicit feedback: " + ", ".join(EXPLICIT_FEEDBACKS),
    }
    with lake.publish_dir(Lake.model_rel(NAME, day)) as staging:
        save_next_user(model, lake, staging, manifest)
    return {"items": metrics.get("items", 0), "final_loss": (metrics.get("epoch_loss") or [None])[-1],
            "warm_start_from": manifest["warm_start_from"], "seconds": round(time.perf_counter() - t0, 1)}


# ---------------------------------------------------------------------- serving
def serving_inputs(ctx, items_df) -> dict[str, Any]:
    """D's items (ordered by item_id) with their positive users before the batch cutoff."""
    lake, day = ctx.lake, ctx.day
    items = with_cutoff(items_df, day, ctx.cfg.dispatch.batches_per_day)
    pos = lake.read_df(ctx.spark, "item_positive_users", [day], with_dt=False)
    seqs = positive_sequences(pos, items, ctx.cfg.next_user.max_seq)
    item_t = items.select(*_ITEM_COLS).orderBy("item_id").toArrow()
    ids = item_t.column("item_id").to_numpy()
    seq_users = ctx.spark.createDataFrame(
        pa.table({"user_id": pa.array(np.unique(np.concatenate([*seqs.values(), np.zeros(0, np.int64)])), pa.int64())}))
    users = user_table(lake.read_df(ctx.spark, "user_embeddings", [day], with_dt=False), seq_users)
    return {"items": item_t, "seqs": [seqs.get(int(i), np.zeros(0, np.int64)) for i in ids], "users": users}


def next_user_search(model, index, inputs: dict[str, Any], k: int, batch: int = 1024) -> pa.Table:
    """(item_id, user_id, score) of the top-k available users for each generated next-user embedding."""
    from dualrec.channels.two_tower import search_candidates
    from models.next_user import generate

    items = inputs["items"]
    if items.num_rows == 0:
        return search_candidates(np.zeros(0, np.int64), np.zeros((0, index.dim), np.float32), index.search, k)
    emb = generate(model, item_arrays(items, model.spec), inputs["seqs"], inputs["users"], batch)
    return search_candidates(items.column("item_id").to_numpy(), emb, index.search, k, batch)


class NextUserChannel(Channel):
    name = NAME

    def retrieve(self, ctx, items_df):
        from models.ann import load_index
        from models.next_user import load_next_user

        model = load_next_user(ctx.lake, ctx.day)
        index = load_index(ctx.lake, "user_index", ctx.day)
        table = next_user_search(model, index, serving_inputs(ctx, items_df), self.k(ctx.cfg), ctx.cfg.next_user.infer_batch)
        log.info("next_user: %d candidates for %d items", table.num_rows, len(set(table.column("item_id").to_pylist())))
        return driver_candidates(ctx, table)


CHANNEL = ChannelSpec(
    name=NAME,
    factory=NextUserChannel,
    k=300,
    enabled=False,
    tables=("item_positive_users", "user_embeddings"),
    artifacts=("next_user", "user_index"),
    trainer="dualrec.channels.next_user:train",
    trained_in="similarity",
    order=3,
    doc="generative next-user transformer over the item's positive users with prefix prompts",
)
