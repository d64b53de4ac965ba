"""Similarity services of paper 3.2.1: S^I (similar items), H^I (positive users), S^U (similar users).

- S^I: content-embedding neighbours among recent items. Point-in-time: an item may only list
  items that already existed when it was uploaded (upload_ts <= its own), never itself.
- H^I: users with explicit feedback on an item, with the time of their FIRST positive and the
  number of explicit feedback types in that first positive interaction (so a consumer filtering
  ``ts < cutoff`` sees nothing from after its cutoff, weight included).
- S^U: nearest available users (user ANN index) of a user by two-tower embedding, self excluded.

NumPy/FAISS functions work on arrays (driver side, batched); H^I is a Spark transform.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow as pa

from dualrec.config import EXPLICIT_FEEDBACKS
from models.ann import AnnIndex

log = logging.getLogger(__name__)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero) so inner product = cosine."""
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


def similar_items(
    index: AnnIndex,
    upload_us: np.ndarray,
    query_ids: np.ndarray,
    query_vecs: np.ndarray,
    query_upload_us: np.ndarray,
    k: int,
    batch: int = 8192,
) -> pa.Table:
    """Top-k content neighbours of each query item, excluding itself and later uploads.

    ``upload_us[j]`` is the upload time (µs) of the index's j-th vector (``index.ids[j]``). Rows
    short of k after filtering are searched again with a doubled depth until k are found or
    the whole index was scanned, so filtering never silently truncates a list.
    """
    pos_of = pd.Index(index.ids)
    out_q, out_s, out_sim = [], [], []
    for s in range(0, len(query_ids), batch):
        qi = np.asarray(query_ids[s : s + batch], np.int64)
        qv = query_vecs[s : s + batch]
        qt = np.asarray(query_upload_us[s : s + batch], np.int64)
        todo = np.arange(len(qi))
        depth = min(index.n, k + 1 + max(8, k // 2))
        while len(todo):
            scores, ids = index.search(qv[todo], depth)
            pos = pos_of.get_indexer(ids.reshape(-1)).reshape(ids.shape)
            ok = (ids >= 0) & (ids != qi[todo][:, None])
            ok &= np.where(pos >= 0, upload_us[np.maximum(pos, 0)], np.iinfo(np.int64).max) <= qt[todo][:, None]
            enough = (ok.sum(1) >= k) | (depth >= index.n)
            for r in np.flatnonzero(enough):
                sel = np.flatnonzero(ok[r])[:k]
                out_q.append(np.full(len(sel), qi[todo[r]], np.int64))
                out_s.append(ids[r, sel])
                out_sim.append(scores[r, sel])
            todo = todo[~enough]
            depth = min(index.n, depth * 2)
    cat = lambda parts, t: np.concatenate(parts).astype(t) if parts else np.zeros(0, t)  # noqa: E731
    return pa.table(
        {
            "item_id": cat(out_q, np.int64),
            "similar_item_id": cat(out_s, np.int64),
            "sim": cat(out_sim, np.float32),
        }
    )


def similar_users(index: AnnIndex, query_ids: np.ndarray, query_vecs: np.ndarray, k: int, batch: int = 8192) -> pa.Table:
    """Top-k available users (the user index) of each query user, the user itself excluded."""
    out_q, out_s, out_sim = [], [], []
    depth = min(index.n, k + 1)
    for s in range(0, len(query_ids), batch):
        qi = np.asarray(query_ids[s : s + batch], np.int64)
        scores, ids = index.search(query_vecs[s : s + batch], depth)
        ok = (ids >= 0) & (ids != qi[:, None])
        ok &= np.cumsum(ok, axis=1) <= k  # keep the first k valid per row
        r, c = np.nonzero(ok)
        out_q.append(qi[r])
        out_s.append(ids[r, c])
        out_sim.append(scores[r, c])
    cat = lambda parts, t: np.concatenate(parts).astype(t) if parts else np.zeros(0, t)  # noqa: E731
    return pa.table(
        {"user_id": cat(out_q, np.int64), "similar_user_id": cat(out_s, np.int64), "sim": cat(out_sim, np.float32)}
    )


def item_positive_users(interactions, items, cap: int):
    """H^I: (item_id, user_id, ts, weight) for ``items`` from ``interactions`` (already <= D).

    ts = time of the user's first explicit positive on the item; weight = number of explicit
    feedback types in that first positive interaction. Per item the ``cap`` most recent
    positive users are kept (ties by user_id for determinism).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    flags = [F.col(f"is_{f}").cast("int") for f in EXPLICIT_FEEDBACKS]
    n_types = flags[0]
    for f in flags[1:]:
        n_types = n_types + f
    pos = (
        interactions.join(items.select("item_id").distinct(), "item_id", "left_semi")
        .select("item_id", "user_id", "ts", n_types.alias("n_types"))
        .where(F.col("n_types") > 0)
    )
    first = Window.partitionBy("item_id", "user_id").orderBy(F.col("ts").asc(), F.col("n_types").desc())
    pos = pos.withColumn("_r", F.row_number().over(first)).where(F.col("_r") == 1)
    recent = Window.partitionBy("item_id").orderBy(F.col("ts").desc(), F.col("user_id").asc())
    pos = pos.withColumn("_k", F.row_number().over(recent)).where(F.col("_k") <= cap)
    return pos.select("item_id", "user_id", "ts", F.col("n_types").cast("float").alias("weight"))
