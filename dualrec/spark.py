"""The one place a SparkSession is built, from :class:`~dualrec.config.SparkConfig`."""

from __future__ import annotations

import logging
import os
import sys

from dualrec.config import SparkConfig

log = logging.getLogger(__name__)


def get_spark(cfg: SparkConfig | None = None):
    """Return the active session or build one (local mode unless ``cfg.master`` says otherwise).

    Under ``spark-submit`` a session already exists and its master wins, so a job behaves the
    same whether launched by ``dualrec run``, ``spark-submit`` or Airflow.
    """
    from pyspark.sql import SparkSession

    cfg = cfg or SparkConfig()
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.appName(cfg.app_name)
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.arrow_batch_size))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")  # progress is ours (dualrec.progress), not Spark's bars
        .config("spark.sql.sources.partitionOverwriteMode", "static")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    )
    if not os.environ.get("SPARK_SUBMIT_OPTS") and "spark.master" not in os.environ.get("PYSPARK_SUBMIT_ARGS", ""):
        builder = builder.master(cfg.master).config("spark.driver.memory", cfg.driver_memory)
        if "spark.driver.extraJavaOptions" not in cfg.conf:
            log4j = os.path.join(os.path.dirname(os.path.abspath(__file__)), "log4j2.properties")
            builder = builder.config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile=file:{log4j}")
    for k, v in cfg.conf.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.log_level)
    return spark
