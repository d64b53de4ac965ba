"""What the Airflow DAG needs from the package, so the DAG file itself only wires tasks.

Imported when the dag-processor parses ``dags/dualrec_daily.py``, every few seconds:
standard library only (no pyarrow, pyspark, torch, not even the config module).

- :func:`stage_application`: the path of ``jobs/<stage>.py`` in the installed package,
  handed to ``SparkSubmitOperator`` (the same file ``spark-submit`` runs by hand).
- :func:`ensure_spark_connection`: a default Spark connection in local mode when none is
  configured (set ``AIRFLOW_CONN_<ID>`` or create the connection to point at a cluster).
- :func:`py_files`: ``$DUALREC_PY_FILES`` (the package for cluster nodes that lack it), refused as
  a ``.whl``, which Spark ships but never puts on the executors' ``sys.path``.
- :func:`config_file`: the DAG's single ``config`` param (a path, or inline YAML) as the
  file the stage's ``--config`` reads; the job validates it before Spark starts.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile

DEFAULT_CONN_ID = "dualrec_spark"
DEFAULT_MASTER = "local[2]"
CONFIG_DIR_ENV = "DUALREC_CONFIG_DIR"
CONFIG_SUFFIXES = (".yaml", ".yml", ".toml", ".json")

def stage_application(stage: str) -> str:
    """Path of ``jobs/<stage>.py`` of the installed package, found without importing it."""
    spec = importlib.util.find_spec("jobs")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'jobs' (dualrec's spark-submit entry points) is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], f"{stage}.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no stage entry point {path}")
    return path


def ensure_spark_connection(conn_id: str = DEFAULT_CONN_ID, master: str | None = None) -> str:
    """Provide a local-mode Spark connection through the environment unless one is configured."""
    env = f"AIRFLOW_CONN_{conn_id.upper()}"
    os.environ.setdefault(
        env,
        json.dumps({"conn_type": "spark", "host": master or os.environ.get("DUALREC_SPARK_MASTER", DEFAULT_MASTER)}),
    )
    return conn_id


def schedule(value: str) -> str | None:
    """The DAG schedule from ``$DUALREC_SCHEDULE``: a preset/cron string, or None for ``none``/empty."""
    value = value.strip()
    return None if value.lower() in ("", "none") else value


def py_files(value: str | None = None) -> str | None:
    """``--py-files`` for every task: ``$DUALREC_PY_FILES`` (comma-separated), or None.

    Spark adds only ``.zip``/``.egg``/``.jar`` py-files to the executors' ``sys.path`` (the
    driver gets any), so a ``.whl`` fails only once an executor imports dualrec; a wheel is a
    zip archive, so copying it to ``dualrec.zip`` is enough.
    """
    value = os.environ.get("DUALREC_PY_FILES", "") if value is None else value
    wheels = [p.strip() for p in value.split(",") if p.strip().lower().endswith(".whl")]
    if wheels:
        raise ValueError(
            f"DUALREC_PY_FILES names wheel(s) {', '.join(wheels)}: Spark puts only .zip/.egg/.jar py-files on "
            "the executors' sys.path; copy the wheel to a .zip name (a wheel is a zip archive) and pass that"
        )
    return value.strip() or None


def config_file(value: str | None) -> str:
    """The ``--config`` argument for the DAG's ``config`` param.

    A single line ending in .yaml/.yml/.toml/.json names a file (``/etc/dualrec/prod.yaml``) and
    is passed through untouched, so it may live on storage the Spark driver sees. Anything else
    (empty = the defaults) is inline YAML: it is written to ``$DUALREC_CONFIG_DIR`` (default: the temp dir) under a name derived
    from its content, so concurrent tasks and retries of the same run share one file. The
    stage's ``--config`` loads and validates it (exit 2 on a bad key) before Spark starts.
    Inline YAML therefore needs the driver on the Airflow worker (client deploy mode, the default).
    """
    text = (value or "").strip()
    if "\n" not in text and text.lower().endswith(CONFIG_SUFFIXES):
        return text
    body = (text or "{}") + "\n"
    folder = os.environ.get(CONFIG_DIR_ENV) or os.path.join(tempfile.gettempdir(), "dualrec-configs")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, hashlib.sha256(body.encode()).hexdigest()[:16] + ".yaml")
    if not os.path.isfile(path):
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(body)
        os.replace(tmp, path)
    return path
