"""Paper Table 4 on our data, plus retrieval recall and ranking lift against the synthetic truth.

Part 1 (ablation): for each held-out day T the ranker is trained on exposures of
[T - W, T - 1] and scored on the exposures of T, in four variants {no SA, no EF}, {EF}, {SA},
{SA + EF}; same features table, same seed. AUC per task, for all rows and for cold items
(uploaded on T, so never seen in training: their ID is the masked bucket) apart.

Part 2 (``--retrieval-day D``, needs ``candidates`` and ``ranked`` dt=D, e.g. after
``dualrec run``): on a sample of D's items, the share of each item's true top-L available users
(by Truth.expected_visible_feedback on D+1) found by each channel and by the merged candidates;
and the truth's expected visible feedback of the ranked top-L (by g) vs all candidates, vs L
random candidates and vs the top-L by the two-tower score.

    python benchmarks/ranking_ablation.py --lake /tmp/rk_tiny --test-days 2026-01-12,2026-01-13,2026-01-14
    python benchmarks/ranking_ablation.py --lake /tmp/small20 --retrieval-day 2026-01-18 --skip-ablation
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dualrec.config import DualRecConfig  # noqa: E402
from dualrec.lake import Lake, parse_date  # noqa: E402
from models.ranker import TASKS  # noqa: E402

VARIANTS = (("w/o SA, w/o EF", False, False), ("w/o SA, with EF", False, True), ("with SA, w/o EF", True, False),
            ("with SA, with EF", True, True))


def ablation(spark, lake: Lake, cfg: DualRecConfig, test_days: list[dt.date], seed: int) -> dict:
    from dualrec.ranking import auc_per_task, training_frame
    from models.ranker import RankerSpec, featurize, labels_of, new_model, predict, train_ranker

    res: dict[str, dict[str, list]] = {v[0]: {"all": [], "cold": [], "warm": []} for v in VARIANTS}
    sizes = []
    for T in test_days:
        t0 = time.time()
        train, _ = training_frame(spark, lake, T - dt.timedelta(days=cfg.rank.train_window_days), T - dt.timedelta(days=1),
                                  cfg, max_rows=cfg.rank.max_train_rows, seed=seed)
        test, _ = training_frame(spark, lake, T, T, cfg, max_rows=cfg.rank.max_train_rows, seed=seed)
        cold = (test["upload_day"].to_numpy() == np.datetime64(T))
        sizes.append({"day": str(T), "train_rows": len(train), "test_rows": len(test), "cold_rows": int(cold.sum()),
                      "feature_seconds": round(time.time() - t0, 1)})
        y_test = labels_of(test)
        for name, sa, ef in VARIANTS:
            spec = RankerSpec.from_cfg(cfg.rank, sample_augmentation=sa, extra_features=ef)
            m = new_model(spec, seed)
            cat, dense = featurize(train, spec)
            train_ranker(m, cat, dense, labels_of(train), cfg.rank.epochs, cfg.rank.batch_size, cfg.rank.lr, seed,
                         threads=cfg.rank.torch_threads)
            c2, d2 = featurize(test, spec, mask_item_id=cold)  # unknown (new) item ids are masked
            s = predict(m, c2, d2)
            res[name]["all"].append(auc_per_task(y_test, s))
            res[name]["cold"].append(auc_per_task(y_test, s, cold))
            res[name]["warm"].append(auc_per_task(y_test, s, ~cold))
        logging.info("ablation day %s done (%s)", T, sizes[-1])
    out = {"sizes": sizes, "variants": {}}
    for name, parts in res.items():
        out["variants"][name] = {}
        for part, per_day in parts.items():
            per_task = {t: _mean([d[t] for d in per_day]) for t in TASKS}
            out["variants"][name][part] = {"per_task": per_task, "mean": _mean(list(per_task.values()))}
    return out


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def print_ablation(out: dict) -> None:
    print("\nTable 4 on our data (AUC, mean over held-out days; 'mean' = mean over the 6 tasks)")
    base = {p: out["variants"][VARIANTS[0][0]][p]["mean"] for p in ("all", "cold", "warm")}
    hdr = f"{'method':<18} {'AUC all':>8} {'gain':>7} {'AUC cold':>9} {'gain':>7} {'AUC warm':>9}   " + " ".join(f"{t[:8]:>8}" for t in TASKS)
    print(hdr)
    for name, *_ in VARIANTS:
        v = out["variants"][name]
        g = lambda p: (v[p]["mean"] - base[p]) * 100 if v[p]["mean"] is not None and base[p] is not None else float("nan")  # noqa: E731
        pt = " ".join(f"{(v['all']['per_task'][t] or float('nan')):8.3f}" for t in TASKS)
        print(f"{name:<18} {v['all']['mean']:8.4f} {g('all'):+6.2f}pp {v['cold']['mean'] or float('nan'):9.4f} "
              f"{g('cold'):+6.2f}pp {v['warm']['mean'] or float('nan'):9.4f}   {pt}")
    print("rows:", out["sizes"])


def retrieval_quality(lake: Lake, cfg: DualRecConfig, day: dt.date, n_items: int, seed: int) -> dict:
    """Channel / merged recall of the true top-L and the ranked top-L's expected feedback."""

    from dualrec.synth.truth import Truth

    truth = Truth.load(lake.root)
    L = cfg.dispatch.L
    rng = np.random.default_rng(seed)
    cand = lake.read_table("candidates", day).to_pandas()
    ranked = lake.read_table("ranked", day, ["item_id", "user_id", "g"]).to_pandas()
    scores = lake.read_table("activity_scores", day).to_pandas()
    avail = np.sort(scores.loc[scores["available"], "user_id"].to_numpy(np.int64))
    items = lake.read_table("items", day, ["item_id"]).column("item_id").to_numpy()
    items = np.sort(rng.choice(items, size=min(n_items, len(items)), replace=False))
    nxt = day + dt.timedelta(days=1)
    from dualrec.channels import channel_names

    channels = channel_names(cfg)
    rec: dict[str, list] = {c: [] for c in [*channels, "merged"]}
    fb = {"ranked_top_L": [], "all_candidates": [], "random_L_candidates": [], "two_tower_top_L": [], "true_top_L": []}
    cand = cand[cand["item_id"].isin(items)].merge(ranked, on=["item_id", "user_id"], how="left")
    for it in items:
        ef = truth.expected_visible_feedback(avail, np.full(len(avail), it), nxt)
        top = avail[np.argsort(-ef, kind="stable")[:L]]
        c = cand[cand["item_id"] == it]
        for ch in channels:
            found = c.loc[c["channels"].map(lambda x, ch=ch: ch in list(x)), "user_id"].to_numpy()
            rec[ch].append(np.isin(top, found).mean())
        rec["merged"].append(np.isin(top, c["user_id"].to_numpy()).mean())
        fb["true_top_L"].append(float(np.sort(ef)[::-1][:L].mean()))
        if len(c) == 0:
            continue
        e_c = truth.expected_visible_feedback(c["user_id"].to_numpy(), np.full(len(c), it), nxt)
        fb["all_candidates"].append(float(e_c.mean()))
        g = c["g"].fillna(-np.inf).to_numpy()
        fb["ranked_top_L"].append(float(e_c[np.argsort(-g, kind="stable")[:L]].mean()))
        fb["random_L_candidates"].append(float(e_c[rng.permutation(len(c))[:L]].mean()))
        tt = c["score_two_tower"].fillna(-np.inf).to_numpy()
        fb["two_tower_top_L"].append(float(e_c[np.argsort(-tt, kind="stable")[:L]].mean()))
    return {
        "day": str(day), "items": int(len(items)), "L": L, "available_users": int(len(avail)),
        "candidates_per_item": float(len(cand) / max(len(items), 1)),
        "truth_recall_at_L": {k: float(np.mean(v)) if v else None for k, v in rec.items()},
        "expected_visible_feedback_per_pair": {k: float(np.mean(v)) if v else None for k, v in fb.items()},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lake", required=True)
    p.add_argument("--test-days", default="", help="comma-separated held-out days for the ablation")
    p.add_argument("--retrieval-day", default="")
    p.add_argument("--items", type=int, default=200, help="items sampled for part 2")
    p.add_argument("--skip-ablation", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg = DualRecConfig.load(None, dict(s.split("=", 1) for s in args.set))
    lake = Lake(args.lake)
    result: dict = {}
    if not args.skip_ablation:
        from dualrec.config import SparkConfig
        from dualrec.spark import get_spark

        spark = get_spark(SparkConfig(master="local[2]", shuffle_partitions=4, driver_memory="4g"))
        days = [parse_date(d) for d in args.test_days.split(",") if d]
        if not days:
            have = lake.partitions("interactions")
            days = have[-3:]
        result["ablation"] = ablation(spark, lake, cfg, days, args.seed)
        print_ablation(result["ablation"])
    if args.retrieval_day:
        result["retrieval"] = retrieval_quality(lake, cfg, parse_date(args.retrieval_day), args.items, args.seed)
        print("\nRetrieval recall of the true top-L and expected visible feedback per pair:")
        print(json.dumps(result["retrieval"], indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
