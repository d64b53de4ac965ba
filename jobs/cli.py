"""The ``dualrec`` console script.

Sub-commands are thin: they parse arguments and call library functions, so that the same
code runs from the CLI, from ``spark-submit jobs/<stage>.py`` and from Airflow.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from jobs.common import EXIT_BAD_INPUT, open_lake, parse_overrides, setup_logging

log = logging.getLogger("dualrec")


def _cmd_synth(args: argparse.Namespace) -> int:
    from dualrec.synth import generate

    summary = generate(args.lake, preset=args.preset, start=args.start, days=args.days, seed=args.seed)
    print(json.dumps(summary, indent=2, default=str) if args.json else _format_summary(summary))
    return 0


def _format_summary(summary: dict, title: str = "synthetic world written:") -> str:
    lines = [title]
    for k, v in summary.items():
        if isinstance(v, dict):
            lines.append(f"  {k}:")
            lines.extend(f"    {kk}: {_fmt(vv)}" for kk, vv in v.items())
        else:
            lines.append(f"  {k}: {_fmt(v)}")
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _cmd_validate(args: argparse.Namespace) -> int:
    from dualrec.lake import parse_date
    from schemas.tables import TABLES

    lake = open_lake(args.lake)
    tables = [args.table] if args.table else [t for t in TABLES if lake.partitions(t)]
    if args.table and args.table not in TABLES:
        print(f"error: unknown table {args.table!r}", file=sys.stderr)
        return EXIT_BAD_INPUT
    n_bad = n_parts = 0
    for t in tables:
        days = [parse_date(args.date)] if args.date else lake.partitions(t)
        for d in days:
            n_parts += 1
            if not lake.has_partition(t, d):
                print(f"table {t!r}, partition dt={d}: missing or incomplete")
                n_bad += 1
                continue
            rep = lake.validate_dir(t, d)
            if not rep.ok:
                n_bad += 1
                print(rep)
    print(f"validated {n_parts} partition(s) of {len(tables)} table(s): {n_bad} with problems")
    return EXIT_BAD_INPUT if n_bad else 0


def _config(args: argparse.Namespace):
    from dualrec.config import DualRecConfig

    return DualRecConfig.load(getattr(args, "config", None), parse_overrides(getattr(args, "set", None)))


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _cmd_run(args: argparse.Namespace) -> int:
    from dualrec.pipeline import run_day

    timings = run_day(open_lake(args.lake), args.date, _config(args), progress=_progress)
    print(json.dumps({"date": args.date, "stage_seconds": timings}))
    return 0


def _cmd_backfill(args: argparse.Namespace) -> int:
    from dualrec.pipeline import backfill

    status = backfill(open_lake(args.lake), args.start, args.end, _config(args), force=args.force, progress=_progress)
    print(json.dumps(status, indent=2))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from dualrec.evaluation import evaluate
    from dualrec.evaluation.report import write_report

    lake = open_lake(args.lake)
    metrics = evaluate(lake, args.date, _config(args))
    path = write_report(lake, args.date, metrics)
    if args.json:
        print(json.dumps(metrics, default=_json_default))
    else:
        print(_format_summary(_flatten_top(metrics), title=f"metrics for {args.date}:"))
        print(f"report: {path}")
    return 0


def _json_default(v):
    import numpy as np

    if isinstance(v, np.generic):
        return v.item()
    return str(v)


def _flatten_top(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, dict)}


def _cmd_demo(args: argparse.Namespace) -> int:
    from dualrec.demo import run_demo

    out = run_demo(args.lake, preset=args.preset, synth_days=args.days, run_days=args.run_days, seed=args.seed,
                   cfg=_config(args), progress=_progress)
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
    print(_format_summary(head, title="demo finished; headline metrics:"))
    print(f"report: {out['report']}")
    return 0


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML/TOML/JSON config file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. dispatch.Q=5")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dualrec", description="DualRec creator-side dispatch pipeline")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a synthetic world with hidden ground truth")
    s.add_argument("--lake", required=True)
    s.add_argument("--preset", default="tiny", choices=["tiny", "small", "medium", "large"])
    s.add_argument("--start", required=True, help="first day YYYY-MM-DD")
    s.add_argument("--days", type=int, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(fn=_cmd_synth)

    v = sub.add_parser("validate", help="check tables against schemas/")
    v.add_argument("--lake", required=True)
    v.add_argument("--table")
    v.add_argument("--date")
    v.set_defaults(fn=_cmd_validate)

    r = sub.add_parser("run", help="run every stage for one logical date")
    r.add_argument("--lake", required=True)
    r.add_argument("--date", required=True)
    _add_config_args(r)
    r.set_defaults(fn=_cmd_run)

    b = sub.add_parser("backfill", help="run days in order, skipping complete ones")
    b.add_argument("--lake", required=True)
    b.add_argument("--start", required=True)
    b.add_argument("--end", required=True)
    b.add_argument("--force", action="store_true", help="rerun days that are already complete")
    _add_config_args(b)
    b.set_defaults(fn=_cmd_backfill)

    e = sub.add_parser("evaluate", help="print a day's metrics and write its HTML report")
    e.add_argument("--lake", required=True)
    e.add_argument("--date", required=True)
    e.add_argument("--json", action="store_true")
    _add_config_args(e)
    e.set_defaults(fn=_cmd_evaluate)

    from dualrec.ingest import add_subcommand as add_ingest

    add_ingest(sub)

    d = sub.add_parser("demo", help="synthesise a small world, run it, evaluate, print the report path")
    d.add_argument("--lake", default="./dualrec-demo-lake")
    d.add_argument("--preset", default="tiny", choices=["tiny", "small", "medium", "large"],
                   help="tiny (default) finishes in minutes on 2 cores; small takes much longer")
    d.add_argument("--days", type=int, default=12, help="days to synthesise")
    d.add_argument("--run-days", type=int, default=2, help="days to run through the pipeline")
    d.add_argument("--seed", type=int, default=7)
    _add_config_args(d)
    d.set_defaults(fn=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    from dualrec.lake import LakeError
    from dualrec.pipeline import RunLockedError
    from jobs.common import EXIT_FAILED, StageError

    try:
        return int(args.fn(args) or 0)
    except (ValueError, LakeError) as e:  # bad arguments, bad config, bad input (BadInputError is a ValueError)
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (StageError, RunLockedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
