"""Running whole days: ``dualrec run`` and ``dualrec backfill`` over the stages of :mod:`dualrec.registry`.

The stage functions are the same ones ``spark-submit jobs/<stage>.py`` and the Airflow DAG
call, so every entry point produces identical outputs. A day is complete when
``<lake>/_runs/dt=D/_SUCCESS`` exists (written last, with the stage timings); backfill skips
complete days unless forced, and resumes from the first incomplete one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Iterator

import pyarrow.compute as pc
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from dualrec.config import DualRecConfig
from dualrec.lake import Lake, LakeError, date_range, parse_date
from dualrec.registry import STAGES, stage_inputs, table_producer
from dualrec.progress import Progress, as_progress
from dualrec.stages.base import StageContext, StageError, check_stage_inputs, run_stage, stage_fn

log = logging.getLogger(__name__)

class RunLockedError(RuntimeError):
    """Another run of the same day holds the lock (an expected condition: exit 1, no traceback)."""

    expected = True


class SanityError(StageError):
    """The stages of a day ran but their outputs say the day is broken (e.g. nobody available)."""


def run_rel(day: dt.date) -> str:
    return f"_runs/dt={day.isoformat()}"


@contextmanager
def day_lock(lake: Lake, day: dt.date) -> Iterator[None]:
    """Refuse a second concurrent run of the same day instead of interleaving two.

    Local lakes use a kernel file lock (:mod:`filelock`): the kernel releases it when the
    holding process dies, so a killed run never leaves a stale lock behind. The lock file's
    owner note (host, pid, start) is only for the message. Object stores have no lock
    primitive; there the scheduler must serialise runs of a day (the DAG sets
    ``max_active_runs=1``).
    """
    if "://" in lake.root and not lake.root.startswith("file://"):
        yield
        return
    path = lake.fs_path(f"_locks/dt={day.isoformat()}.lock")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lock = FileLock(path, timeout=0)
    owner_path = path + ".owner"
    try:
        lock.acquire()
    except Timeout:
        try:
            held = open(owner_path, encoding="utf-8").read()
        except OSError:
            held = "?"
        raise RunLockedError(f"day {day} is already being run (lock {path} held by {held})") from None
    try:
        with open(owner_path, "w", encoding="utf-8") as f:
            f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}))
        yield
    finally:
        try:
            os.unlink(owner_path)
        except FileNotFoundError:
            pass
        lock.release()


@contextmanager
def day_log(lake: Lake, day: dt.date) -> Iterator[str | None]:
    """Copy every ``dualrec`` log record of the run into ``<lake>/_logs/dt=D/run.log``.

    The console shows progress and warnings only; the file keeps the whole story of the day
    (appended across reruns) for whoever investigates it later. Local lakes only.
    """
    if "://" in lake.root and not lake.root.startswith("file://"):
        yield None
        return
    path = lake.fs_path(f"_logs/dt={day.isoformat()}/run.log")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("dualrec")
    old_level = root.level
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


def stages_from(start: str | None = None, only: list[str] | None = None) -> list[str]:
    """The stages of a partial rerun: ``only`` (in day order) or every stage from ``start`` on."""
    if only and start:
        raise ValueError("give either --stage or --from-stage, not both")
    for name in [*(only or []), *([start] if start else [])]:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    if only:
        return [s for s in STAGES if s in set(only)]
    if start:
        return list(STAGES[STAGES.index(start):])
    return list(STAGES)


def previous_timings(lake: Lake, day: dt.date, look_back: int = 7) -> dict[str, float]:
    """Stage timings of the most recent complete day before ``day`` (the progress ETA)."""
    for k in range(1, look_back + 1):
        d = day - dt.timedelta(days=k)
        if is_day_done(lake, d):
            return stage_timings(lake, d)
    return {}


def run_day(
    lake: Lake,
    day: dt.date | str,
    cfg: DualRecConfig,
    stages: list[str] | None = None,
    progress: Progress | Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Run the stages of one day in order; returns seconds per stage.

    Raises the stage's error (naming the stage) on failure; the day is then not marked
    complete, and a rerun starts again from the first stage (stages are idempotent). A
    partial run (``stages``) never marks the day complete unless it ends with the last stage
    and every earlier stage is already recorded.
    """
    day = parse_date(day)
    names = list(stages or STAGES)
    prog = as_progress(progress)
    timings: dict[str, float] = dict(stage_timings(lake, day)) if stages else {}
    with day_lock(lake, day), day_log(lake, day):
        ctx = StageContext(lake=lake, day=day, cfg=cfg, progress=prog)
        prog.start_day(day, names, previous_timings(lake, day))
        try:
            for i, name in enumerate(names, 1):
                prog.stage_started(i, name)
                t0 = time.time()
                result = run_stage(name, stage_fn(name), ctx)
                timings[name] = round(time.time() - t0, 3)
                prog.stage_done(i, name, timings[name], _brief(result))
                _write_timings(lake, day, timings, complete=False)
        finally:
            prog.close()
        if all(s in timings for s in STAGES):
            sanity_gates(lake, day, cfg)  # a broken day is left incomplete, so a backfill reruns it
            _write_timings(lake, day, timings, complete=True)
    return timings


