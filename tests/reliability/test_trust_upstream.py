"""Trust nothing upstream (issue 16): history windows, every file, references, corrupt files.

Each test corrupts the tiny world the way a hostile upstream would deliver it and checks
that the stage refuses it before doing any work (exit 2, a message naming table, partition,
file or check, nothing published), or, where an operator chose a policy, that the choice is
applied and recorded.
"""

from __future__ import annotations

import datetime as dt
import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dualrec.config import DualRecConfig
from dualrec.lake import Lake
from dualrec.stages.base import check_stage_inputs
from jobs.common import stage_main
from schemas.feedback import RANK_TASKS

from relhelpers import DAY, FAST_SET, part_file, replaced_partition

PREV = DAY - dt.timedelta(days=3)  # inside every window of activity (lookback 30 days)


def _run(stage: str, lake: Lake, capsys, *sets: str) -> tuple[int, str]:
    import importlib

    fn = importlib.import_module(f"jobs.{stage}").run
    capsys.readouterr()
    args = ["--lake", lake.root, "--date", DAY.isoformat()]
    for s in (*FAST_SET, *sets):
        args += ["--set", s]
    rc = stage_main(stage, fn, args)
    return rc, capsys.readouterr().err


def _nothing_published(lake: Lake) -> None:
    assert not lake.has_partition("activity_scores", DAY)
    assert not os.path.exists(lake.fs_path(Lake.model_rel("activity", DAY)))


def _cfg(**validation) -> DualRecConfig:
    return DualRecConfig.from_dict({"activity": {"train_target_days": 2}, "validation": validation})


@pytest.fixture()
def extra_file(world):
    """Add a file to a partition (removed afterwards); returns a function (table, day, data, name)."""
    added: list[str] = []

    def add(table: str, day: dt.date, data: pa.Table | bytes, name: str) -> str:
        path = os.path.join(world.fs_path(world.partition_rel(table, day)), name)
        if isinstance(data, bytes):
            with open(path, "wb") as f:
                f.write(data)
        else:
            pq.write_table(data, path)
        added.append(path)
        return path

    yield add
    for p in added:
        os.remove(p)


# ----------------------------------------------------------------------------- 1. history
def test_missing_partition_inside_the_window_is_an_error(world, capsys):
    with replaced_partition(world, "visits", PREV, None):
        rc, err = _run("activity", world, capsys)
    assert rc == 2, err
    assert f"table 'visits': partition dt={PREV} is missing inside the window" in err, err
    assert "stage 'activity'" in err and "validation.allow_missing" in err
    _nothing_published(world)


def test_allow_missing_accepts_a_listed_gap_and_records_it(world):
    entry = f"visits:{PREV.isoformat()}"
    with replaced_partition(world, "visits", PREV, None):
        with pytest.raises(Exception, match="is missing inside the window"):
            check_stage_inputs(world, "activity", DAY, set(), _cfg())
        checks = check_stage_inputs(world, "activity", DAY, set(), _cfg(allow_missing=[entry]))
    assert checks.allowed_missing == [entry]
    rec = world.read_check("_stages", DAY, "activity")
    assert rec["allowed_missing"] == [entry] and rec["stage"] == "activity"


@pytest.mark.parametrize(
    "table,case,expect",
    [
        ("visits", "null key", "column 'user_id': 1 row(s) with null key"),
        ("interactions", "duplicate key", "row(s) with a duplicate key"),
        ("users", "null key", "column 'user_id': 1 row(s) with null key"),
    ],
)
def test_bad_history_partition_stops_the_stage(world, capsys, table, case, expect):
    """Null keys and duplicate rows in an earlier day of the window are found before training."""
    day = DAY - dt.timedelta(days=1)
    t = pq.read_table(part_file(world, table, day))
    if case == "null key":
        ids = t.column("user_id").to_pylist()
        ids[0] = None
        bad = t.set_column(t.schema.get_field_index("user_id"), "user_id", pa.array(ids, pa.int64()))
    else:
        bad = pa.concat_tables([t, t.slice(0, 50)])
    with replaced_partition(world, table, day, bad):
        rc, err = _run("activity", world, capsys)
    assert rc == 2, err
    assert f"table {table!r}, partition dt={day}" in err and expect in err, err
    _nothing_published(world)


