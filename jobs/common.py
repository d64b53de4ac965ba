"""What every entry point shares: argument parsing, logging setup, exit codes.

The stages themselves live in :mod:`dualrec.stages` (core); ``spark-submit jobs/<stage>.py``,
``dualrec run`` and (through spark-submit) the Airflow DAG all call the same
:func:`dualrec.stages.base.run_stage`, so they behave identically.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from dualrec.channels import registered_names
from dualrec.config import DualRecConfig, use_channel_registry
from dualrec.lake import Lake, LakeError, parse_date
from dualrec.stages.base import StageContext, StageError, run_stage
from schemas.tables import TABLES
from schemas.validate import BadInputError

log = logging.getLogger("dualrec")

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1

EXIT_CODES_HELP = """exit codes:
  0  success
  2  bad input or bad configuration: the message names the table, partition, column or key
  1  anything else: a stage failed, the day is locked by another run, or a bug (a traceback is printed)
"""


class UsageError(ValueError):
    """Bad command-line arguments or configuration (exit 2), as opposed to a bug."""


class _ConsoleFilter(logging.Filter):
    """The console shows progress lines and warnings; ``-v`` shows every ``dualrec`` INFO line."""

    def __init__(self, verbose: int) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or self.verbose >= 2:
            return True
        if record.name.startswith("dualrec.progress"):
            return True
        return self.verbose >= 1 and record.name.startswith("dualrec")


def setup_logging(verbose: int | bool = 0) -> None:
    """One stderr handler: progress and warnings by default, ``-v`` INFO, ``-vv`` DEBUG.

    Spark's JVM log level and console progress bar are set where the session is built
    (:mod:`dualrec.spark`); noisy Python libraries stay at WARNING.
    """
    verbose = int(verbose)
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_dualrec_console", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._dualrec_console = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(_ConsoleFilter(verbose))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    for noisy in ("py4j", "matplotlib", "urllib3", "filelock", "PIL", "numba", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--set wants KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def load_config(path: str | None, sets: list[str] | None) -> DualRecConfig:
    """The effective configuration; any problem in it is a :class:`UsageError` (exit 2)."""
    use_channel_registry(registered_names)  # unknown channel names fail here, not in the retrieve stage
    try:
        return DualRecConfig.load(path, parse_overrides(sets))
    except UsageError:
        raise
    except (ValueError, TypeError, OSError) as e:
        raise UsageError(f"bad configuration: {e}") from e


def iso_date(value: str) -> str:
    """argparse type for YYYY-MM-DD (a bad date is a usage error, exit 2)."""
    try:
        return parse_date(value).isoformat()
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def verbose_parent() -> argparse.ArgumentParser:
    """``-v`` accepted before or after the sub-command (``dualrec -v run`` and ``dualrec run -v``)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                   help="more log lines on the console (-v INFO, -vv DEBUG)")
    return p


def add_common_args(p: argparse.ArgumentParser, date: bool = True) -> None:
    p.add_argument("--lake", required=True, help="lake root (path or hdfs:// / s3a:// URI)")
    if date:
        p.add_argument("--date", required=True, type=iso_date, help="logical date YYYY-MM-DD")
    p.add_argument("--config", help="YAML/TOML/JSON config file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. dispatch.Q=5")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log lines (-v INFO, -vv DEBUG)")


def context_from_args(args: argparse.Namespace) -> StageContext:
    cfg = load_config(args.config, args.set)
    return StageContext(lake=open_lake(args.lake, must_exist=True), day=parse_date(args.date), cfg=cfg)


def open_lake(root: str, must_exist: bool = False) -> Lake:
    """A lake from a CLI/Airflow argument, refusing roots that would write somewhere unintended.

    An empty root would resolve to the working directory and a regular file cannot hold
    partitions. With ``must_exist`` (every command that reads a lake) a local root must be a
    directory holding a lake (``_lake.json`` or a table), so a mistyped path is a clear error
    and nothing gets created there. An unknown URI scheme or an unreachable filesystem is a
    clear error (exit 2) instead of a traceback.
    """
    if not root or not str(root).strip():
        raise UsageError("--lake is empty: give a directory or an hdfs:// / s3a:// URI")
    local = "://" not in root or root.startswith("file://")
    path = root[len("file://"):] if root.startswith("file://") else root
    if local and os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--lake {root!r} is a file, not a lake directory")
    if must_exist and local:
        if not os.path.isdir(path):
            raise UsageError(f"--lake {root!r}: no such directory (nothing was created)")
        if not _looks_like_lake(path):
            raise UsageError(f"--lake {root!r}: not a lake (no _lake.json and no table directories; nothing was created)")
    try:
        return Lake(root)
    except ValueError as e:
        raise UsageError(str(e)) from e
    except OSError as e:
        raise LakeError(f"cannot open lake {root.split('@')[-1]!r}: {e}") from e


def _looks_like_lake(path: str) -> bool:
    return os.path.exists(os.path.join(path, "_lake.json")) or any(os.path.isdir(os.path.join(path, t)) for t in TABLES)


def stage_main(name: str, fn: Callable[[StageContext], dict], argv: list[str] | None = None) -> int:
    """``spark-submit jobs/<stage>.py --lake L --date D`` entry point."""
    p = argparse.ArgumentParser(
        prog=f"jobs/{name}.py",
        description=(fn.__doc__ or "").strip().split("\n")[0],
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_args(p)
    try:
        args = p.parse_args(argv)
    except SystemExit as e:  # usage errors (exit 2) and --help (0) come back as this function's code
        return int(e.code or 0)
    setup_logging(max(1, args.verbose))  # a spark-submit log is read later: keep the INFO lines
    return exit_code(lambda: run_stage(name, fn, context_from_args(args)), verbose=args.verbose)


def exit_code(action: Callable[[], Any], verbose: int = 0) -> int:
    """Run ``action`` and map failures to the documented exit codes.

    2: bad input or configuration (:class:`BadInputError`, :class:`LakeError`, :class:`UsageError`),
    one clear line. 1: everything else; an unexpected error prints its traceback, since it is
    a bug or an environment failure that someone will have to debug.
    """
    try:
        action()
    except (BadInputError, LakeError, UsageError) as e:
        log.debug("bad input", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the documented catch-all exit code
        if getattr(e, "expected", False):  # e.g. another run holds the day's lock: no traceback needed
            print(f"error: {e}", file=sys.stderr)
        else:
            traceback.print_exception(e, file=sys.stderr)
            print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    return 0

__all__ = ["EXIT_BAD_INPUT", "EXIT_CODES_HELP", "EXIT_FAILED", "StageContext", "StageError", "UsageError",
           "add_common_args", "context_from_args", "exit_code", "iso_date", "load_config", "open_lake", "parse_overrides",
           "setup_logging", "stage_main", "verbose_parent"]
