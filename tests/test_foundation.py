"""Config, lake I/O (atomic publish) and the validator's bad-input cases."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dualrec.config import DualRecConfig
from dualrec.lake import Lake
from jobs.cli import main as cli_main
from schemas.tables import arrow_schema, spark_schema
from schemas.validate import BadInputError, validate_arrow

DAY = dt.date(2026, 1, 3)
TS0 = dt.datetime(2026, 1, 3, 10, tzinfo=dt.timezone.utc)


# ---------------------------------------------------------------------- config
def test_config_defaults_follow_the_paper():
    cfg = DualRecConfig()
    assert (cfg.dispatch.L, cfg.dispatch.Q) == (200, 10)
    assert cfg.rank.beta["like"] > cfg.rank.beta["long_view"]


def test_config_loads_yaml_and_toml_and_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("dispatch:\n  Q: 5\n  policy: matching\nrank:\n  beta:\n    like: 4.0\n")
    cfg = DualRecConfig.load(y, {"dispatch.L": "50"})
    assert (cfg.dispatch.Q, cfg.dispatch.L, cfg.dispatch.policy) == (5, 50, "matching")
    assert cfg.rank.beta["like"] == 4.0 and cfg.rank.beta["comment"] == 2.0  # merged with defaults
    t = tmp_path / "c.toml"
    t.write_text("seed = 3\n[activity]\npolicy = 'probability'\n")
    assert DualRecConfig.load(t).activity.policy == "probability"


@pytest.mark.parametrize(
    "data, msg",
    [
        ({"dispatch": {"Qq": 3}}, "unknown key"),
        ({"dispatch": {"Q": "ten"}}, "must be int"),
        ({"dispatch": {"policy": "magic"}}, "policy"),
        ({"retrieval": {"channels": ["two_tower", "nope"]}}, "unknown channel.*nope"),
        ({"retrieval": {"k": {"two_tower": 0}}}, "greater than or equal to 1|k"),
    ],
)
def test_config_rejects_bad_values(data, msg):
    with pytest.raises(ValueError, match=msg):
        DualRecConfig.from_dict(data)


# ---------------------------------------------------------------------- schemas
def test_spark_schema_is_derived_from_arrow():
    arrow = arrow_schema("items")
    sp = spark_schema("items")
    assert [f.name for f in arrow] == sp.fieldNames()
    assert sp["content_emb"].dataType.simpleString() == "array<float>"
    assert spark_schema("user_match_sets")["items"].dataType.simpleString() == "array<struct<item_id:bigint,g:float>>"


# ---------------------------------------------------------------------- lake
def _items(n: int = 4, dim: int = 4) -> pa.Table:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    return pa.table(
        {
            "item_id": pa.array(np.arange(1, n + 1), pa.int64()),
            "creator_id": pa.array(np.arange(n) % 2, pa.int64()),
            "upload_ts": pa.array([TS0 + dt.timedelta(minutes=i) for i in range(n)], pa.timestamp("us", tz="UTC")),
            "category": pa.array(np.zeros(n), pa.int32()),
            "duration_ms": pa.array(np.full(n, 1000), pa.int64()),
            "content_emb": pa.array(list(emb), pa.list_(pa.float32())),
        }
    )


@pytest.fixture()
def lake(tmp_path) -> Lake:
    lk = Lake(str(tmp_path / "lake"))
    lk.write_meta({"emb_dim": 4})
    return lk


def test_write_read_roundtrip_and_rerun_replaces(lake):
    lake.write_table("items", DAY, _items(4))
    assert lake.partitions("items") == [DAY]
    assert lake.read_table("items", DAY).num_rows == 4
    lake.write_table("items", DAY, _items(2))
    assert lake.read_table("items", DAY).num_rows == 2
    assert lake.read_tables("items", [DAY, DAY + dt.timedelta(days=1)]).column("dt").to_pylist() == [DAY, DAY]


def test_failed_publish_leaves_nothing_visible(lake):
    with pytest.raises(RuntimeError):
        with lake.publish_dir(lake.partition_rel("items", DAY)) as staging:
            lake.write_text(staging + "/part-0.parquet", "half")
            raise RuntimeError("crash")
    assert lake.partitions("items") == []
    assert not lake.exists(lake.partition_rel("items", DAY))


def test_killed_publish_leaves_previous_state(lake, tmp_path):
    """A writer killed with SIGKILL mid-publish: the old partition is intact, no new one appears."""
    lake.write_table("items", DAY, _items(3))
    script = tmp_path / "writer.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, signal, sys, time
            sys.path.insert(0, {os.getcwd()!r})
            from dualrec.lake import Lake
            lake = Lake({lake.root!r})
            with lake.publish_dir(lake.partition_rel("items", "2026-01-03")) as st:
                lake.write_text(st + "/part-0.parquet", "garbage")
                with lake.publish_dir(lake.partition_rel("items", "2026-01-04")) as st2:
                    lake.write_text(st2 + "/part-0.parquet", "garbage")
                    os.kill(os.getpid(), signal.SIGKILL)
            """
        )
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert lake.partitions("items") == [DAY]
    assert lake.read_table("items", DAY).num_rows == 3
    assert lake.validate_dir("items", DAY).ok


