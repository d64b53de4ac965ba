"""The ``dualrec`` console script.

Sub-commands are thin: they parse arguments and call library functions, so that the same
code runs from the CLI, from ``spark-submit jobs/<stage>.py`` and from Airflow.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import numpy as np
import yaml

from dualrec.config import config_json_schema
from dualrec.demo import run_demo
from dualrec.ingest import add_subcommand as add_ingest
from dualrec.lake import parse_date
from dualrec.metrics import evaluate
from dualrec.pipeline import backfill, run_day, stages_from
from dualrec.progress import Progress
from dualrec.registry import STAGES
from dualrec.report import write_report
from dualrec.synth import generate
from jobs.common import (
    EXIT_BAD_INPUT,
    EXIT_CODES_HELP,
    UsageError,
    exit_code,
    iso_date,
    load_config,
    open_lake,
    setup_logging,
    verbose_parent,
)
from schemas.tables import TABLES

log = logging.getLogger("dualrec")


def _cmd_synth(args: argparse.Namespace) -> int:
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
    if args.table and args.table not in TABLES:
        raise UsageError(f"unknown table {args.table!r}; tables: {', '.join(TABLES)}")
    lake = open_lake(args.lake, must_exist=True)
    tables = [args.table] if args.table else [t for t in TABLES if lake.partitions(t)]
    if not tables:
        raise UsageError(f"lake {args.lake!r} holds no table partitions to validate")
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
    return load_config(getattr(args, "config", None), getattr(args, "set", None))


def _cmd_config_show(args: argparse.Namespace) -> int:
    if args.json_schema:
        print(json.dumps(config_json_schema(), indent=2))
    elif args.json:
        print(json.dumps(_config(args).to_dict(), indent=2))
    else:
        print(yaml.safe_dump(_config(args).to_dict(), sort_keys=False), end="")
    return 0


def _progress() -> Progress:
    """A live display on a terminal, plain log lines otherwise (Airflow, CI, pipes)."""
    return Progress(stream=sys.stderr)


def _cmd_run(args: argparse.Namespace) -> int:
    stages = stages_from(args.from_stage, args.stage)
    partial = stages != list(STAGES)
    cfg = _config(args)
    timings = run_day(open_lake(args.lake, must_exist=True), args.date, cfg, stages=stages if partial else None,
                      progress=_progress())
    print(json.dumps({"date": args.date, "stage_seconds": timings}))
    return 0


def _cmd_backfill(args: argparse.Namespace) -> int:
    if parse_date(args.end) < parse_date(args.start):
        raise UsageError(f"--end {args.end} is before --start {args.start}")
    cfg = _config(args)
    status = backfill(open_lake(args.lake, must_exist=True), args.start, args.end, cfg, force=args.force,
                      progress=_progress())
    print(json.dumps(status, indent=2))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    cfg = _config(args)
    lake = open_lake(args.lake, must_exist=True)
    metrics = evaluate(lake, args.date, cfg)
    path = write_report(lake, args.date, metrics)
    if args.json:
        print(json.dumps(metrics, default=_json_default))
    else:
        print(_format_summary(_flatten_top(metrics), title=f"metrics for {args.date}:"))
        print(f"report: {path}")
    return 0


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


def _flatten_top(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, dict)}


def _cmd_demo(args: argparse.Namespace) -> int:
    out = run_demo(args.lake, preset=args.preset, synth_days=args.days, run_days=args.run_days, seed=args.seed,
                   cfg=_config(args), progress=_progress())
    m = out["metrics"]
    head = {
        "date": out["date"],
        "activity.hit_rate": m.get("activity", {}).get("hit_rate"),
        "activity.hit_rate_all_users": m.get("activity", {}).get("hit_rate_all_users"),
        "dispatch.items_covered": m.get("dispatch", {}).get("items_covered"),
        "dispatch.max_du": m.get("dispatch", {}).get("max_du"),
        "quality.feedback_per_pair": m.get("quality", {}).get("feedback_per_pair"),
        "quality.feedback_per_pair_random": m.get("quality", {}).get("feedback_per_pair_random"),
        "quality.feedback_per_pair_oracle": m.get("quality", {}).get("feedback_per_pair_oracle"),
    }
    print(_format_summary(head, title="demo finished; headline metrics:"))
    print(f"report: {out['report']}")
    return 0


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML/TOML/JSON config file (see `dualrec config show`)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. dispatch.Q=5 or spark.conf.spark.executor.memory=4g (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    common = verbose_parent()
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="dualrec",
        description="DualRec creator-side dispatch pipeline: for every new item, the users most likely to "
        "come back tomorrow and give its creator visible feedback, at most Q items per user a day.",
        epilog=EXIT_CODES_HELP + "\nRun `dualrec COMMAND --help` for a command's options.",
        formatter_class=fmt,
        parents=[common],
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=description or help, parents=[common],
                              epilog=EXIT_CODES_HELP, formatter_class=fmt)

    s = command("synth", "write a synthetic world with hidden ground truth")
    s.add_argument("--lake", required=True, help="directory to write (created)")
    s.add_argument("--preset", default="tiny", choices=["tiny", "small", "medium", "large"])
    s.add_argument("--start", required=True, type=iso_date, help="first day YYYY-MM-DD")
    s.add_argument("--days", type=int, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(fn=_cmd_synth)

    v = command("validate", "check tables against schemas/ (exit 2 when any partition has problems)")
    v.add_argument("--lake", required=True, help="an existing lake")
    v.add_argument("--table", help="only this table")
    v.add_argument("--date", type=iso_date, help="only this partition")
    v.set_defaults(fn=_cmd_validate)

    r = command("run", "run the stages of one logical date",
                f"Run a day's stages in order ({', '.join(STAGES)}). A day is marked complete when every "
                "stage has run; --stage / --from-stage rerun part of a day on the outputs already in the lake.")
    r.add_argument("--lake", required=True, help="an existing lake")
    r.add_argument("--date", required=True, type=iso_date)
    g = r.add_mutually_exclusive_group()
    g.add_argument("--stage", action="append", choices=STAGES, metavar="STAGE",
                   help=f"run only this stage (repeatable); one of {', '.join(STAGES)}")
    g.add_argument("--from-stage", choices=STAGES, metavar="STAGE", help="run this stage and every later one")
    _add_config_args(r)
    r.set_defaults(fn=_cmd_run)

    b = command("backfill", "run days in order, skipping complete ones (resumable)")
    b.add_argument("--lake", required=True, help="an existing lake")
    b.add_argument("--start", required=True, type=iso_date)
    b.add_argument("--end", required=True, type=iso_date)
    b.add_argument("--force", action="store_true", help="rerun days that are already complete")
    _add_config_args(b)
    b.set_defaults(fn=_cmd_backfill)

    e = command("evaluate", "print a day's metrics (SPEC section 6) and write its HTML report")
    e.add_argument("--lake", required=True, help="an existing lake")
    e.add_argument("--date", required=True, type=iso_date)
    e.add_argument("--json", action="store_true", help="print one JSON object")
    _add_config_args(e)
    e.set_defaults(fn=_cmd_evaluate)

    c = command("config", "inspect the configuration")
    cs = c.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = cs.add_parser("show", parents=[common], epilog=EXIT_CODES_HELP, formatter_class=fmt,
                         help="print the effective configuration (after --config and --set) or its JSON schema")
    show.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    show.add_argument("--json-schema", action="store_true", help="print the JSON schema (keys, types, defaults, bounds)")
    _add_config_args(show)
    show.set_defaults(fn=_cmd_config_show)

    add_ingest(sub)

    d = command("demo", "synthesise a small world, run it, evaluate, print the report path")
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
    """Parse, run the sub-command, map errors to the documented exit codes."""
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", 0) or 0
    setup_logging(verbose)
    rc: list[int] = []
    code = exit_code(lambda: rc.append(int(args.fn(args) or 0)), verbose=verbose)
    return code or (rc[0] if rc else 0)


if __name__ == "__main__":
    sys.exit(main())
