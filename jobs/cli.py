"""The ``dualrec`` console script.

Sub-commands are thin: they parse arguments and call library functions, so that the same
code runs from the CLI, from ``spark-submit jobs/<stage>.py`` and from Airflow.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from typing import Callable

import yaml

from dualrec.config import config_json_schema
from dualrec.ingest import KINDS
from dualrec.lake import parse_date
from dualrec.registry import STAGES
from dualrec.synth import generate
from jobs.common import (
    EXIT_BAD_INPUT,
    EXIT_CODES_HELP,
    UsageError,
    exit_code,
    iso_date,
    open_lake,
    setup_logging,
    verbose_parent,
)
from jobs.output import config_of, format_summary
from schemas.tables import TABLES

log = logging.getLogger("dualrec")


def _cmd_synth(args: argparse.Namespace) -> int:
    summary = generate(args.lake, preset=args.preset, start=args.start, days=args.days, seed=args.seed)
    print(json.dumps(summary, indent=2, default=str) if args.json else format_summary(summary))
    return 0




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



def _cmd_config_show(args: argparse.Namespace) -> int:
    if args.json_schema:
        print(json.dumps(config_json_schema(), indent=2))
    elif args.json:
        print(json.dumps(config_of(args).to_dict(), indent=2))
    else:
        print(yaml.safe_dump(config_of(args).to_dict(), sort_keys=False), end="")
    return 0






def _positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n





def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML/TOML/JSON config file (see `dualrec config show`)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. dispatch.Q=5 or spark.conf.spark.executor.memory=4g (repeatable)")


def _add_ingest(command) -> None:
    """``dualrec ingest {movielens,kuairand,recbole} --src DIR --lake DIR [options]``."""
    p = command("ingest","convert a public dataset (MovieLens-100K, KuaiRand-Pure, RecBole atomic files) into a lake")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--src", required=True, help="folder with the downloaded files (see docs/datasets.md)")
    p.add_argument("--lake", required=True)
    p.add_argument("--emb-dim", type=int, default=32, help="content-embedding dimension")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tz-offset-hours", type=float, default=None, help="default: movielens 0, kuairand 8")
    p.add_argument("--no-random-log", action="store_true", help="kuairand: skip log_random_4_22_to_5_08_pure.csv")
    p.add_argument("--upload-time", choices=["upload_dt", "first_exposure"], default="upload_dt", help="kuairand")
    p.add_argument("--register-ref", help="kuairand: day register_days counts back from (default: last log day)")
    p.add_argument("--dataset", help="recbole: NAME of NAME.inter when --src holds several")
    p.add_argument("--like-threshold", type=float, default=4.0, help="recbole: rating >= this is a like")
    p.add_argument("--view-threshold", type=float, default=3.0, help="recbole: rating >= this is a long view")
    p.add_argument("--creator-field", help="recbole: .item field holding the creator (default: item_id)")
    p.add_argument("--category-field", help="recbole: .item field holding the category (default: class/genre/...)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(fn="jobs.commands:cmd_ingest")


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
    r.set_defaults(fn="jobs.commands:cmd_run")

    b = command("backfill", "run days in order, skipping complete ones (resumable)")
    b.add_argument("--lake", required=True, help="an existing lake")
    b.add_argument("--start", required=True, type=iso_date)
    b.add_argument("--end", required=True, type=iso_date)
    b.add_argument("--force", action="store_true", help="rerun days that are already complete")
    _add_config_args(b)
    b.set_defaults(fn="jobs.commands:cmd_backfill")

    e = command("evaluate", "print a day's metrics (SPEC section 6) and write its HTML report")
    e.add_argument("--lake", required=True, help="an existing lake")
    e.add_argument("--date", required=True, type=iso_date)
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--horizon-days", type=_positive_int, default=1, metavar="H",
                   help="logged recall counts positives over D+1..D+H (default 1); sparse real logs need more")
    _add_config_args(e)
    e.set_defaults(fn="jobs.commands:cmd_evaluate")

    c = command("config", "inspect the configuration")
    cs = c.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = cs.add_parser("show", parents=[common], epilog=EXIT_CODES_HELP, formatter_class=fmt,
                         help="print the effective configuration (after --config and --set) or its JSON schema")
    show.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    show.add_argument("--json-schema", action="store_true", help="print the JSON schema (keys, types, defaults, bounds)")
    _add_config_args(show)
    show.set_defaults(fn=_cmd_config_show)

    _add_ingest(command)

    d = command("demo", "synthesise a small world, run it, evaluate, print the report path")
    d.add_argument("--lake", default="./dualrec-demo-lake")
    d.add_argument("--preset", default="tiny", choices=["tiny", "small", "medium", "large"],
                   help="tiny (default) finishes in minutes on 2 cores; small takes much longer")
    d.add_argument("--days", type=int, default=12, help="days to synthesise")
    d.add_argument("--run-days", type=int, default=2, help="days to run through the pipeline")
    d.add_argument("--seed", type=int, default=7)
    _add_config_args(d)
    d.set_defaults(fn="jobs.commands:cmd_demo")
    return p


def _handler(fn: str | Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Resolve a ``"module:function"`` handler: heavy sub-commands load the pipeline only when run."""
    if callable(fn):
        return fn
    module, _, name = fn.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    """Parse, run the sub-command, map errors to the documented exit codes."""
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", 0) or 0
    setup_logging(verbose)
    rc: list[int] = []
    code = exit_code(lambda: rc.append(int(_handler(args.fn)(args) or 0)), verbose=verbose)
    return code or (rc[0] if rc else 0)


if __name__ == "__main__":
    sys.exit(main())
