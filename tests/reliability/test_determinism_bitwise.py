"""Reruns are identical (issue 16, finding 5): two_tower and rank run twice on one lake.

Every table they publish is compared row for row (Spark's Parquet footers carry writer
metadata, so files are compared by content), every artefact file byte for byte. The second
two_tower run uses other shuffle partitions and Arrow batch sizes: the outputs must not depend on
Spark's partitioning or on how rows are batched for the towers (MKL strict CNR, models/__init__). The same
runs also check that each stage reads no upstream partition outside the windows its
``reads`` declares (the windows the runner validates).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import importlib
import os

import pytest

from dualrec.lake import Lake
from dualrec.stages.base import StageContext, run_stage
from schemas.tables import TABLES

from relhelpers import DAY, copy_world, fast_cfg, table_rows

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # four trainings: long on a loaded 2-core box

KEYS = {t: list(TABLES[t].key) for t in TABLES}
# one epoch, short windows and a smaller K: a rerun that differs differs after one epoch as after
# three, and the rerun's Arrow batches of 97 rows still split every table many times. The training
# threads stay at their defaults (2): determinism must hold with more than one intra-op thread.
CFG = {"two_tower": {"epochs": 1, "train_window_days": 7, "recall_queries": 50},
       "retrieval": {"k": {"two_tower": 200, "i2i2u": 100, "i2u2u": 100}},
       "rank": {"epochs": 1, "train_window_days": 2, "user_window_days": 3, "item_history_days": 2,
                "max_train_rows": 20000}}
PUBLISHES = {"two_tower": (("user_embeddings",), ("two_tower", "user_index")), "rank": (("ranked",), ("ranker",))}


@contextlib.contextmanager
def _spark_conf(spark, conf: dict[str, str]):
    old = {k: spark.conf.get(k) for k in conf}
    for k, v in conf.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            spark.conf.set(k, v)


def _artefacts(lake: Lake, names) -> dict[str, bytes]:
    out = {}
    for name in names:
        root = lake.fs_path(Lake.model_rel(name, DAY))
        for path in sorted(glob.glob(os.path.join(root, "*"))):
            with open(path, "rb") as f:
                out[f"{name}/{os.path.basename(path)}"] = f.read()
    return out


def _snapshot(lake: Lake, stage: str):
    tables, models = PUBLISHES[stage]
    return {t: table_rows(lake, t, DAY, KEYS[t]) for t in tables}, _artefacts(lake, models)


@pytest.fixture(scope="module")
def det_lake(tiny_world, tmp_path_factory) -> Lake:
    return copy_world(tiny_world, tmp_path_factory.mktemp("det_world") / "lake")


def _spy_reads(monkeypatch) -> list[tuple[str, dt.date]]:
    """Patch the lake readers to record every (table, day) read into the returned list."""
    seen: list[tuple[str, dt.date]] = []
    real_df, real_table = Lake.read_df, Lake.read_table

    def read_df(self, spark, table, days, *a, **k):
        days = list(days)
        seen.extend((table, d) for d in days if self.has_partition(table, d))
        return real_df(self, spark, table, days, *a, **k)

    def read_table(self, table, day, *a, **k):
        seen.append((table, day))
        return real_table(self, table, day, *a, **k)

    monkeypatch.setattr(Lake, "read_df", read_df)
    monkeypatch.setattr(Lake, "read_table", read_table)
    return seen


def _assert_reads_declared(stage: str, cfg, seen) -> None:
    declared = importlib.import_module(f"dualrec.stages.{stage}").reads(cfg, DAY)
    outside = sorted({(t, d) for t, d in seen if TABLES[t].kind == "input" and d not in set(declared.get(t, []))})
    assert not outside, f"stage {stage} read upstream partitions its reads() does not declare: {outside[:5]}"


def test_two_tower_and_rank_reruns_are_identical(det_lake, spark, monkeypatch):
    cfg = fast_cfg(**CFG)

    def run(stage, spy=False):
        real = importlib.import_module(f"dualrec.stages.{stage}").run
        seen: list = []

        def spied(ctx):  # only the stage's own reads (the runner's checks read more, on purpose)
            with monkeypatch.context() as m:
                rec = _spy_reads(m)
                out = real(ctx)
                seen.extend(rec)
            return out

        r = run_stage(stage, spied if spy else real, StageContext(lake=det_lake, day=DAY, cfg=cfg, _spark=spark))
        if spy:
            _assert_reads_declared(stage, cfg, seen)
        return r

    run("activity", spy=True)
    first = run("two_tower", spy=True)
    snap1 = _snapshot(det_lake, "two_tower")
    # the rerun also gets other shuffle partitions and Arrow batch sizes: what a loaded machine or
    # a cluster changes (task order, batch boundaries of mapInArrow) must not change a bit
    with _spark_conf(spark, {"spark.sql.shuffle.partitions": "5", "spark.sql.execution.arrow.maxRecordsPerBatch": "97"}):
        second = run("two_tower")
    snap2 = _snapshot(det_lake, "two_tower")
    assert first["final_loss"] == second["final_loss"]
    for t in snap1[0]:
        assert snap1[0][t].equals(snap2[0][t]), f"table {t} differs between two identical two_tower runs"
    assert snap1[1].keys() == snap2[1].keys()
    for name in snap1[1]:
        assert snap1[1][name] == snap2[1][name], f"artefact {name} differs between two identical two_tower runs"

    run("similarity", spy=True)
    run("retrieve", spy=True)
    run("rank", spy=True)
    r1 = _snapshot(det_lake, "rank")
    run("rank")
    r2 = _snapshot(det_lake, "rank")
    for t in r1[0]:
        assert r1[0][t].num_rows > 0 and r1[0][t].equals(r2[0][t]), f"table {t} differs between two identical rank runs"
    for name in r1[1]:
        assert r1[1][name] == r2[1][name], f"artefact {name} differs between two identical rank runs"