def test_validation_is_cached_per_content_version(world):
    memo: set = set()
    first = check_stage_inputs(world, "activity", DAY, memo, _cfg())
    again = check_stage_inputs(world, "activity", DAY, set(), _cfg())  # new process: the lake's cache answers
    assert first.partitions == again.partitions > 20 and again.validated == 0 and again.cached == again.partitions
    # a redelivered partition (new bytes) is validated again, and a bad one is never taken from the cache
    t = pq.read_table(part_file(world, "visits", PREV))
    with replaced_partition(world, "visits", PREV, pa.concat_tables([t, t.slice(0, 1)])):
        with pytest.raises(Exception, match="duplicate key"):
            check_stage_inputs(world, "activity", DAY, set(), _cfg())
    no_cache = check_stage_inputs(world, "activity", DAY, set(), _cfg(cache=False))
    assert no_cache.validated == no_cache.partitions


# ----------------------------------------------------------------------------- 2. every file
def test_a_file_without_parquet_suffix_is_validated(world, capsys, extra_file):
    """Spark reads a Hive-style ``000001_0``; so does the validator (and so do PyArrow readers)."""
    t = pq.read_table(part_file(world, "interactions", PREV))
    extra_file("interactions", PREV, t.slice(0, 3), "000001_0")
    assert any(p.endswith("000001_0") for p in world.data_files("interactions", PREV))
    assert world.read_table("interactions", PREV).num_rows == t.num_rows + 3
    rc, err = _run("activity", world, capsys)
    assert rc == 2, err
    assert f"table 'interactions', partition dt={PREV}" in err and "duplicate key" in err, err
    _nothing_published(world)


@pytest.mark.parametrize("day", [DAY, PREV], ids=["day-D", "history"])
def test_every_file_schema_is_checked_no_narrowing(world, capsys, extra_file, day):
    """A second file with is_like as int32 = 300 would be read back as 44 (int8 wrap-around)."""
    t = pq.read_table(part_file(world, "interactions", day)).slice(0, 1)
    uid = pc.add(t.column("user_id"), 10_000_000)  # a new key: only the type is wrong
    t = t.set_column(0, "user_id", uid)
    t = t.set_column(t.schema.get_field_index("is_like"), "is_like", pa.array([300], pa.int32()))
    extra_file("interactions", day, t, "part-00001.parquet")
    rc, err = _run("activity", world, capsys)
    assert rc == 2, err
    assert (f"table 'interactions', partition dt={day}, column 'is_like': wrong type: expected int8, found int32"
            in err and "in file 'part-00001.parquet'" in err), err
    _nothing_published(world)


# ----------------------------------------------------------------------------- 3. references
def _with_rows(lake: Lake, table: str, day: dt.date, edit) -> pa.Table:
    t = pq.read_table(part_file(lake, table, day))
    return edit(t)


def _set(t: pa.Table, col: str, row: int, value) -> pa.Table:
    vals = t.column(col).to_pylist()
    vals[row] = value
    return t.set_column(t.schema.get_field_index(col), col, pa.array(vals, t.schema.field(col).type))


def _first_upload(lake: Lake, item_id: int) -> dt.datetime:
    for d in lake.partitions("items"):
        it = lake.read_table("items", d, columns=["item_id", "upload_ts"])
        hit = pc.equal(it.column("item_id"), item_id)
        if pc.any(hit).as_py():
            return it.filter(hit).column("upload_ts")[0].as_py()
    raise AssertionError(item_id)


def _unknown_item(t):
    return _set(t, "item_id", 0, 999_999_999)


def _unknown_user(t):
    return _set(t, "user_id", 0, 888_888_888)


REF_CASES = [
    ("interactions", "interactions_items", _unknown_item, "column 'item_id': 1 row(s) reference an item that is in no items partition"),
    ("interactions", "interactions_users", _unknown_user, "column 'user_id': 1 row(s) reference a user absent from the users snapshot"),
    ("visits", "visits_users", _unknown_user, "column 'user_id': 1 row(s) reference a user absent from the users snapshot"),
    ("interactions", "interaction_after_upload", None, "column 'ts': 1 row(s) are timestamped before the item's upload_ts"),
]


def _before_upload(lake: Lake, day: dt.date):
    """An interaction of ``day`` moved to just before its item's upload (still inside the day)."""
    def edit(t):
        lo = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
        ups = {int(i): _first_upload(lake, int(i)) for i in t.column("item_id").to_pylist()[:200]}
        row = next(k for k, i in enumerate(t.column("item_id").to_pylist()[:200]) if ups[int(i)] > lo + dt.timedelta(seconds=2))
        return _set(t, "ts", row, ups[int(t.column("item_id")[row].as_py())] - dt.timedelta(seconds=1))
    return edit


