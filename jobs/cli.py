"""The ``dualrec`` console script.

Sub-commands are thin: they parse arguments and call library functions, so that the same
code runs from the CLI, from ``spark-submit jobs/<stage>.py`` and from Airflow.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from jobs.common import EXIT_BAD_INPUT, parse_overrides, setup_logging

log = logging.getLogger("dualrec")


def _cmd_synth(args: argparse.Namespace) -> int:
    from dualrec.synth import generate

    summary = generate(args.lake, preset=args.preset, start=args.start, days=args.days, seed=args.seed)
    print(json.dumps(summary, indent=2, default=str) if args.json else _format_summary(summary))
    return 0


def _format_summary(summary: dict) -> str:
    lines = ["synthetic world written:"]
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
    from dualrec.lake import Lake, parse_date
    from schemas.tables import TABLES

    lake = Lake(args.lake)
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

    for extra in _EXTRA_COMMANDS:
        extra(sub)
    return p


# Later stages register their sub-commands here (run, backfill, evaluate, ingest, demo).
_EXTRA_COMMANDS: list = []


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(args.fn(args) or 0)
    except ValueError as e:  # bad arguments, bad config, bad input
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
