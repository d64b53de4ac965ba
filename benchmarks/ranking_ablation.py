"""Paper Table 4 on our data, plus retrieval recall and ranking lift against the synthetic truth.

Part 1 (ablation): for each held-out day T the ranker is trained on exposures of
[T - W, T - 1] and scored on the exposures of T, in four variants {no SA, no EF}, {EF}, {SA},
{SA + EF} and PROMO / PROMO-M / PROMO-T on top of SA + EF (issue 18); same features table, same
seed. S^I (``item_similar``) is first built for every upload day the features read that lacks it
(EF's similar-items part; ``--no-item-similar`` skips that). AUC per task, for all rows and for cold items
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

# (name, SA, EF, PROMO variant)
VARIANTS = (("w/o SA, w/o EF", False, False, "off"), ("w/o SA, with EF", False, True, "off"),
            ("with SA, w/o EF", True, False, "off"), ("with SA, with EF", True, True, "off"),
            ("PROMO", True, True, "promo"), ("PROMO-M", True, True, "m"), ("PROMO-T", True, True, "t"))
# on request only (--variants): PROMO on the EF-only base (SA hurts on small, BENCHMARKS 4)
EXTRA_VARIANTS = (("PROMO w/o SA", False, True, "promo"), ("PROMO-M w/o SA", False, True, "m"),
                  ("PROMO-T w/o SA", False, True, "t"))


def ensure_item_similar(spark, lake: Lake, cfg: DualRecConfig, first: dt.date, last: dt.date) -> dict:
    """Publish S^I (``item_similar``) for every upload day in [first, last] that lacks it.

    Why: EF's similar-items part (s_*) reads S^I of each item's upload day; a lake where only the
    pipeline's day D ran the similarity stage leaves it empty for every other day (the old run).
    Runs the similarity stage's S^I step (content index + neighbours), which needs no two-tower model."""
    from dualrec.stages.base import StageContext
    from dualrec.stages.similarity import write_item_similar

    done, t0 = [], time.time()
    d = first
    while d <= last:
        if lake.has_partition("items", d) and not lake.has_partition("item_similar", d):
            write_item_similar(StageContext(lake=lake, day=d, cfg=cfg, _spark=spark))
            done.append(str(d))
        d += dt.timedelta(days=1)
    have = [str(x) for x in lake.partitions("item_similar") if first <= x <= last]
    logging.info("item_similar: built %d day(s) in %.0f s; present for %d day(s)", len(done), time.time() - t0, len(have))
    return {"built": done, "present": have, "seconds": round(time.time() - t0, 1)}


def _frames(spark, lake: Lake, cfg: DualRecConfig, T: dt.date, seed: int, cache: str | None):
    """(train, test) feature frames of held-out day T, optionally cached as Parquet under ``cache``
    (keyed by day, cap, window and seed) so that further variants skip the ~10 min Spark build."""
    import pandas as pd

    from dualrec.ranking import training_frame

    W, cap = cfg.rank.train_window_days, cfg.rank.max_train_rows
    paths = None
    if cache:
        base = Path(cache) / f"{T}_W{W}_cap{cap}_s{seed}"
        paths = (base.with_name(base.name + "_train.parquet"), base.with_name(base.name + "_test.parquet"))
        if all(p.exists() for p in paths):
            return pd.read_parquet(paths[0]), pd.read_parquet(paths[1])
    train, _ = training_frame(spark, lake, T - dt.timedelta(days=W), T - dt.timedelta(days=1), cfg, max_rows=cap, seed=seed)
    test, _ = training_frame(spark, lake, T, T, cfg, max_rows=cap, seed=seed)
    if paths:
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        train.to_parquet(paths[0])
        test.to_parquet(paths[1])
    return train, test


