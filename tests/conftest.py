"""Shared fixtures: one session-scoped SparkSession (local[2], few partitions, UI off), the tiny
synthetic world, and that world with one whole day run through every stage (built once per session)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
# Airflow keeps its state (SQLite DB, logs) under AIRFLOW_HOME: never the user's own.
os.environ.setdefault("AIRFLOW_HOME", os.path.join(tempfile.gettempdir(), "dualrec-airflow-test-home"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")


@pytest.fixture(scope="session")
def spark():
    from dualrec.config import SparkConfig
    from dualrec.spark import get_spark

    s = get_spark(SparkConfig(master="local[2]", shuffle_partitions=2, driver_memory="2g", app_name="dualrec-tests"))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> str:
    """Root of a generated tiny synthetic lake: 14 days from 2026-01-01, seed 7 (~4 s)."""
    from dualrec.synth import generate

    root = tmp_path_factory.mktemp("tiny_world")
    generate(str(root), preset="tiny", start="2026-01-01", days=14, seed=7)
    return str(root)


@pytest.fixture(scope="session")
def route_config_path(tmp_path_factory) -> str:
    """``services.ROUTE_CONFIG`` as a YAML file (the small knobs of the route tests)."""
    from services import ROUTE_CONFIG

    path = tmp_path_factory.mktemp("route_cfg") / "route.yaml"
    path.write_text(ROUTE_CONFIG)
    return str(path)


@pytest.fixture(scope="session")
def tiny_day(tiny_world, route_config_path, spark, tmp_path_factory) -> str:
    """A copy of ``tiny_world`` with every stage of ``services.ROUTE_DAY`` run in local mode
    (``dualrec run --config route.yaml``), once per session for the tests that need a whole day
    (the cluster comparison, the end-to-end checks). Read-only: a test that writes copies it first."""
    from jobs.cli import main
    from services import ROUTE_DAY

    root = str(tmp_path_factory.mktemp("tiny_day") / "lake")
    shutil.copytree(tiny_world, root)
    assert main(["run", "--lake", root, "--date", ROUTE_DAY, "--config", route_config_path]) == 0
    return root


@pytest.fixture(scope="session")
def tiny_two_tower(tiny_world, spark, tmp_path_factory) -> dict:
    """A copy of ``tiny_world`` where a seeded random half of day 7's users is available and the
    two_tower stage has run for that day (one epoch): the stage test of two_tower asserts on its
    outputs, the similarity stage test starts from them. Read-only: copy ``root`` before writing.

    Day 7 is mid-world on purpose: later partitions exist and must not be read."""
    import numpy as np
    import pyarrow as pa

    from dualrec.config import DualRecConfig
    from dualrec.lake import Lake
    from dualrec.stages import two_tower
    from dualrec.stages.base import StageContext

    root = str(tmp_path_factory.mktemp("tiny_two_tower") / "lake")
    shutil.copytree(tiny_world, root)
    lake = Lake(root)
    day = lake.partitions("users")[6]
    users = lake.read_table("users", day).column("user_id").to_numpy()
    avail = np.random.default_rng(0).random(len(users)) < 0.5
    lake.write_table("activity_scores", day, pa.table({"user_id": users, "p_active": avail.astype(float), "available": avail}))
    cfg = DualRecConfig.from_dict(
        {"seed": 1, "two_tower": {"epochs": 1, "id_buckets": 4096, "train_window_days": 5, "torch_threads": 1}}
    )
    out = two_tower.run(StageContext(lake=lake, day=day, cfg=cfg, _spark=spark))
    return {"root": root, "day": day, "cfg": cfg, "out": out, "users": users, "available": set(users[avail].tolist())}
