"""End to end on a tiny synthetic world: run, invariants, evaluate, rerun, backfill, spark-submit.

The day run is the session fixture ``tiny_day`` (tiny_world, every stage of 2026-01-10 with the
route tests' small config), shared with tests/test_cluster.py, which compares a cluster run to it.

The DAG under a real Airflow scheduler: tests/test_airflow_run.py; the cluster route: tests/test_cluster.py.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys

import pyarrow.compute as pc
import pytest

from dualrec.config import DualRecConfig
from dualrec.lake import Lake
from jobs.cli import main as cli_main
from services import ROUTE_DAY

pytestmark = pytest.mark.slow

RUN_DAY = dt.date.fromisoformat(ROUTE_DAY)
FAST = ["--set", "two_tower.epochs=1", "--set", "rank.epochs=1", "--set", "activity.n_estimators=60"]

SPEC_PATHS = [
    "activity.auc", "activity.auc_baseline_last_day", "activity.hit_rate", "activity.hit_rate_all_users",
    "dispatch.items", "dispatch.items_covered", "dispatch.items_full", "dispatch.max_du", "dispatch.q", "dispatch.l",
    "dispatch.users_matched", "dispatch.channel_share", "quality.feedback_per_pair", "quality.feedback_per_pair_random",
    "quality.feedback_per_pair_popular", "quality.expected_feedback_optimum", "quality.recall_at_l",
    "quality.recall_at_l_random", "quality.recall_at_l_popular", "index.recall_at_k", "retrieval.truth_recall",
    "ranking.auc", "cost.stage_seconds",
]


@pytest.fixture(scope="module")
def cfg_args(route_config_path) -> list[str]:
    """The config the day ran with (tiny_day): every later command of these tests uses it too."""
    return ["--config", route_config_path]


@pytest.fixture(scope="module")
def ran(tiny_day, tmp_path_factory) -> str:
    """A private copy of the run day: the tests below rerun it and backfill into it."""
    root = str(tmp_path_factory.mktemp("e2e") / "lake")
    shutil.copytree(tiny_day, root)
    return root


def _match_sets(lake: Lake):
    return lake.read_table("match_sets", RUN_DAY).to_pandas()


def test_run_publishes_every_output_and_keeps_invariants(ran, route_config_path):
    lake = Lake(ran)
    L = DualRecConfig.load(route_config_path).dispatch.L
    for table in ("activity_scores", "user_embeddings", "candidates", "ranked", "match_sets", "user_match_sets",
                  "available_users"):
        assert lake.has_partition(table, RUN_DAY), table
        assert lake.validate_dir(table, RUN_DAY).ok, table
    ms = _match_sets(lake)
    assert len(ms) > 0
    assert ms.groupby("user_id").size().max() <= 10  # |D_u| <= Q
    assert ms.groupby("item_id").size().max() <= L  # each item <= L
    avail = lake.read_table("activity_scores", RUN_DAY).to_pandas()
    assert set(ms.user_id) <= set(avail.loc[avail.available, "user_id"])
    um = lake.read_table("user_match_sets", RUN_DAY)
    assert pc.max(pc.list_value_length(um.column("items"))).as_py() <= 10


def test_evaluate_json_has_every_spec_path(ran, cfg_args, capsys):
    assert cli_main(["evaluate", "--lake", ran, "--date", RUN_DAY.isoformat(), "--json", *cfg_args]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    metrics = json.loads(out)
    for path in SPEC_PATHS:
        node = metrics
        for part in path.split("."):
            assert isinstance(node, dict) and part in node, f"missing {path}"
            node = node[part]
    assert metrics["dispatch"]["max_du"] <= metrics["dispatch"]["q"]
    assert os.path.isfile(os.path.join(ran, "_reports", f"dt={RUN_DAY}", "index.html"))


def test_rerun_same_day_gives_identical_match_sets(ran, cfg_args):
    lake = Lake(ran)
    before = _match_sets(lake).sort_values(["item_id", "user_id"]).reset_index(drop=True)
    assert cli_main(["run", "--lake", ran, "--date", RUN_DAY.isoformat(), *cfg_args]) == 0
    after = _match_sets(lake).sort_values(["item_id", "user_id"]).reset_index(drop=True)
    assert before[["item_id", "user_id", "batch", "rank_in_item"]].equals(after[["item_id", "user_id", "batch", "rank_in_item"]])
    assert (before.g - after.g).abs().max() < 1e-6


def test_backfill_skips_complete_days_and_runs_missing_ones(ran, cfg_args, capsys):
    prev = (RUN_DAY - dt.timedelta(days=1)).isoformat()
    assert cli_main(["backfill", "--lake", ran, "--start", prev, "--end", RUN_DAY.isoformat(), *cfg_args]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status[prev] == "done" and status[RUN_DAY.isoformat()].startswith("skipped")


def test_spark_submit_runs_a_stage_from_a_shell(ran, cfg_args, tmp_path):
    """`spark-submit jobs/dispatch.py --lake … --date …` works on an installed package."""
    lake_copy = str(tmp_path / "lake")
    shutil.copytree(ran, lake_copy)
    Lake(lake_copy)  # noqa: B018 - same layout
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    proc = subprocess.run(
        ["spark-submit", "--master", "local[2]", "jobs/dispatch.py", "--lake", lake_copy, "--date", RUN_DAY.isoformat(),
         *cfg_args],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Lake(lake_copy).read_table("match_sets", RUN_DAY).num_rows == Lake(ran).read_table("match_sets", RUN_DAY).num_rows


def test_movielens_fixture_ingest_backfill_evaluate(tmp_path, spark, capsys):
    """A MovieLens-100K-format fixture goes through ingest -> backfill -> evaluate (logged data, no truth)."""
    lake = str(tmp_path / "ml")
    assert cli_main(["ingest", "movielens", "--src", "tests/fixtures/movielens", "--lake", lake]) == 0
    assert cli_main(["backfill", "--lake", lake, "--start", "1997-09-29", "--end", "1997-09-30", *FAST,
                     "--set", "dispatch.L=20", "--set", "dispatch.Q=3"]) == 0
    capsys.readouterr()
    assert cli_main(["evaluate", "--lake", lake, "--date", "1997-09-30", "--json",
                     "--set", "dispatch.L=20", "--set", "dispatch.Q=3"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["dispatch"]["max_du"] <= 3
    assert metrics["dispatch"]["items"] > 0
    assert metrics["quality"]["feedback_per_pair"] is None  # no synthetic truth in a logged lake
    assert metrics["quality"]["recall_at_l"] is not None  # headline metric for logged data
