"""What every stage entry point shares: argument parsing, the stage context, exit codes.

A stage is a function ``run(ctx: StageContext) -> dict`` in ``jobs/<stage>.py``. The same
function is called by ``spark-submit jobs/<stage>.py``, by ``dualrec run`` and (through
spark-submit) by the Airflow DAG, so all three behave identically.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dualrec.config import DualRecConfig, step_seed
from dualrec.lake import Lake, LakeError, parse_date
from schemas.validate import BadInputError

log = logging.getLogger("dualrec")

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class StageError(RuntimeError):
    """A stage failed; the message names the stage."""


@dataclass
class StageContext:
    """Everything a stage needs for one logical date."""

    lake: Lake
    day: dt.date
    cfg: DualRecConfig
    _spark: Any = None
    stats: dict[str, Any] = field(default_factory=dict)
    validated: set = field(default_factory=set)  # (table, day) input partitions already checked

    @property
    def spark(self):
        if self._spark is None:
            from dualrec.spark import get_spark

            self._spark = get_spark(self.cfg.spark)
        return self._spark

    def seed(self, step: str) -> int:
        """Deterministic per-step seed from the config seed, the date and the step name."""
        return step_seed(self.cfg.seed, self.day, step)


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
    import os

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


def run_stage(name: str, fn: Callable[[StageContext], dict], ctx: StageContext) -> dict:
    """Run one stage, timing it; errors are re-raised as StageError naming the stage."""
    from dualrec.pipeline import check_stage_inputs

    t0 = time.time()
    log.info("stage %s for %s: start", name, ctx.day)
    try:
        check_stage_inputs(ctx.lake, name, ctx.day, ctx.validated)
        result = fn(ctx) or {}
    except (BadInputError, LakeError) as e:
        raise type(e)(f"stage {name} ({ctx.day}): {e}") from e
    except Exception as e:  # noqa: BLE001 - re-raised with the stage named
        raise StageError(f"stage {name} ({ctx.day}) failed: {type(e).__name__}: {e}") from e
    result["seconds"] = round(time.time() - t0, 3)
    log.info("stage %s for %s: done in %.1fs", name, ctx.day, result["seconds"])
    return result


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
