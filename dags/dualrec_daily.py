"""DAG ``dualrec_daily``: one spark-submit task per stage for a logical date (wiring only).

Each task runs ``jobs/<stage>.py --lake {{ params.lake }} --date {{ ds }} --config FILE``
through the Spark provider's ``SparkSubmitOperator``. Two params:

- ``lake``: the lake root (default ``$DUALREC_LAKE``);
- ``config``: a config file path (``.yaml/.yml/.toml/.json``) or inline YAML, e.g.
  ``{dispatch: {Q: 5}, two_tower: {epochs: 1}}``; empty = the defaults (default ``$DUALREC_CONFIG``).

The connection (default ``dualrec_spark`` = local mode, ``$DUALREC_SPARK_MASTER`` or an
``AIRFLOW_CONN_DUALREC_SPARK`` pointing at a cluster) decides where Spark runs; for a cluster
whose nodes lack the package, set ``$DUALREC_PY_FILES`` to the dualrec wheel copied to a ``.zip``
name (Spark puts only .zip/.egg/.jar py-files on the executors' ``sys.path``).
``max_active_runs=1``: a day warm-starts from the previous day's models. Daily from
``$DUALREC_START_DATE`` with catchup; ``DUALREC_SCHEDULE`` changes the schedule (a cron
expression, or ``none`` for runs triggered only, e.g. when the day's deliveries have landed).
Parsing imports only Airflow and :mod:`dualrec.airflow_support` (standard library).
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, Param

from dualrec.airflow_support import config_file, ensure_spark_connection, py_files, schedule, stage_application
from dualrec.registry import STAGES

CONN_ID = ensure_spark_connection(os.environ.get("DUALREC_SPARK_CONN_ID", "dualrec_spark"))
START = dt.datetime.fromisoformat(os.environ.get("DUALREC_START_DATE", "2026-01-01")).replace(tzinfo=dt.timezone.utc)
SCHEDULE = schedule(os.environ.get("DUALREC_SCHEDULE", "@daily"))

with DAG(
    dag_id="dualrec_daily",
    description="DualRec creator-side dispatch: activity, towers, indexes, retrieval, ranking, dispatch, metrics",
    schedule=SCHEDULE,
    start_date=START,
    catchup=True,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=5)},
    params={
        "lake": Param(os.environ.get("DUALREC_LAKE", "/tmp/dualrec-lake"), type="string", description="lake root"),
        "config": Param(
            os.environ.get("DUALREC_CONFIG", ""),
            type="string",
            description="config file path (.yaml/.yml/.toml/.json) or inline YAML; empty = defaults",
        ),
    },
    user_defined_macros={"dualrec_config_file": config_file},
    tags=["dualrec"],
) as dag:
    previous = None
    for stage in STAGES:
        task = SparkSubmitOperator(
            task_id=stage,
            application=stage_application(stage),
            conn_id=CONN_ID,
            name=f"dualrec-{stage}",
            application_args=[
                "--lake", "{{ params.lake }}",
                "--date", "{{ ds }}",
                "--config", "{{ dualrec_config_file(params.config) }}",
            ],
            py_files=py_files(),
            conf={"spark.sql.session.timeZone": "UTC", "spark.ui.enabled": "false"},
        )
        if previous is not None:
            previous >> task
        previous = task
