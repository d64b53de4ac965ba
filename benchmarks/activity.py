"""Benchmark of the activity stage: features, training and prediction wall time per step.

    python benchmarks/activity.py --preset medium [--lake /tmp/bench_activity_medium] [--days 32]

Generates the synthetic world (once; reused when ``--lake`` already holds it), then runs
the same library calls as ``jobs/activity.py`` for the last day with history, timing each
step. One prediction day needs ``lookback`` (30) days of history plus the training target
days, hence the default of 32 days (the training window shrinks gracefully if shorter).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import time
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dualrec import activity as A  # noqa: E402
from dualrec.config import DualRecConfig, SparkConfig  # noqa: E402
from dualrec.lake import Lake, date_range, parse_date  # noqa: E402
from models import activity as M  # noqa: E402

TIMES: dict[str, float] = {}


@contextmanager
def step(name: str):
    t0 = time.time()
    yield
    TIMES[name] = round(time.time() - t0, 2)
    print(f"{name:<28s} {TIMES[name]:>9.2f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="large", choices=["tiny", "small", "medium", "large"])
    p.add_argument("--lake")
    p.add_argument("--start", default="2026-01-01")
    p.add_argument("--days", type=int, default=32)
    p.add_argument("--date", help="day D to run (default: the last generated day)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--master", default="local[2]")
    p.add_argument("--driver-memory", default="6g")
    p.add_argument("--train-target-days", type=int, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    lake = Lake(args.lake or f"/tmp/bench_activity_{args.preset}")
    start = parse_date(args.start)
    last = start + dt.timedelta(days=args.days - 1)
    if not lake.has_partition("visits", last):
        from dualrec.synth import generate

        with step("synth (not the stage)"):
            generate(lake.root, preset=args.preset, start=start, days=args.days, seed=args.seed)
    day = parse_date(args.date) if args.date else last
    cfg = DualRecConfig()
    acfg = cfg.activity
    if args.train_target_days:
        acfg.train_target_days = args.train_target_days
    from dualrec.spark import get_spark

    spark = get_spark(SparkConfig(master=args.master, driver_memory=args.driver_memory, shuffle_partitions=8))
    names = A.feature_names(acfg.lookback_days)
    total0 = time.time()
    targets = A.training_target_days(lake, day, acfg.train_target_days)
    window = date_range(targets[0] - dt.timedelta(days=acfg.lookback_days), day)
    with step(f"per-day aggregates ({len(window)} d)"):
        daily = A.load_daily(spark, lake, window).persist()
        daily_rows = daily.count()
    with step("training features + collect"):
        train_df, counts = A.training_frame(spark, lake, targets, acfg.lookback_days, daily, acfg.max_train_rows, seed=1)
        data = A.collect_training(train_df, names, acfg.max_train_rows, counts)
    with step("train xgboost"):
        model = M.train(data["X_train"], data["y_train"], data["X_valid"], data["y_valid"], names, acfg, seed=2)
    with step("serve: features+predict+write"):
        feats = A.features_for_target(spark, lake, day + dt.timedelta(days=1), day, acfg.lookback_days, daily)
        scores = A.predict_scores(spark, feats, model.model_bytes(), names).persist()
        out, n_top = A.apply_policy(scores, acfg, A.count_items(lake, day), cfg.dispatch.L, cfg.dispatch.Q)
        lake.write_df(out, "activity_scores", day)
    total = time.time() - total0
    n_users = lake.read_table("activity_scores", day, columns=["user_id"]).num_rows
    result = {
        "preset": args.preset,
        "day": day.isoformat(),
        "train_target_days": [t.isoformat() for t in targets],
        "per_day_aggregate_rows": daily_rows,
        "rows_available_for_training": {("valid" if k else "train"): v for k, v in data["n_rows"].items()},
        "n_train": model.manifest["n_train"],
        "n_valid": model.manifest["n_valid"],
        "valid_auc": model.manifest["auc"],
        "users_scored": n_users,
        "top_n": n_top,
        "seconds": TIMES,
        "total_seconds": round(total, 2),
        "users_per_second_serve": round(n_users / max(TIMES["serve: features+predict+write"], 1e-9)),
    }
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
