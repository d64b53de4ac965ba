"""Shared fixtures: one session-scoped SparkSession (local[2], few partitions, UI off)."""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


@pytest.fixture(scope="session")
def spark():
    from dualrec.config import SparkConfig
    from dualrec.spark import get_spark

    s = get_spark(SparkConfig(master="local[2]", shuffle_partitions=2, driver_memory="2g", app_name="dualrec-tests"))
    yield s
    s.stop()
