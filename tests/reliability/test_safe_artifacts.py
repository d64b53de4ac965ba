"""Safe artefacts, validated config/CLI paths, secrets kept out of logs.

- models load without executing code: a static (AST) scan of the product sources finds no
  unpickling, ``torch.load`` without ``weights_only=True``, ``np.load(allow_pickle=True)``,
  unsafe YAML or eval/exec;
- the activity model's loader names the file and the producing stage when its artefact is
  missing, corrupt or of another version;
- config files and CLI paths are validated (exit 2 with a message);
- credentials come from the environment: a config holding one is refused without echoing it,
  and a fake secret in the environment never shows up in a stage's logs.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import pathlib

import numpy as np
import pytest

from dualrec.artifacts import ArtifactError
from dualrec.config import ActivityConfig
from dualrec.lake import Lake
from jobs.common import stage_main
from models import activity as M

from relhelpers import DAY, DISPATCH, REPO, dispatch_lake

PRODUCT_DIRS = ("dualrec", "jobs", "models", "schemas", "dags")


# ------------------------------------------------------------------------------ static scan
def unsafe_calls(source: str) -> list[str]:
    """Calls that could execute code hidden in data (pickle & co.), as 'line: what'."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for n in names:
                if n.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"):
                    found.append(f"{node.lineno}: import {n}")
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        kw = {k.arg: k.value for k in node.keywords}
        if isinstance(f, ast.Name) and f.id in ("eval", "exec"):
            found.append(f"{node.lineno}: {f.id}()")
        if not isinstance(f, ast.Attribute):
            continue
        owner = ast.unparse(f.value)
        if f.attr == "load" and owner == "torch":
            ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
            if not ok:
                found.append(f"{node.lineno}: torch.load without weights_only=True")
        if f.attr == "load" and owner in ("np", "numpy"):
            ap = kw.get("allow_pickle")
            if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                found.append(f"{node.lineno}: np.load(allow_pickle=...)")
        if owner == "yaml" and f.attr in ("load", "unsafe_load", "full_load", "load_all", "unsafe_load_all"):
            found.append(f"{node.lineno}: yaml.{f.attr}")
        if f.attr == "read_pickle":
            found.append(f"{node.lineno}: read_pickle")
    return found


def test_the_scanner_catches_unsafe_loads():
    bad = (
        "import pickle\nimport torch, numpy as np, yaml, pandas as pd\n"
        "torch.load(f)\ntorch.load(f, weights_only=False)\nnp.load(f, allow_pickle=True)\n"
        "yaml.load(s)\npd.read_pickle(p)\neval('1')\nmodel.eval()\n"
        "torch.load(f, weights_only=True)\nnp.load(f)\nyaml.safe_load(s)\n"
    )
    hits = unsafe_calls(bad)
    assert len(hits) == 7, hits  # every unsafe line, none of the safe ones (model.eval() is fine)


def test_no_product_code_unpickles_or_runs_loaded_code():
    offenders = []
    for d in PRODUCT_DIRS:
        for path in sorted(pathlib.Path(REPO, d).rglob("*.py")):
            offenders += [f"{path.relative_to(REPO)}:{h}" for h in unsafe_calls(path.read_text())]
    assert not offenders, offenders


# ------------------------------------------------------------------------------ activity artefact
@pytest.fixture()
def saved_model(tmp_path) -> Lake:
    rng = np.random.default_rng(1)
    X = rng.random((300, 3)).astype(np.float32)
    y = (X[:, 0] > 0.5).astype(np.float64)
    m = M.train(X[:200], y[:200], X[200:], y[200:], ["a", "b", "c"], ActivityConfig(n_estimators=10), seed=3)
    lake = Lake(str(tmp_path / "lake"))
    M.save(lake, DAY, m)
    assert M.load(lake, DAY).predict(X).shape == (300,)
    return lake


def _model_path(lake: Lake, name: str) -> str:
    return lake.fs_path(f"{Lake.model_rel('activity', DAY)}/{name}")


def test_activity_model_missing_names_path_and_stage(tmp_path):
    lake = Lake(str(tmp_path / "empty"))
    with pytest.raises(ArtifactError, match=rf"_models/activity/dt={DAY}/manifest.json .*stage 'activity'"):
        M.load(lake, DAY)


def test_activity_model_missing_file_names_it(saved_model):
    os.remove(_model_path(saved_model, "model.json"))
    with pytest.raises(ArtifactError, match=r"model.json is missing .*stage 'activity'"):
        M.load(saved_model, DAY)


def test_activity_model_corrupt_weights_name_file_and_stage(saved_model):
    with open(_model_path(saved_model, "model.json"), "wb") as f:
        f.write(b"\x80\x04garbage-not-a-model")
    with pytest.raises(ArtifactError, match=r"model.json cannot be loaded .*rerun stage 'activity'"):
        M.load(saved_model, DAY)


def test_activity_model_corrupt_or_other_version_manifest(saved_model):
    path = _model_path(saved_model, "manifest.json")
    man = json.loads(open(path).read())
    open(path, "w").write(json.dumps({**man, "version": 99}))
    with pytest.raises(ArtifactError, match=r"manifest.json has version 99, this code reads version 1; rerun stage 'activity'"):
        M.load(saved_model, DAY)
    open(path, "w").write(json.dumps({**man, "feature_names": ["a", "b"]}))
    with pytest.raises(ArtifactError, match=r"model.json cannot be loaded .*2"):
        M.load(saved_model, DAY)
    open(path, "w").write("{truncated")
    with pytest.raises(ArtifactError, match=r"corrupt manifest .*manifest.json"):
        M.load(saved_model, DAY)


