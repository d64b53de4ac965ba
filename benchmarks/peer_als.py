"""Peer benchmark: Spark MLlib ALS ``recommendForItemSubset`` vs the DualRec pipeline on one day.

    dualrec synth --lake /tmp/als_small --preset small --start 2026-01-01 --days 12 --seed 7
    dualrec run   --lake /tmp/als_small --date 2026-01-10          # or pass --run-pipeline below
    python benchmarks/peer_als.py --lake /tmp/als_small --date 2026-01-10 [--json out.json]

For day D, ALS (implicit preferences; explicit feedback weighted above clicks / long views;
seeded) is trained on ``interactions`` dt in [D-W+1, D] and asked for the top-L users of
(a) the items uploaded on D ("new": what the pipeline dispatches) and (b) the items uploaded
before D that are still exposed on D+1 ("warm": ALS's home turf). Both are scored by the
recall of each item's logged explicit-positive users on D+1 (like/comment/follow/share/
profile_enter), averaged over items with >= 1 positive; an item left without users counts as
recall 0. Our pipeline only dispatches new items, so the warm column is ALS-only.

Caveats printed with the table: ALS may use ALL of day D (also the new items' exposures after
their micro-batch cutoff, which the pipeline may not see), recommends any known user (not only
users predicted to come back) and ignores the per-user cap Q.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import als_peer as P  # noqa: E402
from dualrec.config import DualRecConfig, SparkConfig  # noqa: E402
from dualrec.lake import Lake, date_range, parse_date  # noqa: E402

log = logging.getLogger("peer_als")

NOTES = [
    "ALS is trained on interactions of [D-W+1, D] INCLUDING all of day D: the new items' own day-D exposures, "
    "also those after their micro-batch cutoff, which the pipeline may not use (point-in-time per batch).",
    "ALS cannot do cold start: an item with no click/long-view/explicit feedback in the window gets no users "
    "(counted as recall 0); the pipeline reaches every new item through its content tower.",
    "ALS recommends any user known to the model (no activity prediction) and ignores the cap Q "
    "(max |D_u| and 'users > Q' show the load it would put on single users); the pipeline keeps |D_u| <= Q.",
    "Our pipeline only dispatches items uploaded on D: the 'recall warm' column is ALS only.",
    "'ALS top-K + store': ALS's top-K users per new item, restricted to the day's available users "
    "(activity_scores) and assigned by our Algorithm 1 store (upload order, L per item, |D_u| <= Q): "
    "ALS scores under the pipeline's constraints (wall time excludes the activity stage).",
    "Recall = share of the item's D+1 explicit-positive users among its L users, averaged over items with >= 1 "
    "positive (macro); micro = all hits / all positives. Pipeline wall time = its stages activity..dispatch "
    "(models trained and indexes built for the day, metrics excluded).",
]


def pipeline_seconds(lake: Lake, day: dt.date) -> tuple[float | None, list[str]]:
    """Sum of the day's stage timings from ``_runs/dt=D/stages.json`` without ``metrics`` (evaluation).

    Also returns the stages that were missing from the file (a day run in pieces): the sum is
    then partial and the table says so.
    """
    from dualrec.pipeline import STAGES, stage_timings

    t = stage_timings(lake, day)
    missing = [s for s in STAGES if s != "metrics" and s not in t]
    if not t:
        return None, missing
    return round(sum(v for k, v in t.items() if k != "metrics"), 2), missing


def run(args: argparse.Namespace) -> dict:
    from dualrec.stages.base import StageContext
    from dualrec.spark import get_spark

    lake = Lake(args.lake)
    day = parse_date(args.date)
    nxt = day + dt.timedelta(days=1)
    cfg = DualRecConfig()
    spark = get_spark(SparkConfig(master=args.master, driver_memory=args.driver_memory, shuffle_partitions=args.partitions))
    ctx = StageContext(lake=lake, day=day, cfg=cfg, _spark=spark)
    lake.require_partition("interactions", day, "peer_als")
    lake.require_partition("items", day, "peer_als")
    params = P.AlsParams(rank=args.rank, max_iter=args.iters, reg_param=args.reg, alpha=args.alpha)
    L, Q = args.L, args.Q
    out: dict = {"date": day.isoformat(), "lake": lake.root, "L": L, "Q": Q, "window_days": args.window,
                 "als_params": {"rank": params.rank, "max_iter": params.max_iter, "reg_param": params.reg_param,
                                "alpha": params.alpha, "weights": params.weights}}

    # ------------------------------------------------------------------ ALS (train + recommend new)
    t0 = time.time()
    window = date_range(day - dt.timedelta(days=args.window - 1), day)
    train = P.training_set(lake.read_df(spark, "interactions", window), params.weights).cache()
    n_train = train.count()
    t_data = time.time() - t0
    t1 = time.time()
    fit = P.fit_als(train, params, seed=ctx.seed("peer_als"))
    n_users_known = fit.users.count()
    n_items_known = fit.items.count()
    t_fit = time.time() - t1
    new_items = lake.read_df(spark, "items", [day]).select("item_id").cache()
    t2 = time.time()
    recs_new = P.recommend_users(fit, new_items, L).cache()
    recs_new.count()
    t_rec_new = time.time() - t2
    als_seconds = time.time() - t0
    out["als"] = {"train_pairs": n_train, "users_known": n_users_known, "items_known": n_items_known,
                  "seconds_data": round(t_data, 2), "seconds_fit": round(t_fit, 2),
                  "seconds_recommend_new": round(t_rec_new, 2), "seconds": round(als_seconds, 2)}
    log.info("ALS: %s", out["als"])

    # ------------------------------------------------------------------ pipeline
    if not lake.has_partition("match_sets", day) and args.run_pipeline:
        from dualrec.pipeline import run_day

        t3 = time.time()
        run_day(lake, day, DualRecConfig.load(args.config) if args.config else cfg)
        out["pipeline_run_seconds"] = round(time.time() - t3, 2)
    ours = lake.read_df(spark, "match_sets", [day]).select("item_id", "user_id") if lake.has_partition(
        "match_sets", day) else None

    # ------------------------------------------------------------------ evaluation (reads D+1: evaluation only)
    have_next = lake.has_partition("interactions", nxt)
    positives = warm = None
    if have_next:
        next_inter = lake.read_df(spark, "interactions", [nxt])
        positives = P.positive_pairs(next_inter).cache()
        uploads = lake.read_df(spark, "items", [day, nxt]).select("item_id")
        warm = P.warm_items(next_inter, uploads).cache()
    else:
        log.warning("no interactions for %s: recall figures are null", nxt)

    rows = []
    als_new = P.coverage_and_load(recs_new, new_items)
    als_new["users_over_q"] = P.users_over_cap(recs_new, Q)
    als_new["seconds"] = round(als_seconds, 2)
    if positives is not None:
        als_new["recall_new"] = P.summarize_recall(P.recall_per_item(recs_new, positives, new_items))
        # the same figure restricted to items ALS knows: how good it is where it can answer at all
        covered = recs_new.select("item_id").distinct()
        als_new["recall_new_covered_only"] = P.summarize_recall(P.recall_per_item(recs_new, positives, covered))
        t4 = time.time()
        recs_warm = P.recommend_users(fit, warm, L).cache()
        recs_warm.count()
        als_warm = P.coverage_and_load(recs_warm, warm)
        als_warm["seconds_recommend"] = round(time.time() - t4, 2)
        als_warm["recall_warm"] = P.summarize_recall(P.recall_per_item(recs_warm, positives, warm))
        als_warm["users_over_q"] = P.users_over_cap(recs_warm, Q)
        out["als_warm"] = als_warm
    out["als_new"] = als_new
    rows.append(("ALS recommendForItemSubset", als_new, out.get("als_warm")))

    # ALS scores through our store: available users (activity stage) only, |D_u| <= Q, upload order
    if lake.has_partition("activity_scores", day):
        from dualrec.dispatch import item_order_df

        t5 = time.time()
        avail = [r["user_id"] for r in lake.read_df(spark, "activity_scores", [day]).where("available")
                 .select("user_id").collect()]
        wide = P.recommend_users(fit, new_items, args.K)
        order = item_order_df(lake.read_df(spark, "items", [day]), cfg.dispatch.batches_per_day)
        capped = spark.createDataFrame(P.capped_dispatch(wide, order, avail, L, Q))
        als_cap = P.coverage_and_load(capped, new_items)
        als_cap["users_over_q"] = P.users_over_cap(capped, Q)
        als_cap["seconds"] = round(als_seconds - t_rec_new + time.time() - t5, 2)
        if positives is not None:
            als_cap["recall_new"] = P.summarize_recall(P.recall_per_item(capped, positives, new_items))
        out["als_capped_new"] = als_cap
        rows.append((f"ALS top-{args.K} + store (Q, avail)", als_cap, None))

    if ours is not None:
        ours_new = P.coverage_and_load(ours, new_items)
        ours_new["users_over_q"] = P.users_over_cap(ours, Q)
        ours_new["seconds"], ours_new["stages_missing_from_timings"] = pipeline_seconds(lake, day)
        if positives is not None:
            ours_new["recall_new"] = P.summarize_recall(P.recall_per_item(ours, positives, new_items))
        out["pipeline_new"] = ours_new
        rows.append(("DualRec pipeline (match_sets)", ours_new, None))
    else:
        out["pipeline_new"] = None
        log.warning("no match_sets for %s: run `dualrec run --lake %s --date %s` or pass --run-pipeline",
                    day, lake.root, day)
    out["notes"] = NOTES
    print(format_table(out, rows))
    return out


def _r(d: dict | None, key: str) -> str:
    if not d or d.get(key) is None or d[key].get("macro") is None:
        return "n/a"
    return f"{d[key]['macro']:.3f} ({d[key]['micro']:.3f})"


def format_table(out: dict, rows: list) -> str:
    head = (f"peer_als  date={out['date']}  L={out['L']}  Q={out['Q']}  ALS window={out['window_days']}d  "
            f"train pairs={out['als']['train_pairs']}  users known={out['als']['users_known']}  "
            f"items known={out['als']['items_known']}")
    cols = f"{'method':<32s} {'wall s':>8s} {'items covered':>14s} {'recall new macro (micro)':>25s} " \
           f"{'recall warm macro (micro)':>26s} {'max |D_u|':>9s} {'users>Q':>8s}"
    lines = [head, cols, "-" * len(cols)]
    for name, new, warm in rows:
        secs = "n/a" if new.get("seconds") is None else f"{new['seconds']:.1f}"
        lines.append(
            f"{name:<32s} {secs:>8s} {str(new['items_covered']) + '/' + str(new['items']):>14s} "
            f"{_r(new, 'recall_new'):>25s} {(_r(warm, 'recall_warm') if warm else 'n/a (new items only)'):>26s} "
            f"{new['max_du']:>9d} {new['users_over_q']:>8d}"
        )
    if out.get("als_warm"):
        w = out["als_warm"]
        lines.append(f"  ALS warm items: {w['items_covered']}/{w['items']} covered, max |D_u| {w['max_du']}, "
                     f"users>Q {w['users_over_q']}, recommend {w['seconds_recommend']:.1f}s; "
                     f"items with positives: {w['recall_warm']['items']}")
    an = out["als_new"]
    if an.get("recall_new_covered_only"):
        c = an["recall_new_covered_only"]
        lines.append(f"  ALS new items it could answer (>=1 feedback on D): recall {_fmt(c['macro'])} "
                     f"over {c['items']} items with positives; all new items with positives: {an['recall_new']['items']}")
    pn = out.get("pipeline_new")
    if pn and pn.get("stages_missing_from_timings"):
        lines.append(f"  pipeline wall time is PARTIAL: _runs/dt=D/stages.json lacks {', '.join(pn['stages_missing_from_timings'])}")
    a = out["als"]
    lines.append(f"  ALS time: data {a['seconds_data']:.1f}s + fit {a['seconds_fit']:.1f}s + "
                 f"recommend(new) {a['seconds_recommend_new']:.1f}s")
    lines.append("notes:")
    lines += [f"  - {n}" for n in out["notes"]]
    return "\n".join(lines)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lake", required=True)
    p.add_argument("--date", required=True, help="day D (needs interactions of D+1 for recall)")
    p.add_argument("--window", type=int, default=14, help="ALS training window W in days, ending with D")
    p.add_argument("--L", type=int, default=200, help="users per item")
    p.add_argument("--Q", type=int, default=10, help="cap used to report users over capacity")
    p.add_argument("--K", type=int, default=1000, help="ALS users per item fed to the store in the capped variant")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--reg", type=float, default=0.1)
    p.add_argument("--alpha", type=float, default=10.0)
    p.add_argument("--run-pipeline", action="store_true", help="run dualrec.pipeline.run_day when match_sets is absent")
    p.add_argument("--config", help="pipeline config for --run-pipeline")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--driver-memory", default="4g")
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    out = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
