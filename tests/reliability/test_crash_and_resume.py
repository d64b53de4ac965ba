"""Crashes, reruns and resumable backfills never lose a day or publish half of one.

- a writer SIGKILLed inside ``publish_dir`` leaves the previous partition (or none) visible;
- a swap that fails half-way puts the previous version back;
- ``python jobs/activity.py`` SIGKILLed while writing ``activity_scores`` leaves the
  previous scores intact, and a rerun gives exactly the scores of an uninterrupted run;
- a backfill that stops on a bad day resumes from that day, skipping completed ones.
"""

from __future__ import annotations

import datetime as dt
import glob
import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dualrec.lake import Lake
from dualrec.pipeline import backfill, is_day_done
from dualrec.stages.base import StageContext, run_stage
from schemas.tables import arrow_schema
from schemas.validate import BadInputError

from relhelpers import DAY, FAST_SET, REPO, fast_cfg, part_file, replaced_partition, table_rows

def _visits(ids: list[int]) -> pa.Table:
    return pa.table({"user_id": ids, "sessions": [1] * len(ids), "watch_ms": [10] * len(ids)}).cast(arrow_schema("visits"))


V1, V2 = _visits([1, 2, 3]), _visits([4, 5])


def _kill_inside_publish(lake: Lake, day: dt.date, data: pa.Table, tmp_path) -> None:
    """Start a writer that stops inside publish_dir (data staged, not swapped) and SIGKILL it."""
    flag = tmp_path / "staged"
    src = tmp_path / "v.parquet"
    pq.write_table(data, src)
    script = textwrap.dedent(f"""
        import sys, time, pyarrow.parquet as pq
        sys.path.insert(0, {REPO!r})
        from dualrec.lake import Lake
        lake = Lake({lake.root!r})
        with lake.publish_dir(lake.partition_rel("visits", {day.isoformat()!r})) as st:
            with lake.fs.open_output_stream(lake.fs_path(st + "/part-00000.parquet")) as f:
                pq.write_table(pq.read_table({str(src)!r}), f)
            open({str(flag)!r}, "w").close()
            time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        while not flag.exists():
            assert proc.poll() is None and time.time() < deadline, "writer ended before staging"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        assert proc.wait(30) == -signal.SIGKILL


def test_writer_killed_inside_publish_leaves_previous_or_nothing(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    fresh = dt.date(2026, 1, 2)
    _kill_inside_publish(lake, fresh, V1, tmp_path)  # first publish of a partition
    assert not lake.has_partition("visits", fresh)
    assert not os.path.exists(lake.fs_path(lake.partition_rel("visits", fresh)))

    lake.write_table("visits", DAY, V1)
    _kill_inside_publish(lake, DAY, V2, tmp_path)  # a rerun replacing it
    assert lake.has_partition("visits", DAY) and lake.read_table("visits", DAY).equals(V1)
    assert glob.glob(lake.fs_path("visits/_staging/*"))  # the killed writer's leftovers ...
    lake.write_table("visits", DAY, V2)  # ... do not block a rerun
    assert lake.read_table("visits", DAY).equals(V2)


class _SwapFailsFS:
    """Fault injection: the move of the staged directory into place fails (disk full, lost node)."""

    def __init__(self, fs):
        self._fs = fs

    def __getattr__(self, name):
        return getattr(self._fs, name)

    def move(self, src, dst):
        if "/_staging/" in src:
            raise OSError("injected failure while swapping the partition in")
        return self._fs.move(src, dst)


def test_failed_swap_restores_the_previous_partition(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    lake.write_table("visits", DAY, V1)
    real = lake._fs
    lake._fs = _SwapFailsFS(real)
    try:
        with pytest.raises(OSError, match="injected"):
            lake.write_table("visits", DAY, V2)
    finally:
        lake._fs = real
    assert lake.has_partition("visits", DAY) and lake.read_table("visits", DAY).equals(V1)


# ------------------------------------------------------------------------------ the activity stage
SCORE_KEYS = ["user_id"]


def _activity(lake: Lake, day: dt.date, spark) -> dict:
    from dualrec.stages.activity import run

    return run_stage("activity", run, StageContext(lake=lake, day=day, cfg=fast_cfg(), _spark=spark))


@pytest.fixture(scope="module")
def baseline(world, spark) -> pa.Table:
    """Day D's scores from an uninterrupted run."""
    _activity(world, DAY, spark)
    return table_rows(world, "activity_scores", DAY, SCORE_KEYS)


def test_activity_killed_mid_write_then_rerun_equals_uninterrupted(world, baseline, spark):
    model_before = open(world.fs_path(f"{Lake.model_rel('activity', DAY)}/model.json"), "rb").read()
    staging = world.fs_path("activity_scores/_staging")
    before = set(glob.glob(f"{staging}/dt={DAY}-*"))
    set_args = sum((["--set", s] for s in [*FAST_SET, "spark.master=local[1]", "spark.shuffle_partitions=2",
                                          "spark.driver_memory=1g"]), [])
    proc = subprocess.Popen(
        [sys.executable, "jobs/activity.py", "--lake", world.root, "--date", DAY.isoformat(), *set_args],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        deadline = time.time() + 240
        while not (set(glob.glob(f"{staging}/dt={DAY}-*")) - before):
            if proc.poll() is not None:
                pytest.fail(f"stage ended before writing activity_scores: {proc.stderr.read().decode()[-3000:]}")
            assert time.time() < deadline, "stage did not reach the activity_scores write in time"
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its JVM, mid-write
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        rc = proc.wait(30)
    assert rc == -signal.SIGKILL
    # the previous published state is intact: same scores, valid, nothing half-visible
    assert world.has_partition("activity_scores", DAY)
    assert world.validate_dir("activity_scores", DAY).ok
    assert table_rows(world, "activity_scores", DAY, SCORE_KEYS).equals(baseline)
    # a rerun completes the day with exactly the uninterrupted outputs (scores and model)
    _activity(world, DAY, spark)
    assert table_rows(world, "activity_scores", DAY, SCORE_KEYS).equals(baseline)
    assert open(world.fs_path(f"{Lake.model_rel('activity', DAY)}/model.json"), "rb").read() == model_before


def test_backfill_stops_on_a_bad_day_and_resumes_without_losing_one(world, baseline, spark, monkeypatch):
    """Days run in order; a failure leaves that day incomplete; the next backfill starts there."""
    import dualrec.pipeline as P

    monkeypatch.setattr(P, "STAGES", ("activity",))
    nxt = DAY + dt.timedelta(days=1)
    cfg = fast_cfg()
    visits = pq.read_table(part_file(world, "visits", nxt))
    with replaced_partition(world, "visits", nxt, pa.concat_tables([visits, visits.slice(0, 2)])):
        with pytest.raises(BadInputError, match=rf"(?s)stage activity \({nxt}\).*table 'visits', partition dt={nxt}"):
            backfill(world, DAY, nxt, cfg)
    assert is_day_done(world, DAY) and not is_day_done(world, nxt)
    assert not world.has_partition("activity_scores", nxt)
    with P.day_lock(world, nxt):  # the failed run released its lock (a kernel lock: the file may stay)
        pass
    assert table_rows(world, "activity_scores", DAY, SCORE_KEYS).equals(baseline)  # rerun of D: identical
    mtime = os.path.getmtime(world.fs_path(f"{world.partition_rel('activity_scores', DAY)}/_SUCCESS"))

    status = backfill(world, DAY, nxt, cfg)
    assert status == {DAY.isoformat(): "skipped (complete)", nxt.isoformat(): "done"}
    assert is_day_done(world, nxt) and world.validate_dir("activity_scores", nxt).ok
    assert os.path.getmtime(world.fs_path(f"{world.partition_rel('activity_scores', DAY)}/_SUCCESS")) == mtime
