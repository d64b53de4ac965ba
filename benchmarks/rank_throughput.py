"""Ranker scoring throughput (pairs/s): the model alone (featurize + predict on the driver; and
the stage's path, per-user/per-item tables gathered by ``featurize_pairs`` or run through the
per-side first layer ``pair_scorer``) and inside Spark (``score_in_spark`` on joined feature rows,
and ``score_candidates``, the rank stage's own mapInArrow over (batch, item, user, channels)).

Medium-sized by default: ~50k uploads/day x a few hundred candidates is 10M+ pairs per day; we
score ``--pairs`` synthetic rows (default 2M) and report pairs/s, so the daily cost extrapolates.

    python benchmarks/rank_throughput.py --pairs 2000000 [--driver-only]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dualrec.config import DualRecConfig  # noqa: E402
from models.ranker import (  # noqa: E402
    RankerSpec,
    featurize,
    featurize_pairs,
    input_columns,
    item_table_columns,
    new_model,
    pair_scorer,
    predict,
    predict_pairs,
    side_arrays,
    user_table_columns,
)


def synthetic_rows(n: int, p: int, seed: int = 0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    df = pd.DataFrame({c: rng.normal(size=n).astype(np.float32) for c in input_columns(p)})
    for c in ("user_id", "item_id", "creator_id", "category", "age_bucket", "gender", "region", "device"):
        df[c] = rng.integers(0, 1_000_000, n)
    df["theta"] = rng.uniform(0.01, 0.2, n).astype(np.float32)
    return df


def side_tables(spec, users: int = 10_000, items: int = 1_000, seed: int = 1):
    """Synthetic per-user / per-item feature tables (Arrow) of a small day's size."""
    import pandas as pd
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    u = pd.DataFrame({c: rng.normal(size=users).astype(np.float32) for c in user_table_columns(spec.profile_dim)})
    u["user_id"] = rng.permutation(users) * 7
    for c in ("age_bucket", "gender", "region", "device"):
        u[c] = rng.integers(0, 9, users)
    it = pd.DataFrame({c: rng.normal(size=items).astype(np.float32) for c in item_table_columns(spec.profile_dim)})
    it["item_id"] = rng.permutation(items) * 3
    it["creator_id"], it["category"] = rng.integers(0, 500, items), rng.integers(0, 20, items)
    u["u_n_explicit"], u["u_n_imp"] = rng.integers(0, 5, users).astype(float), rng.integers(5, 50, users).astype(float)
    return pa.Table.from_pandas(u), pa.Table.from_pandas(it)


