"""Bad input at the stage boundaries (SPEC section 3): a clear error, exit code 2, nothing published.

Each case corrupts one input partition of day D the way a faulty delivery would (the Parquet
file is rewritten directly), runs the stage through its ``spark-submit`` entry point
(``stage_main``, in-process) and checks: exit code 2, the message names table + partition +
column, and the stage published nothing for D.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dualrec.lake import Lake
from jobs.common import stage_main

from relhelpers import DAY, FAST_SET, REPO, dispatch_lake, part_file, replaced_partition

PART = f"dt={DAY.isoformat()}"


def _drop(col):
    return lambda t: t.drop_columns([col])


def _retype(col, typ):
    return lambda t: t.set_column(t.schema.get_field_index(col), col, t.column(col).cast(typ))


def _null_first(col):
    def f(t):
        arr = t.column(col).to_pylist()
        arr[0] = None
        return t.set_column(t.schema.get_field_index(col), col, pa.array(arr, t.schema.field(col).type))
    return f


def _dup_first(t):
    return pa.concat_tables([t, t.slice(0, 1)])


def _empty(t):
    return t.slice(0, 0)


def _shift_ts(col, delta):
    def f(t):
        arr = t.column(col).combine_chunks()
        vals = arr.to_pylist()
        vals[1] = vals[1] + delta
        return t.set_column(t.schema.get_field_index(col), col, pa.array(vals, arr.type))
    return f


def _emb(kind):
    def f(t):
        embs = t.column("content_emb").to_pylist()
        embs[2] = embs[2][:-1] if kind == "dim" else [float("nan")] + embs[2][1:]
        return t.set_column(t.schema.get_field_index("content_emb"), "content_emb",
                            pa.array(embs, pa.list_(pa.float32())))
    return f


# (table, case, corruption, text the message must contain besides table and partition)
CASES = [
    ("users", "missing column", _drop("region"), "column 'region': missing column"),
    ("users", "wrong type", _retype("follower_count", pa.string()), "column 'follower_count': wrong type"),
    ("users", "null key", _null_first("user_id"), "column 'user_id': 1 row(s) with null key"),
    ("users", "duplicate key", _dup_first, "column 'user_id': 2 row(s) with a duplicate key"),
    ("users", "empty partition", _empty, "empty partition"),
    ("visits", "missing column", _drop("sessions"), "column 'sessions': missing column"),
    ("visits", "wrong type", _retype("watch_ms", pa.float64()), "column 'watch_ms': wrong type"),
    ("visits", "null key", _null_first("user_id"), "column 'user_id': 1 row(s) with null key"),
    ("visits", "duplicate key", _dup_first, "column 'user_id': 2 row(s) with a duplicate key"),
    ("visits", "empty partition", _empty, "empty partition"),
    ("interactions", "missing column", _drop("is_like"), "column 'is_like': missing column"),
    ("interactions", "wrong type", _retype("is_follow", pa.int32()), "column 'is_follow': wrong type"),
    ("interactions", "null key", _null_first("item_id"), "column 'item_id': 1 row(s) with null key"),
    ("interactions", "duplicate key", _dup_first, "column 'user_id,item_id': 2 row(s) with a duplicate key"),
    ("interactions", "timestamp after the day", _shift_ts("ts", dt.timedelta(days=1)), "column 'ts': 1 row(s) with a timestamp outside"),
    ("interactions", "empty partition", _empty, "empty partition"),
    ("items", "missing column", _drop("category"), "column 'category': missing column"),
    ("items", "wrong type", _retype("duration_ms", pa.int32()), "column 'duration_ms': wrong type"),
    ("items", "null key", _null_first("item_id"), "column 'item_id': 1 row(s) with null key"),
    ("items", "duplicate key", _dup_first, "column 'item_id': 2 row(s) with a duplicate key"),
    ("items", "embedding dimension", _emb("dim"), "column 'content_emb': 1 row(s) with embedding dimension != the lake's emb_dim 128"),
    ("items", "embedding NaN", _emb("nan"), "column 'content_emb': 1 row(s) with NaN or infinite values"),
    ("items", "timestamp before the day", _shift_ts("upload_ts", -dt.timedelta(days=1)), "column 'upload_ts': 1 row(s) with a timestamp outside"),
    ("items", "empty partition", _empty, "empty partition"),
]


def _published_nothing(lake: Lake, tables: tuple[str, ...], models: tuple[str, ...] = ()) -> None:
    for t in tables:
        assert not os.path.exists(lake.fs_path(lake.partition_rel(t, DAY))), t
    for m in models:
        assert not os.path.exists(lake.fs_path(Lake.model_rel(m, DAY))), m


def _run(stage: str, lake: Lake, capsys, day=DAY) -> tuple[int, str]:
    import importlib

    fn = importlib.import_module(f"jobs.{stage}").run
    capsys.readouterr()
    rc = stage_main(stage, fn, ["--lake", lake.root, "--date", day.isoformat(), *sum((["--set", s] for s in FAST_SET), [])])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("table,case,corrupt,expect", CASES, ids=[f"{t}-{c}" for t, c, _, _ in CASES])
def test_activity_stage_rejects_bad_input(world, capsys, table, case, corrupt, expect):
    bad = corrupt(pq.read_table(part_file(world, table, DAY)))
    with replaced_partition(world, table, DAY, bad):
        rc, err = _run("activity", world, capsys)
    assert rc == 2, err
    assert f"stage activity ({DAY})" in err
    assert f"table {table!r}, partition {PART}" in err and expect in err, err
    if case not in ("empty partition", "missing column", "wrong type"):
        assert "sample rows:" in err  # a sample of the offending rows is shown
    _published_nothing(world, ("activity_scores",), ("activity",))


@pytest.mark.parametrize("table", ["users", "visits", "interactions", "items"])
def test_missing_input_partition_names_table_and_date(world, capsys, table):
    with replaced_partition(world, table, DAY, None):
        rc, err = _run("activity", world, capsys)
    assert rc == 2
    assert f"table {table!r}: partition {PART} is missing" in err and "upstream delivery" in err, err
    _published_nothing(world, ("activity_scores",), ("activity",))


def test_half_written_partition_counts_as_missing(world, capsys):
    """A partition directory without _SUCCESS (a writer died) is not read as data."""
    marker = os.path.join(world.fs_path(world.partition_rel("visits", DAY)), "_SUCCESS")
    os.rename(marker, marker + ".x")
    try:
        rc, err = _run("activity", world, capsys)
    finally:
        os.rename(marker + ".x", marker)
    assert rc == 2 and f"table 'visits': partition {PART} is missing" in err


def test_date_with_no_prior_history(world, capsys, spark):
    first = dt.date(2026, 1, 1)
    rc, err = _run("activity", world, capsys, day=first)
    assert rc == 2
    assert "table 'visits'" in err and "no prior history" in err and "dt=2026-01-01" in err, err
    assert not world.has_partition("activity_scores", first)


def test_bad_input_exit_code_from_a_real_process(world, tmp_path):
    """``python jobs/activity.py`` really exits 2 (the validator fails before Spark starts)."""
    bad = pq.read_table(part_file(world, "items", DAY)).drop_columns(["content_emb"])
    with replaced_partition(world, "items", DAY, bad):
        proc = subprocess.run(
            [sys.executable, "jobs/activity.py", "--lake", world.root, "--date", DAY.isoformat()],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"table 'items', partition {PART}, column 'content_emb': missing column" in proc.stderr


# ------------------------------------------------------------------------------ dispatch stage
@pytest.fixture(scope="module")
def dlake(tmp_path_factory) -> Lake:
    return dispatch_lake(tmp_path_factory.mktemp("rel_dispatch") / "lake")


ITEM_CASES = [c for c in CASES if c[0] == "items" and c[1] != "embedding dimension"] + [
    ("items", "embedding dimension", _emb("dim"), "column 'content_emb': 1 row(s) with embedding dimension != the lake's emb_dim 4"),
]


@pytest.mark.parametrize("table,case,corrupt,expect", ITEM_CASES, ids=[c for _, c, _, _ in ITEM_CASES])
def test_dispatch_stage_rejects_bad_items(dlake, capsys, table, case, corrupt, expect):
    bad = corrupt(pq.read_table(part_file(dlake, table, DAY)))
    with replaced_partition(dlake, table, DAY, bad):
        rc, err = _run("dispatch", dlake, capsys)
    assert rc == 2, err
    assert f"stage dispatch ({DAY})" in err and f"table 'items', partition {PART}" in err and expect in err, err
    _published_nothing(dlake, ("match_sets", "user_match_sets", "available_users"))


@pytest.mark.parametrize("table,producer", [("activity_scores", "activity"), ("ranked", "rank")])
def test_dispatch_missing_derived_partition_names_producer(dlake, capsys, table, producer):
    with replaced_partition(dlake, table, DAY, None):
        rc, err = _run("dispatch", dlake, capsys)
    assert rc == 2
    assert f"table {table!r}: partition {PART} is missing" in err and f"run stage {producer!r} for {DAY} first" in err, err
    _published_nothing(dlake, ("match_sets", "user_match_sets", "available_users"))


def test_dispatch_rejects_ranked_rows_in_the_wrong_batch(dlake, capsys, spark):
    """Derived input inconsistent with items (a stale ``ranked``): bad input, nothing published."""
    t = pq.read_table(part_file(dlake, "ranked", DAY))
    bad = t.set_column(0, "batch", pc.add(t.column("batch"), 1).cast(pa.int32()))
    with replaced_partition(dlake, "ranked", DAY, bad):
        rc, err = _run("dispatch", dlake, capsys)
    assert rc == 2 and "'batch'" in err, err
    _published_nothing(dlake, ("match_sets", "user_match_sets", "available_users"))


def test_nan_scores_never_reach_the_assignment():
    """g must be finite: the kernel refuses NaN instead of silently ranking it."""
    from dualrec.dispatch import assign_arrays

    with pytest.raises(ValueError, match="non-finite"):
        assign_arrays([1, 1], [7, 8], np.array([0.5, np.nan]), [0, 0], 3, 5)