def test_artifact_error_is_a_bad_input_exit(saved_model):
    """A stage that trips on an artefact exits 2 (like a missing partition), message intact."""
    from dualrec.stages.base import StageContext, run_stage
    from dualrec.config import DualRecConfig
    from dualrec.lake import LakeError

    os.remove(_model_path(saved_model, "model.json"))
    ctx = StageContext(lake=saved_model, day=DAY, cfg=DualRecConfig())
    with pytest.raises(LakeError, match=r"stage reader .*model.json is missing"):
        run_stage("reader", lambda c: {"m": M.load(c.lake, c.day)}, ctx)


# ------------------------------------------------------------------------------ config / CLI paths
def _stage(argv, capsys) -> tuple[int, str]:
    from dualrec.stages.activity import run

    capsys.readouterr()
    rc = stage_main("activity", run, argv)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    "filename,content,message",
    [
        (None, None, "config file not found"),
        ("cfg.ini", "[dispatch]\nQ=5\n", "config file must be .yaml, .yml, .toml or .json"),
        ("cfg.yaml", "dispatch:\n  Qq: 5\n", "dispatch.Qq: unknown key"),
        ("cfg.yaml", "dispatch:\n  Q: five\n", "dispatch.Q must be int, got str 'five'"),
        ("cfg.json", "[1, 2]", "must hold a mapping at top level"),
        ("cfg.toml", "[dispatch]\nL = 0\n", "dispatch.L: Input should be greater than or equal to 1 (got 0)"),
    ],
)
def test_bad_config_file_exits_2(tmp_path, capsys, filename, content, message):
    path = tmp_path / (filename or "nope.yaml")
    if content is not None:
        path.write_text(content)
    rc, err = _stage(["--lake", str(tmp_path / "lake"), "--date", DAY.isoformat(), "--config", str(path)], capsys)
    assert rc == 2 and message in err, err
    assert not (tmp_path / "lake").exists()  # nothing was created


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--lake", "", "--date", "2026-01-11"], "--lake is empty"),
        (["--lake", "ftp://host/lake", "--date", "2026-01-11"], "Unrecognized filesystem type"),
        (["--lake", "{tmp}/lake", "--date", "2026-13-01"], "not a date"),
        (["--lake", "{tmp}/afile", "--date", "2026-01-11"], "is a file, not a lake directory"),
        (["--lake", "{tmp}/lake", "--date", "2026-01-11", "--set", "dispatch.Qx=3"], "unknown config key: dispatch.Qx"),
        (["--lake", "{tmp}/lake", "--date", "2026-01-11", "--set", "dispatch.Q"], "--set wants KEY=VALUE"),
    ],
)
def test_bad_cli_arguments_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "afile").write_text("x")
    rc, err = _stage([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert rc == 2 and message in err, err


# ------------------------------------------------------------------------------ secrets
FAKE_SECRET = "FAKEs3cr3t/kEy+do-not-log-0123456789"


def test_credentials_in_config_are_refused_without_echo(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"spark:\n  conf:\n    spark.hadoop.fs.s3a.secret.key: {FAKE_SECRET}\n")
    rc, err = _stage(["--lake", str(tmp_path / "lake"), "--date", DAY.isoformat(), "--config", str(cfg)], capsys)
    assert rc == 2 and "must not hold credentials (spark.hadoop.fs.s3a.secret.key)" in err
    assert FAKE_SECRET not in err
    rc, err = _stage(["--lake", str(tmp_path / "lake"), "--date", DAY.isoformat(),
                      "--set", f'spark.conf={{"spark.hadoop.fs.s3a.session.token": "{FAKE_SECRET}"}}'], capsys)
    assert rc == 2 and "must not hold credentials" in err and FAKE_SECRET not in err
    rc, err = _stage(["--lake", str(tmp_path / "lake"), "--date", DAY.isoformat(), "--set", f"spark.conf={FAKE_SECRET}"], capsys)
    assert rc == 2 and "spark.conf must be dict" in err and FAKE_SECRET not in err


def test_credentials_in_the_lake_uri_are_refused_without_echo(capsys):
    rc, err = _stage(["--lake", f"s3a://AKIAFAKE:{FAKE_SECRET}@bucket/lake", "--date", DAY.isoformat()], capsys)
    assert rc == 2 and "credentials must not be embedded in the lake URI" in err
    assert FAKE_SECRET not in err and "AKIAFAKE" not in err


def test_secret_in_environment_never_reaches_the_logs(tmp_path, capsys, caplog, monkeypatch, spark):
    """A full dispatch stage run at DEBUG, then a failing one: the secret appears nowhere."""
    from dualrec.stages.dispatch import run

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKE")
    lake = dispatch_lake(tmp_path / "lake")
    caplog.set_level(logging.DEBUG)
    capsys.readouterr()
    args = ["--lake", lake.root, "--date", DAY.isoformat(), "-v",
            *sum((["--set", f"dispatch.{k}={v}"] for k, v in DISPATCH.items()), [])]
    assert stage_main("dispatch", run, args) == 0
    assert lake.has_partition("match_sets", DAY)
    os.remove(lake.fs_path(f"{lake.partition_rel('ranked', DAY)}/_SUCCESS"))
    assert stage_main("dispatch", run, args) == 2
    out = capsys.readouterr()
    text = out.out + out.err + caplog.text
    assert "stage dispatch" in text and "partition dt=" in text  # the logs were captured
    assert FAKE_SECRET not in text and "AKIAFAKEFAKE" not in text
