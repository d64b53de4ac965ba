"""The one place a SparkSession is built, from :class:`~dualrec.config.SparkConfig`."""

from __future__ import annotations

import logging
import os
import sys

from dualrec.config import SparkConfig

log = logging.getLogger(__name__)


def launched_by_spark_submit() -> bool:
    """True in a Python driver started by ``spark-submit``: its JVM (and ``--master``) already exist.

    spark-submit's PythonRunner hands the driver its gateway through ``PYSPARK_GATEWAY_PORT``
    (pyspark's own test for an existing JVM). Setting ``master`` then would silently turn a
    ``--master spark://...`` submission into a local-mode run.
    """
    return "PYSPARK_GATEWAY_PORT" in os.environ


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
        SparkSession.builder.config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        # ANSI casts: writing a derived table narrows to its contract (lake.conform_df); an overflowing value
        # must fail the write, never wrap around (Spark 4's default, pinned against a cluster that turns it off)
        .config("spark.sql.ansi.enabled", "true")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.arrow_batch_size))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")  # progress is ours (dualrec.progress), not Spark's bars
        .config("spark.sql.sources.partitionOverwriteMode", "static")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        # per-user / per-item feature tables (tens of MB at medium; AQE re-plans with actual sizes) join the candidate pairs by
        # broadcast instead of shuffling millions of pairs twice (sort-merge); cfg.conf may override
        .config("spark.sql.autoBroadcastJoinThreshold", "64m")
        # the lake hands Spark explicit file lists (Lake.read_df: tens of partitions for a window); above this
        # many paths Spark lists them with a Spark job of its own, a fixed cost per read that a driver-side
        # listing of a few hundred files does not have
        .config("spark.sql.sources.parallelPartitionDiscovery.threshold", "1024")
    )
    if not launched_by_spark_submit():
        # spark-submit's --name (the Airflow task names each stage) and --master win
        builder = builder.appName(cfg.app_name)
        if "spark.master" not in os.environ.get("PYSPARK_SUBMIT_ARGS", ""):
            builder = builder.master(cfg.master).config("spark.driver.memory", cfg.driver_memory)
            if "spark.driver.extraJavaOptions" not in cfg.conf:
                log4j = os.path.join(os.path.dirname(os.path.abspath(__file__)), "log4j2.properties")
                builder = builder.config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile=file:{log4j}")
    for k, v in cfg.conf.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.log_level)
    return spark
