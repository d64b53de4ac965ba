"""Benchmark: user embedding, user-index build and top-K queries at ``large`` scale (1M users).

Steps, each timed:
  1. embed: user-tower inference (batched torch, the same ``user_embeddings`` the Spark job calls
     inside ``mapInArrow``) over N users with generated feature rows (no Spark: this measures
     the model cost; the stage adds Spark's Arrow transfer on top).
  2. build: ``models.ann.build_index`` over the available users (share of N) with the pipeline's
     config (exact below ``exact_max``, else IVF-Flat + MIPS transform), then nprobe tuning to
     ``recall_target`` on a query sample, as the stage does.
  3. query: top-K for one day's uploads (Q item vectors) with the chosen index, beside raw FAISS
     exact search (IndexFlatIP) on the same vectors; recall@K of the index vs exact.

Vectors for steps 2-3 are GENERATED (``--vectors clustered``, default): a mixture of 64 clusters
with log-normal norms, which is what trained two-tower embeddings look like; ``--vectors model``
uses the embeddings of step 1 (an untrained model: near-isotropic, a pessimistic case for IVF).

    python benchmarks/two_tower.py [--users 1000000] [--queries 50000] [--k 200] [--json out.json]

A second mode measures retrieval QUALITY on a synthetic lake with hidden truth: it runs the
two_tower stage for a day (writing a hand-made ``activity_scores``, top half of users by visit
days then sessions in the last 7 days, if the activity stage has not run), then for a sample of
the day's uploads compares the two-tower top-K among available users with K random available
users and with the truth oracle:

    python benchmarks/two_tower.py quality --lake /tmp/medium --date 2026-01-07
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dualrec.config import TwoTowerConfig  # noqa: E402
from models.ann import build_index, recall_vs_exact, tune_nprobe  # noqa: E402
from models.two_tower import TwoTowerModel, model_spec, user_embeddings  # noqa: E402


def user_feature_batch(start: int, n: int, content_dim: int, rng: np.random.Generator):
    """Synthetic user feature rows with the columns the user tower reads (pyarrow table)."""
    import pyarrow as pa

    liked = rng.normal(size=(n, content_dim)).astype(np.float32)
    cols = {
        "user_id": np.arange(start, start + n, dtype=np.int64),
        "age_bucket": rng.integers(0, 8, n).astype(np.int32),
        "gender": rng.integers(0, 3, n).astype(np.int32),
        "region": rng.integers(0, 40, n).astype(np.int32),
        "device": rng.integers(0, 6, n).astype(np.int32),
    }
    for c in ("follower_count", "account_age_days", "active_days", "sessions", "watch_ms", "n_interactions", "n_positive", "liked_n"):
        cols[c] = rng.exponential(10.0, n)
    cols["liked_emb"] = pa.ListArray.from_arrays(
        pa.array(np.arange(0, n * content_dim + 1, content_dim, dtype=np.int32)), pa.array(liked.reshape(-1))
    )
    return pa.table(cols)


def clustered(n: int, d: int, rng: np.random.Generator, centers: np.ndarray) -> np.ndarray:
    x = centers[rng.integers(0, len(centers), n)] + 0.5 * rng.normal(size=(n, d))
    return (x * rng.lognormal(0.0, 0.4, (n, 1))).astype(np.float32)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--available-share", type=float, default=0.5)
    p.add_argument("--queries", type=int, default=50_000, help="items uploaded in the day (queries)")
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--exact-queries", type=int, default=5_000, help="queries timed with exact search (qps extrapolated)")
    p.add_argument("--content-dim", type=int, default=128)
    p.add_argument("--vectors", choices=["clustered", "model"], default="clustered")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args(argv)

    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    cfg = TwoTowerConfig()
    res: dict = {"users": args.users, "queries": args.queries, "k": args.k, "dim": cfg.dim, "vectors": args.vectors, "threads": args.threads}

    # 1. embedding
    torch.manual_seed(args.seed)
    model = TwoTowerModel(model_spec(cfg, args.content_dim))
    chunk = 100_000
    emb = np.empty((args.users, cfg.dim), np.float32)
    t_feat = 0.0
    t0 = time.perf_counter()
    for s in range(0, args.users, chunk):
        n = min(chunk, args.users - s)
        tf = time.perf_counter()
        feats = user_feature_batch(s, n, args.content_dim, rng)
        t_feat += time.perf_counter() - tf
        emb[s : s + n] = user_embeddings(model, feats, cfg.infer_batch_rows)
    t_embed = time.perf_counter() - t0 - t_feat
    res["embed_seconds"] = round(t_embed, 2)
    res["embed_users_per_s"] = round(args.users / t_embed)

    # 2. index over available users
    n_avail = int(args.users * args.available_share)
    avail = np.sort(rng.choice(args.users, n_avail, replace=False))
    if args.vectors == "clustered":
        centers = rng.normal(size=(64, cfg.dim))
        vecs = clustered(n_avail, cfg.dim, rng, centers)
        queries = clustered(args.queries, cfg.dim, rng, centers)
    else:
        vecs = emb[avail]
        queries = emb[rng.choice(args.users, args.queries, replace=False)]
    t0 = time.perf_counter()
    index = build_index(vecs, avail.astype(np.int64), cfg, seed=args.seed)
    res["build_seconds"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    sample = queries[rng.choice(len(queries), min(cfg.recall_queries, len(queries)), replace=False)]
    res["tuned_recall_at_k_sample"] = round(tune_nprobe(index, vecs, sample, args.k, cfg.recall_target), 4)
    res["tune_seconds"] = round(time.perf_counter() - t0, 2)
    res["index"] = {k: v for k, v in index.meta.items()}

    # 3. queries: chosen index vs raw FAISS exact
    t0 = time.perf_counter()
    for s in range(0, len(queries), 10_000):
        index.search(queries[s : s + 10_000], args.k)
    t_q = time.perf_counter() - t0
    res["index_query_seconds"] = round(t_q, 2)
    res["index_qps"] = round(len(queries) / t_q)
    nq = min(args.exact_queries, len(queries))
    flat = faiss.IndexFlatIP(cfg.dim)
    flat.add(vecs)
    t0 = time.perf_counter()
    for s in range(0, nq, 5_000):
        flat.search(queries[s : s + 5_000], args.k)
    t_e = time.perf_counter() - t0
    res["exact_qps"] = round(nq / t_e)
    res["exact_seconds_for_all_queries_est"] = round(len(queries) / (nq / t_e), 1)
    eval_q = queries[rng.choice(len(queries), 1000, replace=False)]
    res["recall_at_k_1000_fresh_queries"] = round(recall_vs_exact(index, vecs, eval_q, args.k), 4)
    res["speedup_vs_exact"] = round(res["index_qps"] / res["exact_qps"], 2)
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


def ensure_activity_scores(lake, day) -> str:
    """Hand-made availability when the activity stage has not written one (top half by visits)."""
    import datetime as dt

    import pyarrow as pa

    from dualrec.lake import date_range

    if lake.has_partition("activity_scores", day):
        return "activity_scores (existing)"
    users = lake.read_table("users", day, columns=["user_id"]).column("user_id").to_numpy()
    vis = lake.read_tables("visits", date_range(day - dt.timedelta(days=6), day), columns=["user_id", "sessions"]).to_pandas()
    g = vis.groupby("user_id").agg(days=("sessions", "size"), sessions=("sessions", "sum"))
    g = g.reindex(users).fillna(0).sort_values(["days", "sessions"], ascending=False, kind="stable")
    top = np.zeros(len(users), bool)
    top[np.searchsorted(users, g.index[: len(users) // 2].to_numpy())] = True
    p = g.reindex(users)["days"].to_numpy() / 7.0
    lake.write_table("activity_scores", day, pa.table({"user_id": users, "p_active": p, "available": top}))
    return "hand-made: top half of users by visit days, then sessions, in the last 7 days"


def quality(argv: list[str]) -> dict:
    """Two-tower top-K among available users vs random available users, scored by hidden truth."""
    from dualrec.config import EXPLICIT_FEEDBACKS, DualRecConfig, SparkConfig
    from dualrec.lake import Lake, parse_date
    from dualrec.spark import get_spark
    from dualrec.synth.truth import Truth
    from dualrec.stages import two_tower as job
    from dualrec.stages.base import StageContext
    from jobs.common import setup_logging
    from models.ann import load_index
    from models.two_tower import item_embeddings, load_two_tower

    p = argparse.ArgumentParser(prog="benchmarks/two_tower.py quality")
    p.add_argument("--lake", required=True)
    p.add_argument("--date", required=True)
    p.add_argument("--items", type=int, default=300, help="sampled uploads of the day")
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--skip-train", action="store_true", help="reuse the published model and index")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json")
    args = p.parse_args(argv)
    setup_logging()
    lake, day = Lake(args.lake), parse_date(args.date)
    cfg = DualRecConfig.load(None, dict(kv.split("=", 1) for kv in args.set))
    res: dict = {"lake": args.lake, "date": day.isoformat(), "availability": ensure_activity_scores(lake, day)}
    if not args.skip_train:
        spark = get_spark(SparkConfig(master="local[2]", shuffle_partitions=8, driver_memory="8g"))
        t0 = time.perf_counter()
        res["stage"] = job.run(StageContext(lake=lake, day=day, cfg=cfg, _spark=spark))
        res["stage_seconds"] = round(time.perf_counter() - t0, 1)
    model = load_two_tower(lake, day)
    index = load_index(lake, "user_index", day)
    res["model_metrics"] = model.manifest["metrics"]
    res["index"] = index.meta
    truth = Truth.load(args.lake)
    rng = np.random.default_rng(0)
    items = lake.read_table("items", day)
    items = items.take(np.sort(rng.choice(items.num_rows, min(args.items, items.num_rows), replace=False)))
    item_ids = items.column("item_id").to_numpy()
    _, top = index.search(item_embeddings(model, items), args.k)
    avail = index.ids
    out = {"two_tower": [], "random": [], "oracle": []}
    hits = {"two_tower": [], "random": []}
    for r, iid in enumerate(item_ids):
        probs = truth.feedback_prob(avail, np.full(len(avail), iid), EXPLICIT_FEEDBACKS)
        total = sum(probs[t] for t in EXPLICIT_FEEDBACKS)
        pos = np.searchsorted(avail, top[r][top[r] >= 0])
        rand = rng.choice(len(avail), args.k, replace=False)
        decile = probs["like"] >= np.quantile(probs["like"], 0.9)
        out["two_tower"].append(total[pos].sum())
        out["random"].append(total[rand].sum())
        out["oracle"].append(np.sort(total)[-args.k:].sum())
        hits["two_tower"].append(decile[pos].sum())
        hits["random"].append(decile[rand].sum())
    m = {k: float(np.mean(v)) for k, v in out.items()}
    res["expected_explicit_feedback_per_item_topk"] = {k: round(v, 3) for k, v in m.items()}
    res["lift_vs_random"] = round(m["two_tower"] / m["random"], 2)
    res["share_of_oracle"] = round(m["two_tower"] / m["oracle"], 3)
    res["top_decile_like_users_in_topk"] = {k: round(float(np.mean(v)), 1) for k, v in hits.items()}
    res["top_decile_lift_vs_random"] = round(np.mean(hits["two_tower"]) / max(np.mean(hits["random"]), 1e-9), 2)
    print(json.dumps(res, indent=2, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
    return res


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "quality":
        quality(sys.argv[2:])
    else:
        main()