@pytest.mark.parametrize("table,check,edit,expect", REF_CASES, ids=[c[1] for c in REF_CASES])
def test_referential_checks_error_by_default(world, capsys, table, check, edit, expect):
    edit = edit or _before_upload(world, PREV)
    with replaced_partition(world, table, PREV, _with_rows(world, table, PREV, edit)):
        rc, err = _run("activity", world, capsys)
    assert rc == 2, err
    assert f"table {table!r}, partition dt={PREV}, {expect}" in err and f"check {check!r}" in err, err
    assert "sample rows:" in err
    _nothing_published(world)


@pytest.mark.parametrize("table,check,edit,expect", REF_CASES, ids=[c[1] for c in REF_CASES])
def test_referential_drop_and_report(world, table, check, edit, expect):
    """With ``drop_and_report`` the offending rows are left out by every reader and counted."""
    edit = edit or _before_upload(world, PREV)
    bad = _with_rows(world, table, PREV, edit)
    with replaced_partition(world, table, PREV, bad):
        checks = check_stage_inputs(world, "activity", DAY, set(), _cfg(referential={check: "drop_and_report"}))
        assert checks.dropped == {check: 1}
        assert world.read_table(table, PREV).num_rows == bad.num_rows - 1
        again = check_stage_inputs(world, "activity", DAY, set(), _cfg(referential={check: "drop_and_report"}))
        assert again.dropped == {check: 1} and again.validated == 0  # the count survives the cache
        rec = world.read_check("_stages", DAY, "activity")
        assert rec["dropped"] == {check: 1}
    # the partition is redelivered clean: the stale drop list no longer applies
    assert world.read_table(table, PREV).num_rows == bad.num_rows


def test_drop_and_report_rows_are_absent_from_spark_reads(world, spark):
    bad = _with_rows(world, "interactions", PREV, _unknown_item)
    with replaced_partition(world, "interactions", PREV, bad):
        check_stage_inputs(world, "activity", DAY, set(), _cfg(referential={"interactions_items": "drop_and_report"}))
        df = world.read_df(spark, "interactions", [PREV])
        assert df.count() == bad.num_rows - 1
        assert df.where("item_id = 999999999").count() == 0


