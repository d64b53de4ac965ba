"""The stage runner: the context a stage gets and the one place that checks its inputs.

A stage is a function ``run(ctx: StageContext) -> dict`` in ``dualrec/stages/<stage>.py``,
declared in :mod:`dualrec.registry`. ``dualrec run``, ``spark-submit jobs/<stage>.py`` and the
Airflow DAG (through spark-submit) all call :func:`run_stage`, so they behave identically.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dualrec.config import DualRecConfig, step_seed
from dualrec.lake import Lake, LakeError
from dualrec.registry import STAGES, stage_spec, table_producer
from dualrec.spark import get_spark
from schemas.tables import TABLES
from schemas.validate import BadInputError

log = logging.getLogger("dualrec")


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
    progress: Any = None  # a dualrec.progress.Progress while run by run_day; None under spark-submit

    def step(self, name: str, j: int, n: int) -> None:
        """Report progress of a stage's inner loop (dispatch batch j of n)."""
        if self.progress is not None:
            self.progress.step(name, j, n)

    @property
    def spark(self):
        if self._spark is None:
            self._spark = get_spark(self.cfg.spark)
        return self._spark

    def seed(self, step: str) -> int:
        """Deterministic per-step seed from the config seed, the date and the step name."""
        return step_seed(self.cfg.seed, self.day, step)


def check_stage_inputs(lake: Lake, stage: str, day: dt.date, validated: set | None = None) -> None:
    """Fail fast, before any work, when a stage's day-D inputs are missing or violate their contract.

    Upstream (input) tables are validated here once per day (``validated`` caches across
    stages); derived tables were validated when their producer published them. Stages do not
    re-check what is declared in :mod:`dualrec.registry`.
    """
    for table in stage_spec(stage).inputs:
        if not lake.has_partition(table, day):
            producer = table_producer(table)
            hint = f"; run stage {producer!r} for {day} first" if producer else " (an upstream delivery)"
            raise LakeError(
                f"table {table!r}: partition dt={day} is missing at {lake.uri(lake.partition_rel(table, day))}{hint}"
            )
        if TABLES[table].kind == "input" and (validated is None or (table, day) not in validated):
            lake.validate_dir(table, day).raise_if_failed()
            if validated is not None:
                validated.add((table, day))


def stage_fn(name: str) -> Callable[[StageContext], dict]:
    """The ``run`` function of a declared stage (modules load on demand: a stage's heavy
    dependencies are imported only when that stage runs)."""
    return importlib.import_module(stage_spec(name).module_path).run


def run_stage(name: str, fn: Callable[[StageContext], dict] | None, ctx: StageContext) -> dict:
    """Run one stage, timing it; errors are re-raised as StageError naming the stage."""
    fn = fn or stage_fn(name)
    t0 = time.time()
    log.info("stage %s for %s: start", name, ctx.day)
    try:
        if name in STAGES:  # library jobs outside a day (e.g. boost) check their own inputs
            check_stage_inputs(ctx.lake, name, ctx.day, ctx.validated)
        result = fn(ctx) or {}
    except (BadInputError, LakeError) as e:
        raise type(e)(f"stage {name} ({ctx.day}): {e}") from e
    except Exception as e:  # noqa: BLE001 - re-raised with the stage named
        raise StageError(f"stage {name} ({ctx.day}) failed: {type(e).__name__}: {e}") from e
    result["seconds"] = round(time.time() - t0, 3)
    log.info("stage %s for %s: done in %.1fs", name, ctx.day, result["seconds"])
    return result


__all__ = ["STAGES", "StageContext", "StageError", "check_stage_inputs", "run_stage", "stage_fn"]
