"""``dualrec demo``: the README's one-command tour.

Synthesises a small world (preset ``tiny`` by default: ~2k users, ~100 uploads a day), runs the last days of it through every stage (the first run
day trains the models from scratch, the next warm-starts), evaluates the last run day
against the following day's logs and returns the report path and headline metrics.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from dualrec.config import DualRecConfig
from dualrec.evaluation import evaluate
from dualrec.evaluation.report import write_report, write_trend
from dualrec.lake import Lake, parse_date
from dualrec.pipeline import backfill
from dualrec.progress import Progress, as_progress
from dualrec.synth import generate

log = logging.getLogger(__name__)


def run_demo(
    lake_root: str,
    preset: str = "tiny",
    start: str = "2026-01-01",
    synth_days: int = 12,
    run_days: int = 2,
    seed: int = 7,
    cfg: DualRecConfig | None = None,
    progress: Progress | Callable[[str], None] | None = None,
) -> dict:
    """Synthesise (once), run ``run_days`` days, evaluate the last; returns report path and metrics."""
    prog = as_progress(progress)
    say = prog.message
    cfg = cfg or DualRecConfig(seed=seed)
    if run_days < 1 or synth_days < run_days + 2:
        raise ValueError("demo needs synth_days >= run_days + 2 (history before, logs after)")
    lake = Lake(lake_root)
    first = parse_date(start)
    last_synth = first + dt.timedelta(days=synth_days - 1)
    if not lake.has_partition("visits", last_synth):
        say(f"synthesising a {preset} world: {synth_days} days from {first} into {lake.root}")
        summary = generate(lake.root, preset=preset, start=first.isoformat(), days=synth_days, seed=seed)
        say(f"world: {summary.get('users')} users, {summary.get('uploads_per_day')} uploads/day")
    run_end = last_synth - dt.timedelta(days=1)  # evaluation of D needs D+1's logs
    run_start = run_end - dt.timedelta(days=run_days - 1)
    backfill(lake, run_start, run_end, cfg, progress=prog)
    metrics = evaluate(lake, run_end, cfg)
    report = write_report(lake, run_end, metrics)
    write_trend(lake)
    return {"report": report, "date": run_end.isoformat(), "metrics": metrics}
