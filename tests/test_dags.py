"""Every DAG file loads without import errors or cycles; dualrec_daily is wired as documented."""

from __future__ import annotations

from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parent.parent / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS), safe_mode=False)


def _has_cycle(dag) -> bool:
    state: dict[str, int] = {}

    def visit(tid: str) -> bool:
        if state.get(tid) == 1:
            return True
        if state.get(tid) == 2:
            return False
        state[tid] = 1
        if any(visit(d) for d in dag.get_task(tid).downstream_task_ids):
            return True
        state[tid] = 2
        return False

    return any(visit(t) for t in dag.task_ids)


def test_every_dag_file_imports_without_errors_or_cycles(dagbag):
    assert dagbag.import_errors == {}
    files = sorted(p.name for p in DAGS.glob("*.py"))
    assert files, "no DAG files found"
    assert dagbag.dags, "no DAGs were loaded"
    for dag in dagbag.dags.values():
        assert not _has_cycle(dag), dag.dag_id


def test_dualrec_daily_runs_every_stage_in_order(dagbag):
    from dualrec.registry import STAGES

    dag = dagbag.dags["dualrec_daily"]
    assert dag.max_active_runs == 1 and dag.catchup
    order = []
    task = dag.get_task(STAGES[0])
    while task is not None:
        order.append(task.task_id)
        downstream = list(task.downstream_task_ids)
        assert len(downstream) <= 1
        task = dag.get_task(downstream[0]) if downstream else None
    assert order == list(STAGES)
    for stage in STAGES:
        t = dag.get_task(stage)
        assert type(t).__name__ == "SparkSubmitOperator"
        assert Path(t.application).name == f"{stage}.py" and Path(t.application).is_file()
        assert t.application_args[:4] == ["--lake", "{{ params.lake }}", "--date", "{{ ds }}"]
        assert t.application_args[4] == "--config" and len(t.application_args) == 6
        assert t.retries >= 1
    assert set(dag.params) == {"lake", "config"}


def _render(dag, config: str, tmp_path) -> list[str]:
    env = dag.get_template_env()
    task = dag.get_task("dispatch")
    ctx = {"params": {"lake": str(tmp_path / "lake"), "config": config}, "ds": "2026-01-10"}
    return [env.from_string(a).render(**ctx) for a in task.application_args]


def test_config_param_inline_yaml_reaches_the_stage_as_a_config_file(dagbag, tmp_path, monkeypatch):
    """Inline YAML becomes a file that --config loads; a path passes through; empty = defaults."""
    from dualrec.config import DualRecConfig
    from jobs.common import add_common_args, load_config

    monkeypatch.setenv("DUALREC_CONFIG_DIR", str(tmp_path / "configs"))
    dag = dagbag.dags["dualrec_daily"]

    def loaded(config: str) -> DualRecConfig:
        import argparse

        p = argparse.ArgumentParser()
        add_common_args(p)
        args = _render(dag, config, tmp_path)
        assert args[:4] == ["--lake", str(tmp_path / "lake"), "--date", "2026-01-10"]
        parsed = p.parse_args(args)
        return load_config(parsed.config, parsed.set)

    cfg = loaded("dispatch: {Q: 5}\nrank:\n  epochs: 1\n")
    assert cfg.dispatch.Q == 5 and cfg.rank.epochs == 1 and cfg.dispatch.L == DualRecConfig().dispatch.L
    # same content, same file (retries and the seven tasks of a run share it)
    assert _render(dag, "dispatch: {Q: 5}\nrank:\n  epochs: 1\n", tmp_path) == _render(
        dag, "dispatch: {Q: 5}\nrank:\n  epochs: 1", tmp_path
    )
    assert loaded("").to_dict() == DualRecConfig().to_dict()
    own = tmp_path / "prod.yaml"
    own.write_text("dispatch:\n  L: 50\n")
    assert _render(dag, str(own), tmp_path)[5] == str(own)
    assert loaded(str(own)).dispatch.L == 50
    with pytest.raises(ValueError, match="Qq"):
        loaded("dispatch: {Qq: 5}")


def test_parsing_the_dag_imports_no_heavy_modules():
    """The dag-processor parses the file every few seconds: no pyarrow, pyspark, torch (or pandas/numpy)."""
    import json
    import os
    import subprocess
    import sys

    heavy = ["pyarrow", "pyspark", "torch", "pandas", "numpy", "xgboost", "faiss", "dualrec.config", "dualrec.lake"]
    code = (
        "import json, sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(DAGS)!r}, safe_mode=False)\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "assert 'dualrec_daily' in bag.dags\n"
        f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_py_files_refuses_a_wheel_spark_would_not_put_on_the_executors_path():
    from dualrec.airflow_support import py_files

    assert py_files("") is None
    assert py_files("/opt/dualrec/dualrec-0.1.0.zip") == "/opt/dualrec/dualrec-0.1.0.zip"
    with pytest.raises(ValueError, match=r"\.zip"):
        py_files("/opt/dist/dualrec-0.1.0-py3-none-any.whl")


def test_schedule_is_daily_unless_configured(dagbag):
    from dualrec.airflow_support import schedule

    assert schedule("@daily") == "@daily" and schedule("0 3 * * *") == "0 3 * * *"
    assert schedule("none") is None and schedule("") is None
    if "DUALREC_SCHEDULE" not in __import__("os").environ:
        assert type(dagbag.dags["dualrec_daily"].timetable).__name__ != "NullTimetable"
