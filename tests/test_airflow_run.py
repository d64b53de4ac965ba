"""The DAG the way users run it: a real Airflow 3 API server, dag-processor and scheduler
(LocalExecutor, SQLite metadata DB, AIRFLOW_HOME in a temp dir) run ``dualrec_daily`` for one
tiny day, triggered through the CLI and followed through the REST API."""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dualrec.registry import STAGES
from dualrec.lake import Lake
from services import REPO, ROUTE_CONFIG, ROUTE_DAY, Daemon, free_port, http_json, wait_for

# ~4-5 min on a quiet 2-core machine (19.5 min at load average 16); the timeout leaves room for a crowded one
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(3600),
]

DAY = dt.date.fromisoformat(ROUTE_DAY)
# inline YAML through the DAG's single `config` param: the small knobs of every route test
CONFIG = ROUTE_CONFIG
RUN_TIMEOUT = 3000


def _api(base: str, path: str, method: str = "GET", body: dict | None = None, attempts: int = 5):
    """One REST call; a slow answer (a crowded machine) is retried, an HTTP error is not."""
    req = urllib.request.Request(
        base + path, method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read().decode() or "null")
        except urllib.error.HTTPError:
            raise
        except (TimeoutError, urllib.error.URLError):
            if attempt == attempts - 1:
                raise
            time.sleep(5)


def _dag_parsed(base: str) -> bool:
    try:
        return _api(base, "/api/v2/dags/dualrec_daily")["dag_id"] == "dualrec_daily"
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return False
        raise


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    """API server + dag-processor + scheduler on a fresh AIRFLOW_HOME; stopped at teardown."""
    home = tmp_path_factory.mktemp("airflow_home")
    port = free_port()
    env = dict(
        os.environ,
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__CORE__PARALLELISM="2",
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{port}/execution/",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
        # one secret for the task tokens the scheduler issues and the API server checks
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(32),
        AIRFLOW__API__HOST="127.0.0.1",
        AIRFLOW__API__PORT=str(port),
        AIRFLOW__API__WORKERS="1",
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="10",
        AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK="False",
        # triggered runs only: the one run is the test's (daily + catchup would start at 2026-01-01)
        DUALREC_SCHEDULE="none",
        DUALREC_SPARK_MASTER="local[2]",
        DUALREC_CONFIG_DIR=str(home / "dualrec-configs"),
        # the daemons and their task processes import the checkout under test, whatever is pip-installed
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
        SPARK_LOCAL_IP="127.0.0.1",
    )
    migrate = subprocess.run(["airflow", "db", "migrate"], env=env, capture_output=True, text=True, timeout=600)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    daemons = [
        Daemon("api-server", ["airflow", "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
               env, home / "api-server.log", cwd=home),
        Daemon("dag-processor", ["airflow", "dag-processor"], env, home / "dag-processor.log", cwd=home),
        Daemon("scheduler", ["airflow", "scheduler"], env, home / "scheduler.log", cwd=home),
    ]
    base = f"http://127.0.0.1:{port}"
    try:
        for d in daemons:
            d.start()
        wait_for(lambda: http_json(base + "/api/v2/monitor/health")["metadatabase"]["status"] == "healthy", 300,
                 "airflow api-server", *daemons, every=2.0)
        wait_for(lambda: _dag_parsed(base), 300, "dualrec_daily parsed", *daemons, every=2.0)
        yield {"env": env, "base": base, "daemons": daemons, "home": home}
    finally:
        for d in reversed(daemons):
            d.stop()


def test_scheduler_runs_dualrec_daily_for_a_triggered_day(airflow, tiny_world, tmp_path):
    lake = str(tmp_path / "lake")
    shutil.copytree(tiny_world, lake)
    base, daemons = airflow["base"], airflow["daemons"]
    dag = _api(base, "/api/v2/dags/dualrec_daily")
    assert not dag["is_paused"] and not dag.get("has_import_errors")

    run_id = f"test__{DAY.isoformat()}"
    conf = json.dumps({"lake": lake, "config": CONFIG})
    t0 = time.time()
    trig = subprocess.run(
        ["airflow", "dags", "trigger", "dualrec_daily", "--logical-date", f"{DAY.isoformat()}T00:00:00+00:00",
         "--run-id", run_id, "--conf", conf, "--output", "json"],
        env=airflow["env"], capture_output=True, text=True, timeout=300,
    )
    assert trig.returncode == 0, trig.stderr[-3000:]

    def tasks() -> dict[str, str | None]:
        tis = _api(base, f"/api/v2/dags/dualrec_daily/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {ti["task_id"]: ti["state"] for ti in tis}

    state = None
    while time.time() - t0 < RUN_TIMEOUT:
        state = _api(base, f"/api/v2/dags/dualrec_daily/dagRuns/{run_id}")["state"]
        if state in ("success", "failed"):
            break
        states = tasks()
        # a failed stage waits retry_delay before its retry: report it now instead
        stuck = [t for t, s in states.items() if s in ("up_for_retry", "failed", "upstream_failed")]
        if stuck:
            pytest.fail(f"task {stuck[0]} is {states[stuck[0]]}; its log:\n{_task_log(airflow['home'], run_id, stuck[0])}",
                        pytrace=False)
        for d in daemons:
            assert d.alive(), f"{d.name} died:\n{d.tail()}"
        time.sleep(5)
    elapsed = time.time() - t0
    print(f"dualrec_daily {DAY} ran in {elapsed:.0f}s under the scheduler")
    assert state == "success", (state, tasks())
    assert tasks() == {s: "success" for s in STAGES}

    # the REST API, not `airflow dags list-runs`: the CLI prints warnings (graphviz) on stdout
    listed = {r["dag_run_id"]: r["state"] for r in _api(base, "/api/v2/dags/dualrec_daily/dagRuns")["dag_runs"]}
    assert listed == {run_id: "success"}  # the only run: nothing was scheduled besides it

    out = Lake(lake)
    for table in ("activity_scores", "candidates", "ranked", "match_sets", "metrics"):
        assert out.has_partition(table, DAY), table
    ms = out.read_table("match_sets", DAY).to_pandas()
    assert len(ms) and ms.groupby("user_id").size().max() <= 10
    assert ms.groupby("item_id").size().max() <= 50  # the inline config's L reached the stages


def _task_log(home: Path, run_id: str, task_id: str) -> str:
    logs = sorted(Path(home, "logs").rglob(f"*{task_id}*/*.log")) or sorted(Path(home, "logs").rglob("*.log"))
    found = [p for p in logs if run_id in str(p) and task_id in str(p)]
    return found[-1].read_text(errors="replace")[-4000:] if found else "no task log found"