# ----------------------------------------------------------------------------- 6. corrupt files
def _truncated(world, day):
    with open(part_file(world, "visits", day), "rb") as f:
        data = f.read()
    return data[: len(data) // 2]


CORRUPT = [
    ("zero-byte", lambda w, d: b"", "zero-byte file"),
    ("truncated", _truncated, "not a readable Parquet file"),
    ("not parquet", lambda w, d: b"user_id,sessions\n1,2\n", "not a readable Parquet file"),
]


@pytest.mark.parametrize("case,make,expect", CORRUPT, ids=[c[0] for c in CORRUPT])
@pytest.mark.parametrize("day", [DAY, PREV], ids=["day-D", "history"])
def test_corrupt_file_named_exit_2(world, capsys, extra_file, case, make, expect, day):
    extra_file("visits", day, make(world, day), "part-00009.parquet")
    rc, err = _run("activity", world, capsys)
    assert rc == 2, err
    assert f"table 'visits', partition dt={day}, file 'part-00009.parquet': {expect}" in err, err
    _nothing_published(world)


def _mixed(world, day):
    """A second file whose user_id is a string: the two files' types cannot be merged."""
    t = pq.read_table(part_file(world, "visits", day)).slice(0, 2)
    return t.set_column(0, "user_id", pa.array(["a", "b"]))


def test_mixed_schema_files_named(world, capsys, extra_file):
    extra_file("visits", DAY, _mixed(world, DAY), "part-00001.parquet")
    rc, err = _run("activity", world, capsys)
    assert rc == 2, err
    assert (f"table 'visits', partition dt={DAY}, column 'user_id': wrong type: expected int64, found string"
            " in file 'part-00001.parquet'") in err, err


def test_dualrec_validate_never_crashes(world, capsys, extra_file):
    from jobs.cli import main

    extra_file("visits", DAY, _mixed(world, DAY), "part-00001.parquet")
    extra_file("users", PREV, b"", "part-00002.parquet")
    extra_file("interactions", PREV, _truncated(world, PREV), "000003_0")
    capsys.readouterr()
    rc = main(["validate", "--lake", world.root])
    out = capsys.readouterr().out
    assert rc == 2
    assert f"table 'visits', partition dt={DAY}, column 'user_id': wrong type" in out
    assert f"table 'users', partition dt={PREV}, file 'part-00002.parquet': zero-byte file" in out
    assert f"table 'interactions', partition dt={PREV}, file '000003_0': not a readable Parquet file" in out
    assert "validated" in out and "3 with problems" in out, out


def test_dualrec_run_exits_2_on_a_corrupt_file(world, capsys, extra_file):
    from jobs.cli import main

    extra_file("items", DAY, b"PAR1\x00\x00garbage", "part-00005.parquet")
    capsys.readouterr()
    rc = main(["run", "--lake", world.root, "--date", DAY.isoformat(), *sum((["--set", s] for s in FAST_SET), [])])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"table 'items', partition dt={DAY}, file 'part-00005.parquet': not a readable Parquet file" in err, err
    assert not world.has_partition("activity_scores", DAY)


# ----------------------------------------------------------------------------- 4. sanity gates
@pytest.fixture()
def gate_lake(tmp_path):
    from relhelpers import dispatch_lake

    return dispatch_lake(tmp_path / "lake")


def _nobody_available(lake: Lake) -> None:
    t = lake.read_table("activity_scores", DAY)
    lake.write_table("activity_scores", DAY, t.set_column(2, "available", pa.array([False] * t.num_rows)))


def test_sanity_gates_refuse_an_empty_day_with_uploads(gate_lake):
    from dualrec.pipeline import SanityError, sanity_gates

    cfg = DualRecConfig()
    _nobody_available(gate_lake)
    with pytest.raises(SanityError) as e:
        sanity_gates(gate_lake, DAY, cfg)
    msg = str(e.value)
    assert "30 upload(s)" in msg and "no user is available" in msg and "gate 'available_users'" in msg
    assert "gate 'candidates'" in msg and "gate 'matches'" in msg  # nothing retrieved, nothing matched
    ok = DualRecConfig.from_dict({"validation": {"expect_empty": ["available_users", "candidates", "matches"]}})
    assert sanity_gates(gate_lake, DAY, ok)["available_users"] == 0


def test_a_broken_day_is_not_marked_complete(gate_lake, monkeypatch):
    """run_day with every stage 'succeeding' but nobody available: exit 1 semantics, day incomplete."""
    import dualrec.pipeline as P
    from jobs.common import EXIT_FAILED, exit_code

    _nobody_available(gate_lake)
    monkeypatch.setattr(P, "run_stage", lambda name, fn, ctx: {})  # the stages' own work is not under test
    monkeypatch.setattr(P, "stage_fn", lambda name: None)
    assert exit_code(lambda: P.run_day(gate_lake, DAY, DualRecConfig())) == EXIT_FAILED
    assert not P.is_day_done(gate_lake, DAY)
    P.run_day(gate_lake, DAY, DualRecConfig.from_dict(
        {"validation": {"expect_empty": ["available_users", "candidates", "matches"]}}))
    assert P.is_day_done(gate_lake, DAY)


def test_a_day_without_uploads_passes_the_gates(gate_lake):
    from dualrec.pipeline import sanity_gates

    items = gate_lake.read_table("items", DAY).slice(0, 0)
    gate_lake.write_meta({"emb_dim": 4, "allow_empty_tables": ["items"]})
    gate_lake.write_table("items", DAY, items)
    _nobody_available(gate_lake)
    assert sanity_gates(gate_lake, DAY, DualRecConfig())["items"] == 0


def test_writing_a_derived_table_never_narrows_silently(spark, tmp_path):
    """conform_df casts a derived frame to its contract; an integer that does not fit the contract's
    narrower type must fail the write (Spark's ANSI casts), not wrap around as the int8 case above."""
    import pyspark.errors
    from pyspark.sql import functions as F

    from dualrec.lake import conform_df

    row = dict(batch=2**40, item_id=1, user_id=2, channels=["two_tower"], theta=0.5, g=0.5,
               **{f"s_{t}": 0.1 for t in RANK_TASKS})
    df = spark.createDataFrame([row]).withColumn("batch", F.col("batch").cast("long"))
    with pytest.raises((pyspark.errors.ArithmeticException, pyspark.errors.PySparkException)) as e:
        conform_df("ranked", df).collect()
    assert "CAST_OVERFLOW" in str(e.value) or "overflow" in str(e.value).lower()
    ok = conform_df("ranked", df.withColumn("batch", F.lit(3).cast("long"))).collect()
    assert ok[0]["batch"] == 3
