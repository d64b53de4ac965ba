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

import pyarrow.parquet as pq

from dualrec.config import DualRecConfig, step_seed
from dualrec.lake import Lake, LakeError
from dualrec.registry import STAGES, stage_spec, table_producer
from dualrec.spark import get_spark
from dualrec.validation import InputChecks, check_reads, record_stage_inputs
from schemas.tables import TABLES, arrow_schema
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


def partition_rows(lake: Lake, table: str, day: dt.date) -> int:
    """Rows of a partition from its Parquet footers (0 when absent): no data read, no Spark job.

    Stages use it to short-circuit a day without uploads (nothing to retrieve or dispatch)."""
    if not lake.has_partition(table, day):
        return 0
    return sum(pq.ParquetFile(f, filesystem=lake.fs).metadata.num_rows for f in lake.data_files(table, day))


def write_empty(lake: Lake, table: str, day: dt.date, names=()) -> None:
    """Publish a valid empty partition of ``table`` (``names``: pattern columns such as score_<channel>)."""
    lake.write_table(table, day, arrow_schema(table, names).empty_table())


def check_stage_inputs(
    lake: Lake, stage: str, day: dt.date, validated: set | None = None, cfg: DualRecConfig | None = None
) -> InputChecks | None:
    """Fail fast, before any work, when anything a stage reads is missing or violates its contract.

    1. The day-D partitions declared in :mod:`dualrec.registry` must exist (a missing derived
       one names the stage that produces it).
    2. With ``cfg``, every partition of every window the stage declares in its module's
       ``reads(cfg, day)`` is checked by :func:`dualrec.validation.check_reads`: gaps inside a
       window, the contract of every file, references between tables (cached per partition
       content version, so later stages and reruns skip unchanged partitions).
    Without ``cfg`` (or a ``reads``), upstream day-D inputs are validated as before.
    """
    spec = stage_spec(stage)
    for table in spec.inputs:
        if not lake.has_partition(table, day):
            producer = table_producer(table)
            hint = f"; run stage {producer!r} for {day} first" if producer else " (an upstream delivery)"
            raise LakeError(
                f"table {table!r}: partition dt={day} is missing at {lake.uri(lake.partition_rel(table, day))}{hint}"
            )
    memo = validated if validated is not None else set()
    windows = stage_reads(stage, cfg, day) if cfg is not None else None
    if windows is None:
        windows = {}
    for table in spec.inputs:  # day D of every declared input is always part of what is read
        if TABLES[table].kind == "input":
            windows.setdefault(table, [])
            if day not in windows[table]:
                windows[table] = [*windows[table], day]
    vcfg = cfg.validation if cfg is not None else None
    checks = check_reads(lake, stage, day, windows, vcfg, memo)
    if cfg is not None:
        record_stage_inputs(lake, stage, day, checks, windows)
    return checks


def stage_reads(name: str, cfg: DualRecConfig, day: dt.date) -> dict[str, list[dt.date]] | None:
    """The read windows a stage declares (``reads(cfg, day)`` in its module), or None."""
    fn = getattr(importlib.import_module(stage_spec(name).module_path), "reads", None)
    return {t: list(ds) for t, ds in fn(cfg, day).items()} if fn is not None else None


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
        checks = None
        if name in STAGES:  # library jobs outside a day (e.g. boost) check their own inputs
            checks = check_stage_inputs(ctx.lake, name, ctx.day, ctx.validated, ctx.cfg)
            ctx.stats.setdefault("inputs", {})[name] = checks.as_dict() if checks else {}
        result = fn(ctx) or {}
        if checks is not None:
            result["inputs"] = checks.as_dict()
    except (BadInputError, LakeError) as e:
        raise type(e)(f"stage {name} ({ctx.day}): {e}") from e
    except Exception as e:  # noqa: BLE001 - re-raised with the stage named
        raise StageError(f"stage {name} ({ctx.day}) failed: {type(e).__name__}: {e}") from e
    result["seconds"] = round(time.time() - t0, 3)
    log.info("stage %s for %s: done in %.1fs", name, ctx.day, result["seconds"])
    return result


__all__ = ["STAGES", "StageContext", "StageError", "check_stage_inputs", "partition_rows", "run_stage", "stage_fn",
           "stage_reads", "write_empty"]
