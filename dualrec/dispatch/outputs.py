"""Dispatch outputs (paper 4.2.3): match_sets ranks, the per-user D_u rollup, the Eq. 14 boost."""

from __future__ import annotations

from typing import Any

import numpy as np
from pyspark.sql import Window
from pyspark.sql import functions as F

from dualrec.dispatch.kernels import group_rank

def rank_in_item_arrays(item_ids: Any, user_ids: Any, g: Any, mask: np.ndarray) -> np.ndarray:
    """1-based rank of each selected edge within its item (g desc, user_id asc); 0 where not selected."""
    item_ids = np.asarray(item_ids, dtype=np.int64)
    user_ids = np.asarray(user_ids, dtype=np.int64)
    g = np.asarray(g, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros(len(g), dtype=np.int32)
    if len(g) == 0:
        return out
    order = np.lexsort((user_ids, -g, item_ids))
    r = group_rank(item_ids[order], mask[order]) + 1
    out[order] = np.where(mask[order], r, 0)
    return out



def add_rank_in_item(selected_df):
    """match_sets columns: rank_in_item = 1-based position of the user in the item's D (g desc, user_id)."""
    w = Window.partitionBy("item_id").orderBy(F.col("g").desc(), F.col("user_id").asc())
    return selected_df.select(
        "batch", "user_id", "item_id", "g", F.row_number().over(w).cast("int").alias("rank_in_item"), "channels"
    )


def user_match_sets_df(match_sets_df):
    """D_u rollup: items sorted by g desc (ties by item_id)."""
    s = F.sort_array(F.collect_list(F.struct((-F.col("g")).alias("k"), F.col("item_id"), F.col("g"))))
    return match_sets_df.groupBy("user_id").agg(
        # coalesce makes the struct fields non-nullable, as the contract says (Spark will not cast that way)
        F.transform(
            s,
            lambda e: F.struct(
                F.coalesce(e["item_id"], F.lit(0).cast("long")).alias("item_id"),
                F.coalesce(e["g"], F.lit(0.0).cast("float")).alias("g"),
            ),
        ).alias("items")
    )



def apply_boost(candidates_df, match_sets_df, lam: float):
    """f'_ui = f_ui + lam * g_ui for (u, i) in D_u, f'_ui = f_ui otherwise (paper Eq. 14).

    ``candidates_df``: the user-side candidate table with at least (user_id, item_id, f); every
    column and row is kept and ``f_prime`` (double) is added. ``match_sets_df``: ``match_sets``
    rows (user_id, item_id, g) or the ``user_match_sets`` rollup (user_id, items).
    """
    missing = [c for c in ("user_id", "item_id", "f") if c not in candidates_df.columns]
    if missing:
        raise ValueError(f"candidate table lacks column(s) {', '.join(missing)}")
    if "f_prime" in candidates_df.columns:
        raise ValueError("candidate table already has an f_prime column")
    if "items" in match_sets_df.columns and "item_id" not in match_sets_df.columns:
        pairs = match_sets_df.select("user_id", F.explode("items").alias("_e")).select(
            "user_id", F.col("_e.item_id").alias("item_id"), F.col("_e.g").alias("g")
        )
    else:
        pairs = match_sets_df.select("user_id", "item_id", "g")
    pairs = pairs.groupBy("user_id", "item_id").agg(F.max("g").alias("_boost_g"))
    out = candidates_df.join(pairs, ["user_id", "item_id"], "left")
    out = out.withColumn(
        "f_prime", F.col("f").cast("double") + F.lit(float(lam)) * F.coalesce(F.col("_boost_g").cast("double"), F.lit(0.0))
    )
    return out.select(*candidates_df.columns, "f_prime")
