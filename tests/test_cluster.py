"""The cluster route, for real: every stage of a tiny day spark-submitted to a Spark standalone
cluster (the Master and Worker classes pyspark ships, on 127.0.0.1) with the package shipped as
``--py-files``, and its outputs equal to a local-mode run of the same day.

The executors run Python with ``-S``: the editable/site install of ``dualrec`` on this machine
is invisible to them, as on a cluster node that never had it installed, so the day only
succeeds if the shipped package is complete and actually reaches the executors.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import site
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dualrec.registry import STAGES, stage_spec
from services import ROUTE_DAY, Daemon, build_wheel, free_port, http_json, wait_for

# ~3-4 min on a quiet 2-core machine (37 min at load average 25); the timeout leaves room for a crowded one
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

DAY = dt.date.fromisoformat(ROUTE_DAY)
# embedding tables (list columns) are compared by key and by their largest elementwise difference:
# two-tower training is deterministic (models/__init__.py pins MKL/OpenMP), measured 0.0 between a
# local and a cluster run of the same day
EMBEDDING_TABLES = {"user_embeddings": "user_id"}
# wall/CPU timings differ run to run by nature; every other metric must be equal
TIMING_PREFIXES = ("cost.stage_seconds.", "cost.total_seconds", "cost.rows_per_second.")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A standalone master + one worker (2 cores, 2 GiB) on free ports; stopped at teardown."""
    root = tmp_path_factory.mktemp("spark_cluster")
    env = dict(
        os.environ,
        SPARK_LOCAL_IP="127.0.0.1",
        SPARK_DAEMON_MEMORY="384m",
        SPARK_MASTER_OPTS="-Dspark.master.rest.enabled=false",
    )
    env.pop("PYTHONPATH", None)
    port, ui, worker_ui = free_port(), free_port(), free_port()
    url = f"spark://127.0.0.1:{port}"
    state = f"http://127.0.0.1:{ui}/json/"
    master = Daemon(
        "spark-master",
        ["spark-class", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
         "--webui-port", str(ui)],
        env, root / "master.log",
    )
    worker = Daemon(
        "spark-worker",
        ["spark-class", "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1", "--cores", "2",
         "--memory", "2g", "--webui-port", str(worker_ui), "--work-dir", str(root / "work")],
        env, root / "worker.log",
    )
    try:
        master.start()
        wait_for(lambda: http_json(state).get("status") == "ALIVE", 180, "spark master", master)
        worker.start()
        wait_for(lambda: http_json(state).get("aliveworkers", 0) >= 1, 180, "spark worker", worker)
        yield {"url": url, "state": state}
    finally:
        worker.stop()
        master.stop()


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> dict:
    """The wheel (``pip wheel --no-deps``), the same archive as ``.zip`` and the job files it holds."""
    root = tmp_path_factory.mktemp("dist")
    wheel = build_wheel(root)
    # Spark puts only .zip/.egg/.jar py-files on the executors' sys.path; a wheel is a zip
    archive = root / (wheel.stem + ".zip")
    shutil.copyfile(wheel, archive)
    apps = root / "apps"
    shutil.unpack_archive(str(archive), str(apps), "zip")
    return {"wheel": str(wheel), "zip": str(archive), "apps": apps / "jobs"}


def _isolated_python(folder: Path) -> str:
    """A python for executors that skips site.py, so it cannot see the installed dualrec; the
    site-packages directories come back through PYTHONPATH (which processes no .pth file)."""
    path = folder / "python-without-site"
    path.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def _submit(stage: str, master: str, shipped: dict, lake: str, config: str, tmp: Path) -> subprocess.CompletedProcess:
    site_dirs = ":".join(site.getsitepackages())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYSPARK_SUBMIT_ARGS")}
    env.update(PYSPARK_PYTHON=_isolated_python(tmp), PYSPARK_DRIVER_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1")
    cmd = [
        "spark-submit", "--master", master, "--name", f"dualrec-{stage}",
        "--conf", "spark.executor.memory=1g", "--conf", "spark.cores.max=2", "--conf", "spark.ui.enabled=false",
        "--conf", f"spark.executorEnv.PYTHONPATH={site_dirs}",
        "--py-files", shipped["zip"],
        str(shipped["apps"] / f"{stage}.py"), "--lake", lake, "--date", DAY.isoformat(), "--config", config,
    ]
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=900)


