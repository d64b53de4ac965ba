"""What the Airflow DAG needs from the package, so the DAG file itself only wires tasks.

- :func:`stage_application`: the path of ``jobs/<stage>.py`` in the installed package,
  handed to ``SparkSubmitOperator`` (the same file ``spark-submit`` runs by hand).
- :func:`ensure_spark_connection`: a default Spark connection in local mode when none is
  configured (set ``AIRFLOW_CONN_<ID>`` or create the connection to point at a cluster).
- :func:`knob_params` / :func:`knob_args`: every config knob as a DAG param, passed to the
  job as ``--set key=value``, so a triggered run can change L, Q, the policy, ...
"""

from __future__ import annotations

import json
import os
from typing import Any

from dualrec.config import DualRecConfig

DEFAULT_CONN_ID = "dualrec_spark"
DEFAULT_MASTER = "local[2]"


def stage_application(stage: str) -> str:
    import jobs

    path = os.path.join(os.path.dirname(os.path.abspath(jobs.__file__)), f"{stage}.py")
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


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k not in ("beta", "k", "conf"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def knob_defaults() -> dict[str, Any]:
    """Every config knob (dotted key -> default), excluding Spark session settings."""
    return {k: v for k, v in _flatten(DualRecConfig().to_dict()).items() if not k.startswith("spark.")}


def knob_args(param_prefix: str = "params") -> list[str]:
    """``--set key={{ params['key'] | tojson }}`` for every knob (values rendered as JSON, parsed as YAML)."""
    args: list[str] = []
    for key in knob_defaults():
        args += ["--set", f"{key}={{{{ {param_prefix}['{key}'] | tojson }}}}"]
    return args