def test_spark_write_is_validated_before_publish(spark, lake):
    good = spark.createDataFrame(_items(3).to_pandas())
    lake.write_df(good, "items", DAY)
    assert lake.read_df(spark, "items", [DAY]).count() == 3
    bad = spark.createDataFrame(_items(3).to_pandas()).unionByName(spark.createDataFrame(_items(1).to_pandas()))
    with pytest.raises(BadInputError, match="duplicate key"):
        lake.write_df(bad, "items", DAY)
    assert lake.read_table("items", DAY).num_rows == 3  # previous partition untouched


# ---------------------------------------------------------------------- bad input cases
def _corrupt(table: pa.Table, case: str) -> tuple[pa.Table, str]:
    """Return a corrupted copy of a good items table and the column the error must name."""
    if case == "missing_column":
        return table.drop(["category"]), "category"
    if case == "wrong_type":
        return table.set_column(3, "category", pa.array(["a"] * table.num_rows)), "category"
    if case == "null_key":
        ids = table.column("item_id").to_pylist()
        ids[1] = None
        return table.set_column(0, "item_id", pa.array(ids, pa.int64())), "item_id"
    if case == "duplicate_key":
        ids = table.column("item_id").to_pylist()
        ids[1] = ids[0]
        return table.set_column(0, "item_id", pa.array(ids, pa.int64())), "item_id"
    if case == "wrong_dimension":
        emb = table.column("content_emb").to_pylist()
        emb[2] = emb[2][:3]
        return table.set_column(5, "content_emb", pa.array(emb, pa.list_(pa.float32()))), "content_emb"
    if case == "nan_embedding":
        emb = table.column("content_emb").to_pylist()
        emb[0][1] = float("nan")
        return table.set_column(5, "content_emb", pa.array(emb, pa.list_(pa.float32()))), "content_emb"
    if case == "ts_outside_day":
        ts = table.column("upload_ts").to_pylist()
        ts[3] = ts[3] + dt.timedelta(days=1)
        return table.set_column(2, "upload_ts", pa.array(ts, pa.timestamp("us", tz="UTC"))), "upload_ts"
    if case == "empty_partition":
        return table.slice(0, 0), None
    raise AssertionError(case)


CASES = ["missing_column", "wrong_type", "null_key", "duplicate_key", "wrong_dimension", "nan_embedding",
         "ts_outside_day", "empty_partition"]


@pytest.mark.parametrize("case", CASES)
def test_validate_cli_reports_each_bad_input_case(lake, case, capsys):
    bad, column = _corrupt(_items(5), case)
    # write around the validator, as a broken upstream would
    rel = lake.partition_rel("items", DAY)
    os.makedirs(lake.fs_path(rel))
    pq.write_table(bad, lake.fs_path(rel + "/part-0.parquet"))
    lake.write_text(rel + "/_SUCCESS", "")
    code = cli_main(["validate", "--lake", lake.root, "--table", "items", "--date", DAY.isoformat()])
    out = capsys.readouterr().out
    assert code == 2
    assert "'items'" in out and "dt=2026-01-03" in out
    if column:
        assert f"column {column!r}" in out
    if case in ("null_key", "duplicate_key", "nan_embedding", "wrong_dimension", "ts_outside_day"):
        assert "sample rows" in out and '"item_id"' in out


@pytest.mark.parametrize("case", CASES)
def test_write_refuses_each_bad_input_case(lake, case):
    bad, _ = _corrupt(_items(5), case)
    with pytest.raises((BadInputError, ValueError)):
        if case in ("missing_column",):
            lake.write_table("items", DAY, bad)
        else:
            validate_arrow("items", DAY, bad, emb_dim=4).raise_if_failed()
    assert lake.partitions("items") == []


def test_validate_cli_passes_good_lake(lake, capsys):
    lake.write_table("items", DAY, _items(5))
    assert cli_main(["validate", "--lake", lake.root]) == 0
    assert "0 with problems" in capsys.readouterr().out