def _derived(spark, lake: str, table: str):
    df = spark.read.parquet(os.path.join(lake, table, f"dt={DAY.isoformat()}"))
    if table == "metrics":
        timing = df.metric.endswith("_seconds")
        for prefix in TIMING_PREFIXES:
            timing = timing | df.metric.startswith(prefix)
        df = df.filter(~timing)
    return df


def _max_emb_diff(spark, remote: str, local: str, table: str, key: str) -> float:
    """Largest absolute difference between the two runs' embedding values."""
    from pyspark.sql import functions as F

    a = _derived(spark, remote, table).select(key, F.posexplode("emb").alias("k", "a"))
    b = _derived(spark, local, table).select(key, F.posexplode("emb").alias("k", "b"))
    row = a.join(b, [key, "k"]).agg(F.max(F.abs(F.col("a") - F.col("b"))).alias("d")).first()
    return float(row["d"] or 0.0)


def _partition(lake: str, rel: str) -> str:
    return os.path.join(lake, rel, f"dt={DAY.isoformat()}")


def _stage_outputs(stage: str) -> list[str]:
    spec = stage_spec(stage)
    return [*spec.outputs, *(f"_models/{a}" for a in spec.artifacts)]


def test_every_stage_on_a_standalone_cluster_equals_local_mode(tiny_day, cluster, shipped, route_config_path, spark,
                                                               tmp_path):
    """Each stage runs on the cluster from the local run's inputs, so a difference is that stage's own.

    Before a stage is submitted its day-D outputs are deleted from the cluster lake (a stage
    that wrote nothing cannot pass); after the comparison the local outputs are put back, so the
    next stage reads exactly what the local run's next stage read.
    """
    from pyspark.testing import assertDataFrameEqual

    # the local-mode run of the day (``dualrec run``, the session fixture tiny_day, shared with test_e2e)
    local, remote = tiny_day, str(tmp_path / "cluster")
    shutil.copytree(local, remote)

    seconds, compared, drift = {}, [], {}
    for stage in STAGES:
        for rel in _stage_outputs(stage):
            shutil.rmtree(_partition(remote, rel), ignore_errors=True)
        t = time.time()
        proc = _submit(stage, cluster["url"], shipped, remote, route_config_path, tmp_path)
        seconds[stage] = round(time.time() - t, 1)
        assert proc.returncode == 0, f"stage {stage} on the cluster:\n{proc.stderr[-4000:]}"
        for rel in _stage_outputs(stage):
            assert os.path.isdir(_partition(remote, rel)) == os.path.isdir(_partition(local, rel)), (stage, rel)
        for table in stage_spec(stage).outputs:
            if not os.path.isdir(_partition(local, table)):
                continue
            if table in EMBEDDING_TABLES:
                key = EMBEDDING_TABLES[table]
                assertDataFrameEqual(_derived(spark, remote, table).select(key), _derived(spark, local, table).select(key))
                drift[table] = _max_emb_diff(spark, remote, local, table, key)
                assert drift[table] <= 1e-6, (table, drift[table])
            else:
                assertDataFrameEqual(_derived(spark, remote, table), _derived(spark, local, table), rtol=1e-5, atol=1e-6)
            compared.append(table)
        for rel in _stage_outputs(stage):  # the next stage reads the local run's outputs
            if os.path.isdir(_partition(local, rel)):
                shutil.rmtree(_partition(remote, rel), ignore_errors=True)
                shutil.copytree(_partition(local, rel), _partition(remote, rel))
    print(f"cluster stages {json.dumps(seconds)}; {json.dumps(drift)}")

    apps = http_json(cluster["state"])["completedapps"]
    assert sorted(a["name"] for a in apps) == sorted(f"dualrec-{s}" for s in STAGES), apps
    assert {"activity_scores", "user_embeddings", "candidates", "ranked", "match_sets", "metrics"} <= set(compared)
