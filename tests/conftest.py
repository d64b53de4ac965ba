"""Shared fixtures: one session-scoped SparkSession (local[2], few partitions, UI off)."""

from __future__ import annotations

import os
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