def sanity_gates(lake: Lake, day: dt.date, cfg: DualRecConfig) -> dict[str, int]:
    """Refuse to mark a day complete when its outputs are empty although it had uploads.

    On a day with uploads (items dt=D non-empty), zero available users, zero candidates or
    zero matches means something upstream went wrong (a config that makes nobody
    available, a broken channel ...): the day fails with a message naming the gate and stays
    incomplete. A gate listed in ``validation.expect_empty`` is accepted (logged).
    """
    counts = {
        "items": _rows(lake, "items", day),
        "available_users": _available(lake, day),
        "candidates": _rows(lake, "candidates", day),
        "matches": _rows(lake, "match_sets", day),
    }
    if not counts["items"]:
        return counts
    expected = set(cfg.validation.expect_empty)
    what = {
        "available_users": "no user is available in activity_scores (check activity.slack / policy / min_available)",
        "candidates": "no channel retrieved any candidate",
        "matches": "dispatch matched no (item, user) pair",
    }
    # a gate applies when the stage that produces its table is part of the day (STAGES)
    gated = [g for g, stage in (("available_users", "activity"), ("candidates", "retrieve"), ("matches", "dispatch"))
             if stage in STAGES]
    failed = [g for g in gated if counts[g] == 0 and g not in expected]
    for g in gated:
        if counts[g] == 0 and g in expected:
            log.warning("day %s: %s (accepted: validation.expect_empty lists %r)", day, what[g], g)
    if failed:
        raise SanityError(
            f"day {day} is not marked complete: it has {counts['items']} upload(s) but "
            + "; ".join(f"{what[g]} [gate {g!r}]" for g in failed)
            + ". Fix the cause and rerun the day, or list the gate in validation.expect_empty if this is expected."
        )
    return counts


def _rows(lake: Lake, table: str, day: dt.date) -> int:
    if not lake.has_partition(table, day):
        return 0
    return sum(pq.ParquetFile(f, filesystem=lake.fs).metadata.num_rows for f in lake.data_files(table, day))


def _available(lake: Lake, day: dt.date) -> int:
    if not lake.has_partition("activity_scores", day):
        return 0
    col = lake.read_table("activity_scores", day, columns=["available"]).column("available")
    return int(pc.sum(col).as_py() or 0)


def _brief(result: dict) -> str:
    keep = {k: v for k, v in result.items() if k != "seconds" and isinstance(v, (int, float, str))}
    return " ".join(f"{k}={v}" for k, v in list(keep.items())[:6])


def _write_timings(lake: Lake, day: dt.date, timings: dict[str, float], complete: bool) -> None:
    """Stage timings live in ``_runs/dt=D/stages.json``; ``_SUCCESS`` there marks the day complete."""
    rel = run_rel(day)
    with lake.publish_dir(rel) as staging:
        lake.write_text(f"{staging}/stages.json", json.dumps(timings, indent=2, sort_keys=True))
        if not complete:
            # publish_dir writes _SUCCESS on exit; an unfinished day gets a marker of its own instead
            lake.write_text(f"{staging}/_SUCCESS", "")
            lake.write_text(f"{staging}/_INCOMPLETE", "")
    if complete:
        log.info("day %s complete", day)


def is_day_done(lake: Lake, day: dt.date | str) -> bool:
    """True when every stage of the day finished (``dualrec run`` completed)."""
    rel = run_rel(parse_date(day))
    return lake.is_complete(rel) and not lake.exists(f"{rel}/_INCOMPLETE")


def stage_timings(lake: Lake, day: dt.date | str) -> dict[str, float]:
    rel = f"{run_rel(parse_date(day))}/stages.json"
    return json.loads(lake.read_text(rel)) if lake.exists(rel) else {}


def backfill(
    lake: Lake,
    start: dt.date | str,
    end: dt.date | str,
    cfg: DualRecConfig,
    force: bool = False,
    progress: Progress | Callable[[str], None] | None = None,
) -> dict[str, str]:
    """Run days in order; complete days are skipped unless ``force``; stops at the first failure.

    Running days in order matters: day D warm-starts from day D-1's models, so a backfill
    equals running the days one by one.
    """
    days = date_range(start, end)
    if not days:
        raise ValueError(f"empty date range {start}..{end}")
    prog = as_progress(progress)
    say = prog.message
    status: dict[str, str] = {}
    for n, day in enumerate(days, 1):
        if not force and is_day_done(lake, day):
            status[day.isoformat()] = "skipped (complete)"
            say(f"backfill {n}/{len(days)}: {day} already complete, skipped")
            continue
        say(f"backfill {n}/{len(days)}: {day}")
        run_day(lake, day, cfg, progress=prog)
        status[day.isoformat()] = "done"
    return status


def require_inputs(lake: Lake, day: dt.date) -> None:
    """The inputs a day needs before any stage runs (a clear error names the missing one)."""
    for table in ("users", "items", "visits", "interactions"):
        if not lake.has_partition(table, day):
            raise LakeError(f"table {table!r}: partition dt={day} is missing; cannot run day {day}")


__all__ = ["STAGES", "RunLockedError", "SanityError", "backfill", "check_stage_inputs", "day_lock", "is_day_done", "run_day", "sanity_gates",
           "stage_fn", "stage_inputs", "stage_timings", "table_producer"]
