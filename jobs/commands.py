"""The CLI's heavy sub-commands (run, backfill, evaluate, demo, ingest).

They import the pipeline, the models (PyTorch, XGBoost, FAISS) and Spark, which costs seconds;
``jobs/cli.py`` names them as ``"jobs.commands:NAME"`` and imports this module only when one of
them runs, so ``dualrec --help``, ``validate``, ``synth`` and ``config show`` start fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dualrec.demo import run_demo
from dualrec.evaluation import evaluate
from dualrec.evaluation.report import write_report
from dualrec.ingest import ingest
from dualrec.lake import parse_date
from dualrec.pipeline import backfill, run_day, stages_from
from dualrec.progress import Progress
from dualrec.registry import STAGES
from jobs.common import UsageError, open_lake
from jobs.output import config_of, format_summary, json_default


def _progress() -> Progress:
    """A live display on a terminal, plain log lines otherwise (Airflow, CI, pipes)."""
    return Progress(stream=sys.stderr)

def cmd_run(args: argparse.Namespace) -> int:
    stages = stages_from(args.from_stage, args.stage)
    partial = stages != list(STAGES)
    cfg = config_of(args)
    timings = run_day(open_lake(args.lake, must_exist=True), args.date, cfg, stages=stages if partial else None,
                      progress=_progress())
    print(json.dumps({"date": args.date, "stage_seconds": timings}))
    return 0

def cmd_backfill(args: argparse.Namespace) -> int:
    if parse_date(args.end) < parse_date(args.start):
        raise UsageError(f"--end {args.end} is before --start {args.start}")
    cfg = config_of(args)
    status = backfill(open_lake(args.lake, must_exist=True), args.start, args.end, cfg, force=args.force,
                      progress=_progress())
    print(json.dumps(status, indent=2))
    return 0

def cmd_evaluate(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    lake = open_lake(args.lake, must_exist=True)
    metrics = evaluate(lake, args.date, cfg, horizon_days=args.horizon_days)
    path = write_report(lake, args.date, metrics)
    if args.json:
        print(json.dumps(metrics, default=json_default))
    else:
        print(format_summary(_flatten_top(metrics), title=f"metrics for {args.date}:"))
        print(f"report: {path}")
    return 0

def _flatten_top(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, dict)}

def cmd_demo(args: argparse.Namespace) -> int:
    out = run_demo(args.lake, preset=args.preset, synth_days=args.days, run_days=args.run_days, seed=args.seed,
                   cfg=config_of(args), progress=_progress())
    m = out["metrics"]
    head = {
        "date": out["date"],
        "activity.hit_rate": m.get("activity", {}).get("hit_rate"),
        "activity.hit_rate_all_users": m.get("activity", {}).get("hit_rate_all_users"),
        "dispatch.items_covered": m.get("dispatch", {}).get("items_covered"),
        "dispatch.max_du": m.get("dispatch", {}).get("max_du"),
        "quality.feedback_per_pair": m.get("quality", {}).get("feedback_per_pair"),
        "quality.feedback_per_pair_random": m.get("quality", {}).get("feedback_per_pair_random"),
        "quality.optimum_ratio": m.get("quality", {}).get("optimum_ratio"),
    }
    print(format_summary(head, title="demo finished; headline metrics:"))
    print(f"report: {out['report']}")
    return 0



def cmd_ingest(args) -> int:
    opts: dict[str, Any] = {"emb_dim": args.emb_dim, "seed": args.seed}
    if args.tz_offset_hours is not None:
        opts["tz_offset_hours"] = args.tz_offset_hours
    if args.kind == "kuairand":
        opts.update(include_random=not args.no_random_log, upload_time=args.upload_time, register_ref=args.register_ref)
    if args.kind == "recbole":
        opts.update(dataset=args.dataset, like_threshold=args.like_threshold, view_threshold=args.view_threshold,
                    creator_field=args.creator_field, category_field=args.category_field)
    summary = ingest(args.kind, args.src, args.lake, **opts)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"ingested {summary['kind']} into {summary['lake']}: {summary['start']} .. {summary['end']} "
              f"({summary['days']} days), {summary['users']} users, {summary['items']} items")
        print("  rows: " + ", ".join(f"{k}={v}" for k, v in summary["rows"].items()))
        print("  positive rates: " + ", ".join(f"{k}={v:.4f}" for k, v in summary["positive_rates"].items()))
    return 0