def ablation(spark, lake: Lake, cfg: DualRecConfig, test_days: list[dt.date], seed: int,
             variants: tuple = VARIANTS, cache: str | None = None) -> dict:
    from dualrec.ranking import auc_per_task, promo_training_lists
    from models.ranker import RankerSpec, featurize, labels_of, new_model, predict, train_ranker

    res: dict[str, dict[str, list]] = {v[0]: {"all": [], "cold": [], "warm": []} for v in variants}
    seconds: dict[str, float] = {v[0]: 0.0 for v in variants}
    sizes = []
    pcfg = cfg.rank.promo
    for T in test_days:
        t0 = time.time()
        train, test = _frames(spark, lake, cfg, T, seed, cache)
        cold = (test["upload_day"].to_numpy() == np.datetime64(T))
        size = {"day": str(T), "train_rows": len(train), "test_rows": len(test), "cold_rows": int(cold.sum()),
                "ef_similar_share_train": round(float((train["s_has"] > 0).mean()), 4),
                "ef_similar_share_test": round(float((test["s_has"] > 0).mean()), 4),
                "ef_similar_share_cold": round(float((test.loc[cold, "s_has"] > 0).mean()), 4) if cold.any() else None,
                "feature_seconds": round(time.time() - t0, 1)}
        lists_tr = lists_te = None
        if any(v[3] != "off" for v in variants):
            t1 = time.time()
            lists_tr, lists_te = promo_training_lists(lake, train, cfg), promo_training_lists(lake, test, cfg)
            own, pse = (lists_te.pos >= 0).any(1), (lists_te.pseudo >= 0).any(1)
            size.update(promo_seconds=round(time.time() - t1, 1),
                        promo_train_own=round(float((lists_tr.pos >= 0).any(1).mean()), 4),
                        promo_test_own=round(float(own.mean()), 4),
                        promo_cold_own=round(float(own[cold].mean()), 4) if cold.any() else None,
                        promo_cold_pseudo=round(float(pse[cold].mean()), 4) if cold.any() else None,
                        promo_cold_none=round(float((~own & ~pse)[cold].mean()), 4) if cold.any() else None)
        sizes.append(size)
        y_test = labels_of(test)
        for name, sa, ef, promo in variants:
            t1 = time.time()
            over = dict(sample_augmentation=sa, extra_features=ef, promo="off")
            if promo != "off":
                over.update(promo=promo, promo_k=pcfg.k, promo_negatives=pcfg.negatives,
                            promo_lambda_pinnacle=pcfg.lambda_pinnacle, promo_lambda_popularity=pcfg.lambda_popularity,
                            promo_cold_positives=pcfg.cold_positives)
            spec = RankerSpec.from_cfg(cfg.rank, **over)
            m = new_model(spec, seed)
            cat, dense = featurize(train, spec)
            train_ranker(m, cat, dense, labels_of(train), cfg.rank.epochs, cfg.rank.batch_size, cfg.rank.lr, seed,
                         threads=cfg.rank.torch_threads, prompt=lists_tr if promo != "off" else None)
            c2, d2 = featurize(test, spec, mask_item_id=cold)  # unknown (new) item ids are masked
            s = predict(m, c2, d2, prompt=lists_te if promo != "off" else None)
            res[name]["all"].append(auc_per_task(y_test, s))
            res[name]["cold"].append(auc_per_task(y_test, s, cold))
            res[name]["warm"].append(auc_per_task(y_test, s, ~cold))
            seconds[name] += time.time() - t1
            logging.info("ablation %s %s: all %.4f cold %.4f (%.0f s)", T, name, _mean(list(res[name]["all"][-1].values())),
                         _mean(list(res[name]["cold"][-1].values())) or float("nan"), time.time() - t1)
        logging.info("ablation day %s done (%s)", T, sizes[-1])
    out = {"sizes": sizes, "variants": {}, "train_seconds": {k: round(v, 1) for k, v in seconds.items()}}
    for name, parts in res.items():
        out["variants"][name] = {}
        for part, per_day in parts.items():
            per_task = {t: _mean([d[t] for d in per_day]) for t in TASKS}
            out["variants"][name][part] = {"per_task": per_task, "mean": _mean(list(per_task.values())),
                                           "per_day_mean": [_mean(list(d.values())) for d in per_day]}
    return out


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def print_ablation(out: dict) -> None:
    print("\nTable 4 on our data (AUC, mean over held-out days; 'mean' = mean over the 6 tasks)")
    names = list(out["variants"])
    base = {p: out["variants"][names[0]][p]["mean"] for p in ("all", "cold", "warm")}
    hdr = f"{'method':<18} {'AUC all':>8} {'gain':>7} {'AUC cold':>9} {'gain':>7} {'AUC warm':>9}   " + " ".join(f"{t[:8]:>8}" for t in TASKS)
    print(hdr)
    for name in names:
        v = out["variants"][name]
        g = lambda p: (v[p]["mean"] - base[p]) * 100 if v[p]["mean"] is not None and base[p] is not None else float("nan")  # noqa: E731
        pt = " ".join(f"{(v['all']['per_task'][t] or float('nan')):8.3f}" for t in TASKS)
        pt += "  | cold " + " ".join(f"{(v['cold']['per_task'][t] or float('nan')):6.3f}" for t in TASKS)
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
    p.add_argument("--frame-cache", default="", help="cache the feature frames here (Parquet), outside the repo")
    p.add_argument("--variants", default="", help="semicolon-separated subset of the variant names (default: all)")
    p.add_argument("--no-item-similar", action="store_true",
                   help="do not backfill item_similar (S^I) for the upload days the features read")
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
        if not args.no_item_similar:
            first = min(days) - dt.timedelta(days=cfg.rank.train_window_days + cfg.rank.item_history_days
                                              + cfg.rank.user_window_days + cfg.rank.item_lookback_days)
            result["item_similar"] = ensure_item_similar(spark, lake, cfg, first, max(days))
        chosen = VARIANTS if not args.variants else tuple(
            v for v in VARIANTS + EXTRA_VARIANTS if v[0] in args.variants.split(";"))
        result["ablation"] = ablation(spark, lake, cfg, days, args.seed, chosen, args.frame_cache or None)
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