def side_tables_throughput(spec, model, n: int, batch_rows: int, chunk: int = 10_000) -> dict:
    """CPU pairs/s of the rank stage's scoring loop per Arrow-sized chunk, from per-user /
    per-item tables of a small day's size: the per-pair feature path (lookups + ``featurize_pairs``
    + ``predict``, PROMO models) and the per-side first layer (``pair_scorer`` + ``predict_pairs``,
    every other model)."""
    users, items = side_tables(spec)
    side = side_arrays(users, items, spec)
    rng = np.random.default_rng(2)
    uid = rng.choice(users.column("user_id").to_numpy(), n)
    iid = rng.choice(items.column("item_id").to_numpy(), n)
    t = time.process_time()
    scorer = pair_scorer(model, side)
    t_build = time.process_time() - t
    t_feat = t_pred = t_pairs = 0.0
    for s in range(0, n, chunk):
        t = time.process_time()
        cat, dense = featurize_pairs(side, uid[s:s + chunk], side.user_rows(uid[s:s + chunk]),
                                     side.item_rows(iid[s:s + chunk]), spec, mask_item_id=True)
        t_feat += time.process_time() - t
        t = time.process_time()
        predict(model, cat, dense, batch_rows)
        t_pred += time.process_time() - t
        t = time.process_time()
        predict_pairs(model, scorer, uid[s:s + chunk], side.user_rows(uid[s:s + chunk]), side.item_rows(iid[s:s + chunk]),
                      batch_rows)
        t_pairs += time.process_time() - t
    return {"pairs": n, "featurize_pairs_per_cpu_s": round(n / t_feat), "predict_pairs_per_cpu_s": round(n / t_pred),
            "total_pairs_per_cpu_s": round(n / (t_feat + t_pred)),
            "pair_scorer_build_cpu_s": round(t_build, 3), "pair_scorer_pairs_per_cpu_s": round(n / t_pairs)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=2_000_000)
    ap.add_argument("--driver-pairs", type=int, default=200_000)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--driver-only", action="store_true", help="skip the Spark measurement")
    args = ap.parse_args(argv)
    cfg = DualRecConfig()
    spec = RankerSpec.from_cfg(cfg.rank)
    model = new_model(spec, 0)
    out = {}

    import torch

    torch.set_num_threads(1)
    df = synthetic_rows(args.driver_pairs, spec.profile_dim)
    t = time.time()
    cat, dense = featurize(df, spec, mask_item_id=True)
    t_feat = time.time() - t
    t = time.time()
    predict(model, cat, dense, cfg.rank.score_batch_rows)
    t_pred = time.time() - t
    out["driver_1_thread"] = {"pairs": len(df), "featurize_pairs_per_s": round(len(df) / t_feat),
                              "predict_pairs_per_s": round(len(df) / t_pred),
                              "total_pairs_per_s": round(len(df) / (t_feat + t_pred))}
    out["driver_side_tables_1_thread"] = side_tables_throughput(spec, model, args.driver_pairs, cfg.rank.score_batch_rows)
    print(json.dumps(out, indent=2))
    if args.driver_only:
        return 0

    import pandas as pd
    from pyspark.sql import functions as F

    from dualrec.config import SparkConfig
    from dualrec.ranking import (
        THETA_INPUTS,
        integrated_score,
        score_candidates,
        score_in_spark,
    )
    from dualrec.spark import get_spark

    spark = get_spark(SparkConfig(master=args.master, shuffle_partitions=4, driver_memory="4g"))
    base = spark.createDataFrame(synthetic_rows(100_000, spec.profile_dim)).cache()
    base.count()
    reps = max(1, args.pairs // 100_000)
    rows = base.crossJoin(spark.range(reps).withColumnRenamed("id", "rep")).drop("rep").repartition(4)
    rows = rows.cache()
    n = rows.count()
    t = time.time()
    scored = integrated_score(score_in_spark(rows, model, cfg.rank.score_batch_rows), cfg.rank.beta)
    agg = scored.agg(F.count("*").alias("n"), F.avg("g").alias("g")).first()
    sec = time.time() - t
    out["spark_mapInArrow"] = {"master": args.master, "pairs": int(agg["n"]), "seconds": round(sec, 1),
                               "pairs_per_s": round(n / sec)}
    rows.unpersist()

    # the rank stage's own path: (batch, item_id, user_id, channels) in, side tables broadcast
    users, items = side_tables(spec)
    side = side_arrays(users, items, spec, user_extra=THETA_INPUTS)
    rng = np.random.default_rng(3)
    pdf = pd.DataFrame({"batch": np.zeros(100_000, np.int32),
                        "item_id": rng.choice(items.column("item_id").to_numpy(), 100_000),
                        "user_id": rng.choice(users.column("user_id").to_numpy(), 100_000),
                        "channels": ["two_tower"] * 100_000})
    cbase = spark.createDataFrame(pdf).cache()
    cbase.count()
    cand = cbase.crossJoin(spark.range(reps).withColumnRenamed("id", "rep")).drop("rep").repartition(4).cache()
    n = cand.count()
    t = time.time()
    agg = score_candidates(cand, side, model, cfg.rank.beta, cfg.rank.theta_prior_strength, 0.05,
                           cfg.rank.score_batch_rows).agg(F.count("*").alias("n"), F.avg("g").alias("g")).first()
    sec = time.time() - t
    out["spark_score_candidates"] = {"master": args.master, "pairs": int(agg["n"]), "seconds": round(sec, 1),
                                     "pairs_per_s": round(n / sec)}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
