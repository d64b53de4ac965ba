"""Next-user retrieval ablation (paper Table 1) on a held-out day of a synthetic world.

For the items uploaded on D (never trained on: the model trains on items uploaded in
[D-W, D-1]), each method retrieves the top-K available users (the FAISS user index of D):

- next_user and its ablations (w/o prefix prompts, half the sequence length, w/o [CLS],
  w/o causal mask), each trained from scratch with the same seed and budget;
- the sum-pooled lookalike (paper variant 1): sum of the two-tower embeddings of the item's
  positive users before its cutoff;
- i2u2u (the existing lookalike channel, paper Eq. 5), and two_tower as a reference.

Every method sees only positives before the item's batch cutoff. Columns: Recall@20/@50 of the
item's true best users (|top-K ∩ true top-K available users| / K, truth = expected creator-visible
feedback on D+1, dualrec/synth/truth.py) and of its logged D+1 positives (|top-K ∩ P| / |P| over
items with a D+1 positive from an available user), also split by whether the item had a positive
before its cutoff.

    python benchmarks/next_user_ablation.py --lake /work/worlds/channels_small/lake --date 2026-02-07 \\
        --world-from /work/worlds/small_seed11_2026-01-01_39d/lake --json /tmp/nu_ablation.json

Missing day-D prerequisites (activity_scores, user_embeddings, user_index, item_positive_users,
user_similar) are built by running the stages activity, two_tower and similarity first.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dualrec.channels import default_channels  # noqa: E402
from dualrec.channels.base import with_cutoff  # noqa: E402
from dualrec.channels.i2u2u import i2u2u_scores, item_seeds  # noqa: E402
from dualrec.channels.next_user import (  # noqa: E402
    fit,
    item_arrays,
    positive_sequences,
    train,
    training_inputs,
    user_table,
)
from dualrec.channels.two_tower import search_candidates  # noqa: E402
from dualrec.config import EXPLICIT_FEEDBACKS, DualRecConfig  # noqa: E402
from dualrec.evaluation import evaluate, get_path  # noqa: E402
from dualrec.lake import Lake, parse_date  # noqa: E402
from dualrec.stages.base import StageContext, run_stage  # noqa: E402
from dualrec.stages.rank import model_for_day, score  # noqa: E402
from dualrec.stages.retrieve import day_items  # noqa: E402
from dualrec.synth.truth import Truth  # noqa: E402
from models.ann import load_index  # noqa: E402
from models.next_user import generate, sum_pool  # noqa: E402
from models.two_tower import item_embeddings, load_two_tower  # noqa: E402

log = logging.getLogger("next_user_ablation")

PAPER_TABLE1 = {  # Douyin, relative to Next-User Retrieval (0.4100 / 0.5859)
    "next_user": (0.4100, 0.5859),
    "w/o prefix prompts": (-0.1415, -0.1130),
    "half sequence length": (-0.0433, -0.0198),
    "w/o [CLS]": (-0.0003, -0.0013),
    "w/o causal mask": (-0.0052, -0.0022),
    "sum-pooled lookalike": (-0.2720, -0.2211),
    "i2u2u": (None, None),
}
VARIANTS = {
    "next_user": {},
    "w/o prefix prompts": {"prefix_prompts": False},
    "half sequence length": {"max_seq": 25},
    "w/o [CLS]": {"cls_token": False},
    "w/o causal mask": {"causal": False},
}
WITH_WITHOUT_PATHS = (
    "retrieval.truth_recall", "retrieval.candidates_per_item", "dispatch.channel_share", "dispatch.channel_share_any",
    "quality.expected_feedback", "quality.expected_feedback_optimum", "quality.feedback_per_pair", "quality.recall_at_l",
    "quality.truth_recall_dispatched", "quality.items_reaching_feedback", "dispatch.items_covered", "dispatch.items",
    "dispatch.users_matched",
)
"""Figures of ``evaluate`` that ``--with-without`` reports for each arm."""


def ensure_prereqs(lake: Lake, day: dt.date, world_from: str | None) -> None:
    """Hard-link the world's input tables in when the lake is empty; run missing stages."""
    if not lake.exists("items") and world_from:
        subprocess.run(["cp", "-al", world_from.rstrip("/") + "/.", lake.root], check=True)
    need = {"activity": lake.has_partition("activity_scores", day),
            "two_tower": lake.is_complete(lake.model_rel("user_index", day)),
            "similarity": lake.has_partition("user_similar", day)}
    todo = [s for s, ok in need.items() if not ok]
    if todo:
        ctx = StageContext(lake, day, bench_cfg())
        for st in ("activity", "two_tower", "similarity"):
            if st in todo or (st == "similarity" and "two_tower" in todo):
                log.info("building prerequisite stage %s for %s", st, day)
                run_stage(st, None, ctx)


