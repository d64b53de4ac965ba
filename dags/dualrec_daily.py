"""DAG ``dualrec_daily``: one spark-submit task per stage for a logical date (wiring only).

Stages, knobs and the default Spark connection come from the ``dualrec`` package. Each task
runs ``jobs/<stage>.py --lake {{ params.lake }} --date {{ ds }}`` through the Spark
provider's ``SparkSubmitOperator``; the connection (default ``dualrec_spark`` = local mode)
decides where Spark runs. ``max_active_runs=1``: a day warm-starts from the previous
day's models.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, Param

from dualrec.airflow_support import ensure_spark_connection, knob_args, knob_defaults, stage_application
from dualrec.registry import STAGES

CONN_ID = ensure_spark_connection(os.environ.get("DUALREC_SPARK_CONN_ID", "dualrec_spark"))
START = dt.datetime.fromisoformat(os.environ.get("DUALREC_START_DATE", "2026-01-01")).replace(tzinfo=dt.timezone.utc)

with DAG(
    dag_id="dualrec_daily",
    description="DualRec creator-side dispatch: activity, towers, indexes, retrieval, ranking, dispatch, metrics",
    schedule="@daily",
    start_date=START,
    catchup=True,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=5)},
    params={
        "lake": Param(os.environ.get("DUALREC_LAKE", "/tmp/dualrec-lake"), type="string", description="lake root"),
        **{k: Param(v, description=f"config knob {k}") for k, v in knob_defaults().items()},
    },
    tags=["dualrec"],
) as dag:
    previous = None
    for stage in STAGES:
        task = SparkSubmitOperator(
            task_id=stage,
            application=stage_application(stage),
            conn_id=CONN_ID,
            name=f"dualrec-{stage}",
            application_args=["--lake", "{{ params.lake }}", "--date", "{{ ds }}", *knob_args()],
            py_files=os.environ.get("DUALREC_PY_FILES") or None,
            conf={"spark.sql.session.timeZone": "UTC", "spark.ui.enabled": "false"},
        )
        if previous is not None:
            previous >> task
        previous = task
