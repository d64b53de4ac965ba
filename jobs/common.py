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
from collections.abc import Callable
from typing import Any

from dualrec.config import DualRecConfig
from dualrec.lake import Lake, LakeError, parse_date
from dualrec.stages.base import StageContext, StageError, run_stage
from schemas.validate import BadInputError

log = logging.getLogger("dualrec")

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("py4j", "matplotlib", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set wants KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def add_common_args(p: argparse.ArgumentParser, date: bool = True) -> None:
    p.add_argument("--lake", required=True, help="lake root (path or hdfs:// / s3a:// URI)")
    if date:
        p.add_argument("--date", required=True, help="logical date YYYY-MM-DD")
    p.add_argument("--config", help="YAML/TOML/JSON config file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. dispatch.Q=5")
    p.add_argument("-v", "--verbose", action="store_true")


def context_from_args(args: argparse.Namespace) -> StageContext:
    cfg = DualRecConfig.load(args.config, parse_overrides(args.set))
    return StageContext(lake=open_lake(args.lake), day=parse_date(args.date), cfg=cfg)


def open_lake(root: str) -> Lake:
    """A lake from a CLI/Airflow argument, refusing roots that would write somewhere unintended.

    An empty root would resolve to the working directory and a regular file cannot hold
    partitions; an unknown URI scheme or an unreachable filesystem is a clear error (exit 2)
    instead of a traceback.
    """
    if not root or not str(root).strip():
        raise ValueError("--lake is empty: give a directory or an hdfs:// / s3a:// URI")
    if "://" not in root and os.path.exists(root) and not os.path.isdir(root):
        raise ValueError(f"--lake {root!r} is a file, not a lake directory")
    try:
        return Lake(root)
    except ValueError:
        raise
    except OSError as e:
        raise LakeError(f"cannot open lake {root.split('@')[-1]!r}: {e}") from e


def stage_main(name: str, fn: Callable[[StageContext], dict], argv: list[str] | None = None) -> int:
    """``spark-submit jobs/<stage>.py --lake L --date D`` entry point."""
    p = argparse.ArgumentParser(prog=f"jobs/{name}.py", description=(fn.__doc__ or "").strip().split("\n")[0])
    add_common_args(p)
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    return exit_code(lambda: run_stage(name, fn, context_from_args(args)))


def exit_code(action: Callable[[], Any]) -> int:
    """Run ``action`` and map failures to the documented exit codes (2 bad input, 1 stage failure)."""
    try:
        action()
    except (BadInputError, LakeError, ValueError) as e:
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StageError as e:
        log.exception("%s", e)
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    return 0

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "StageContext", "StageError", "add_common_args", "context_from_args",
           "exit_code", "open_lake", "parse_overrides", "setup_logging", "stage_main"]