def bench_cfg(seed: int = 0, **nu) -> DualRecConfig:
    return DualRecConfig.from_dict({"seed": seed, "spark": {"master": "local[2]", "shuffle_partitions": 4, "driver_memory": "4g"},
                                    "next_user": nu})


def recall_tables(found: dict[int, np.ndarray], items: np.ndarray, true_top: dict[int, np.ndarray],
                  positives: dict[int, set], ks: tuple[int, ...]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for k in ks:
        tr = [len(set(found.get(int(i), np.zeros(0))[:k].tolist()) & set(true_top[int(i)][:k].tolist())) / k for i in items]
        out[f"truth@{k}"] = float(np.mean(tr)) if tr else None
        lg = [len(set(found.get(int(i), np.zeros(0))[:k].tolist()) & positives[int(i)]) / len(positives[int(i)])
              for i in items if positives.get(int(i))]
        out[f"logged@{k}"] = float(np.mean(lg)) if lg else None
    return out


def eval_sample(ids: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded random subset of ``n`` of ``ids`` (sorted; all of them when there are at most n)."""
    ids = np.sort(np.asarray(ids, np.int64))
    if len(ids) <= n:
        return ids
    return np.sort(np.random.default_rng(seed).choice(ids, n, replace=False))


def most_active(activity: pd.DataFrame, avail: np.ndarray, k: int) -> np.ndarray:
    """The k available users with the highest ``p_active`` (ties: lower user_id first)."""
    a = activity[activity["user_id"].isin(avail)]
    a = a.sort_values(["p_active", "user_id"], ascending=[False, True], kind="stable")
    return a["user_id"].to_numpy(np.int64)[:k]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lake", required=True)
    ap.add_argument("--date", required=True, help="held-out day D (its uploads are evaluated; D+1 must exist)")
    ap.add_argument("--world-from", help="lake whose input tables are hard-linked in when --lake is empty")
    ap.add_argument("--epochs", type=int, default=None, help="override next_user.epochs")
    ap.add_argument("--samples-per-item", type=int, default=None)
    ap.add_argument("--train-window-days", type=int, default=None, help="override next_user.train_window_days")
    ap.add_argument("--max-train-items", type=int, default=None)
    ap.add_argument("--eval-items", type=int, default=None,
                    help="evaluate a seeded random sample of at most this many of D's items (cost cap on medium)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma list of next_user variants to train")
    ap.add_argument("--seed", type=int, default=0, help="config seed (training seeds derive from it)")
    ap.add_argument("--with-without", action="store_true",
                    help="instead: run retrieve, rank, dispatch and evaluate for D without and with the next_user channel")
    ap.add_argument("--reuse-without", action="store_true",
                    help="with --with-without: evaluate the lake's existing (default-channel) day outputs as the 'without' arm")
    ap.add_argument("--with-from", choices=("retrieve", "rank", "score", "dispatch"), default="retrieve",
                    help="with --with-without: resume the 'with' arm at this stage (after an interrupted run); "
                         "score: rescore with the lake's ranker of D (trained on D-7..D-1, not on D's candidates)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    lake, day = Lake(args.lake), parse_date(args.date)
    nxt = day + dt.timedelta(days=1)
    ensure_prereqs(lake, day, args.world_from)
    if args.with_without:
        out = with_without(lake, day, args.seed, args.reuse_without, args.with_from)
        print(json.dumps(out, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2, default=str))
        return 0
    over = {k: v for k, v in {"epochs": args.epochs, "samples_per_item": args.samples_per_item,
                              "max_train_items": args.max_train_items,
                              "train_window_days": args.train_window_days}.items() if v is not None}
    cfg = bench_cfg(args.seed, **over)
    ctx = StageContext(lake, day, cfg)
    spark = ctx.spark
    ks = (20, 50)
    K = max(ks)
    t_all = time.time()

    # ------------------------------------------------------------------ the day's items and what each may see
    items_df = with_cutoff(day_items(ctx), day, cfg.dispatch.batches_per_day)
    n_day_items = items_df.count()
    if args.eval_items and n_day_items > args.eval_items:
        all_ids = np.sort(np.asarray(items_df.select("item_id").toPandas()["item_id"], np.int64))
        keep = eval_sample(all_ids, args.eval_items, ctx.seed("next_user_ablation.eval_items"))
        items_df = items_df.where(items_df.item_id.isin([int(i) for i in keep]))
    items_df = items_df.cache()
    item_t = items_df.select("item_id", "creator_id", "category", "duration_ms", "content_emb").orderBy("item_id").toArrow()
    ids = item_t.column("item_id").to_numpy()
    pos_df = lake.read_df(spark, "item_positive_users", [day], with_dt=False)
    seq_map = positive_sequences(pos_df, items_df, cfg.next_user.max_seq)
    seqs = [seq_map.get(int(i), np.zeros(0, np.int64)) for i in ids]
    has_pos = np.array([len(s) > 0 for s in seqs])
    index = load_index(lake, "user_index", day)
    avail = np.sort(index.ids)
    log.info("D=%s: %d items (%d with a positive before their cutoff), %d available users", day, len(ids), int(has_pos.sum()), len(avail))

    # ------------------------------------------------------------------ ground truth and logged positives
    truth = Truth.load(lake.root)
    true_top: dict[int, np.ndarray] = {}
    for i in ids:
        s = truth.expected_visible_feedback(avail, np.full(len(avail), i, np.int64), nxt)
        true_top[int(i)] = avail[np.argsort(-s, kind="stable")[:K]]
    inter = lake.read_table("interactions", nxt).to_pandas()
    flag = np.zeros(len(inter), bool)
    for f in EXPLICIT_FEEDBACKS:
        flag |= inter[f"is_{f}"].to_numpy() > 0
    inter = inter[flag & inter["item_id"].isin(ids) & inter["user_id"].isin(avail)]
    positives = {int(i): set(g["user_id"].tolist()) for i, g in inter.groupby("item_id")}
    log.info("truth top-%d computed; %d items have a logged D+1 positive from an available user", K, len(positives))

    def topk(emb: np.ndarray, rows: np.ndarray | None = None) -> dict[int, np.ndarray]:
        rows = np.arange(len(ids)) if rows is None else rows
        t = search_candidates(ids[rows], emb[rows], index.search, K)
        df = t.to_pandas().sort_values(["item_id", "score", "user_id"], ascending=[True, False, True])
        return {int(i): g["user_id"].to_numpy() for i, g in df.groupby("item_id")}

    results: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    users_all = user_table(lake.read_df(spark, "user_embeddings", [day], with_dt=False))

    def record(name: str, found: dict[int, np.ndarray]) -> None:
        results[name] = {"all": recall_tables(found, ids, true_top, positives, ks),
                         "with_positive": recall_tables(found, ids[has_pos], true_top, positives, ks),
                         "no_positive": recall_tables(found, ids[~has_pos], true_top, positives, ks),
                         "items_with_candidates": int(sum(1 for i in ids if len(found.get(int(i), [])) > 0))}
        log.info("%s: %s", name, results[name]["all"])
        if args.json:  # partial figures survive a run stopped for the deadline
            Path(args.json).write_text(json.dumps({"partial": True, "results": results, "seconds": seconds}, indent=2, default=str))

    # ------------------------------------------------------------------ baselines
    t0 = time.time()
    pooled, has = sum_pool(seqs, users_all, cfg.next_user.max_seq)
    record("sum-pooled lookalike", topk(pooled, np.flatnonzero(has)))
    seconds["sum-pooled lookalike"] = round(time.time() - t0, 1)

    t0 = time.time()
    avail_df = spark.createDataFrame(pd.DataFrame({"user_id": avail}))
    seeds = item_seeds(items_df, pos_df)
    i2 = i2u2u_scores(seeds, lake.read_df(spark, "user_similar", [day], with_dt=False), avail_df, K).toPandas()
    i2 = i2.sort_values(["item_id", "score", "user_id"], ascending=[True, False, True])
    record("i2u2u", {int(i): g["user_id"].to_numpy() for i, g in i2.groupby("item_id")})
    seconds["i2u2u"] = round(time.time() - t0, 1)

    t0 = time.time()
    tt = load_two_tower(lake, day)
    record("two_tower (reference)", topk(item_embeddings(tt, item_t)))
    seconds["two_tower (reference)"] = round(time.time() - t0, 1)

    # the same list for every item: the available users by predicted activity. The truth is
    # P(active on D+1) x feedback, so this shows how much of a truth top-K is activity alone.
    act = lake.read_table("activity_scores", day).select(["user_id", "p_active"]).to_pandas()
    record("most active users (reference)", {int(i): most_active(act, avail, K) for i in ids})

    # ------------------------------------------------------------------ next_user variants
    variants = [v for v in args.variants.split(",") if v]  # --variants "" : baselines only
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown --variants {unknown}; known: {list(VARIANTS)}")
    t0 = time.time()
    train_in = training_inputs(spark, lake, day, cfg, ctx.seed("next_user.items")) if variants else {"items": None, "window": None}
    seconds["training_inputs"] = round(time.time() - t0, 1)
    train_info = {}
    for name in variants:
        t0 = time.time()
        model, metrics = fit(train_in, cfg, ctx.seed("next_user.train"), None, lake.emb_dim(), **VARIANTS[name])
        emb = generate(model, item_arrays(item_t, model.spec), [s[-model.spec.max_seq:] for s in seqs], users_all)
        record(name, topk(emb))
        seconds[name] = round(time.time() - t0, 1)
        train_info[name] = {"train_items": metrics.get("items"), "epoch_loss": metrics.get("epoch_loss")}

    out = {
        "lake": lake.root, "date": day.isoformat(), "day_items": int(n_day_items), "items": int(len(ids)), "items_with_positive_before_cutoff": int(has_pos.sum()),
        "available_users": int(len(avail)), "items_with_logged_positive": len(positives),
        "next_user_config": {k: v for k, v in cfg.next_user.__dict__.items()},
        "train_items": train_in["items"].num_rows if train_in["items"] is not None else 0,
        "train_window": train_in["window"], "train": train_info, "results": results, "seconds": seconds,
        "total_seconds": round(time.time() - t_all, 1), "paper_table1": PAPER_TABLE1,
    }
    print(markdown(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return 0


def with_without(lake: Lake, day: dt.date, seed: int, reuse_without: bool = False, with_from: str = "retrieve") -> dict:
    """The day's pipeline after retrieval, without and with next_user (same ranker seed and caps).

    ``reuse_without``: the "without" arm evaluates the day outputs already in the lake (they must
    come from a default-channel run, e.g. a hard-link copy of a benchmark day) instead of rerunning
    retrieve, rank and dispatch: half the cost, at the price of not checking that a rerun agrees.
    ``with_from`` (rank or dispatch): the "with" arm resumes at that stage on the lake's outputs of an
    interrupted "with" arm (the next_user artefact and the earlier stages' outputs must be there);
    only the "with" arm is then reported (take "without" from the interrupted run's log).
    """
    steps = ("retrieve", "rank", "dispatch")
    paths = WITH_WITHOUT_PATHS
    out: dict = {"date": day.isoformat(), "without_reused": reuse_without}
    arms = (("without", default_channels()), ("with", [*default_channels(), "next_user"]))
    if with_from != "retrieve":  # the lake holds the interrupted "with" arm's candidates: "without" cannot be evaluated
        arms = arms[1:]
    for label, chans in arms:
        cfg = bench_cfg(seed).with_override("retrieval.channels", json.dumps(chans))
        ctx = StageContext(lake, day, cfg)
        t0 = time.time()
        todo = steps[steps.index(with_from if with_from != "score" else "rank"):] if label == "with" else (() if reuse_without else steps)
        if "next_user" in chans and with_from == "retrieve":  # what the similarity stage runs when the channel is enabled
            out["next_user_training"] = train(ctx)
        if label == "with" and with_from == "score":
            # the ranker of D trains on D-7..D-1 only, never on D's candidates: the model the "without"
            # run published for D is the one this arm would train; only D's candidates are rescored
            t1 = time.time()
            score(ctx, model_for_day(lake, day)[1])
            todo = ("dispatch",)
            stages = {"rank (score only)": round(time.time() - t1, 1)}
        else:
            stages = {}
        stages.update({st: run_stage(st, None, ctx).get("seconds") for st in todo})
        stages = stages or "reused"
        if label == "with" and with_from != "retrieve":
            stages = {**stages, "resumed_from": with_from}
        m = evaluate(lake, day, cfg, spark=ctx.spark)
        row = {}
        for p in paths:
            try:
                row[p] = get_path(m, p)
            except KeyError:
                row[p] = "absent"
        out[label] = {"channels": chans, "stage_seconds": stages, "seconds": round(time.time() - t0, 1), **row}
        log.info("%s next_user: %s", label, out[label])
    return out


def markdown(out: dict) -> str:
    base = out["results"].get("next_user", {}).get("all", {})
    lines = ["| variant | truth R@20 | truth R@50 | logged R@20 | logged R@50 | truth R@50, items w/o positive | "
             "rel. R@20 vs next_user (truth) | paper Table 1 R@20 / R@50 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    order = [*[v for v in VARIANTS if v in out["results"]], *[v for v in out["results"] if v not in VARIANTS]]
    for name in order:
        r = out["results"][name]
        a = r["all"]
        rel = (a["truth@20"] / base["truth@20"] - 1) if base.get("truth@20") and name != "next_user" else None
        p = PAPER_TABLE1.get(name)
        if p is None or p[0] is None:
            ptxt = "n/a"
        elif name == "next_user":
            ptxt = f"{p[0]:.4f} / {p[1]:.4f}"
        else:
            ptxt = f"{p[0]:+.2%} / {p[1]:+.2%}"
        f = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"| {name} | {f(a['truth@20'])} | {f(a['truth@50'])} | {f(a['logged@20'])} | {f(a['logged@50'])} | "
                     f"{f(r['no_positive']['truth@50'])} | {'' if rel is None else f'{rel:+.1%}'} | {ptxt} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
