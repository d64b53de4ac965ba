"""Concurrent runs of one day are refused; artefact problems name the file and the stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from dualrec.artifacts import ArtifactError, artifact_file, read_manifest
from dualrec.config import DualRecConfig
from dualrec.lake import Lake
from dualrec.pipeline import RunLockedError, day_lock, run_day

DAY = "2026-01-05"


def test_second_run_of_same_day_is_refused(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    from dualrec.lake import parse_date

    with day_lock(lake, parse_date(DAY)):
        with pytest.raises(RunLockedError, match="already being run"):
            run_day(lake, DAY, DualRecConfig(), stages=["activity"])
    # released afterwards
    with day_lock(lake, parse_date(DAY)):
        pass


def test_lock_of_a_killed_run_is_recovered(tmp_path):
    """A run killed while holding the lock does not block the day forever."""
    lake = Lake(str(tmp_path / "lake"))
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {os.getcwd()!r})
        from dualrec.lake import Lake, parse_date
        from dualrec.pipeline import day_lock
        with day_lock(Lake({lake.root!r}), parse_date({DAY!r})):
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    subprocess.run([sys.executable, "-c", script])
    assert os.path.exists(lake.fs_path(f"_locks/dt={DAY}.lock"))
    from dualrec.lake import parse_date

    with day_lock(lake, parse_date(DAY)):
        pass


@pytest.fixture()
def lake_with_manifest(tmp_path) -> Lake:
    lake = Lake(str(tmp_path / "lake"))
    with lake.publish_dir(Lake.model_rel("ranker", DAY)) as st:
        lake.write_text(f"{st}/manifest.json", json.dumps({"version": 1}))
    return lake


def test_missing_artifact_names_file_and_stage(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(ArtifactError, match=r"_models/ranker/dt=2026-01-05.*stage 'rank'"):
        read_manifest(lake, "ranker", DAY, version=1)


def test_wrong_version_and_corrupt_manifest_are_named(lake_with_manifest):
    lake = lake_with_manifest
    with pytest.raises(ArtifactError, match="version 1, this code reads version 2.*stage 'rank'"):
        read_manifest(lake, "ranker", DAY, version=2)
    lake.write_text(Lake.model_rel("ranker", DAY) + "/manifest.json", "{not json")
    with pytest.raises(ArtifactError, match="corrupt manifest .*manifest.json"):
        read_manifest(lake, "ranker", DAY, version=1)
    with pytest.raises(ArtifactError, match="model.pt is missing .*stage 'rank'"):
        artifact_file(lake, "ranker", DAY, "model.pt")


@pytest.mark.parametrize(
    "loader, name, stage",
    [
        ("models.two_tower:load_two_tower", "two_tower", "two_tower"),
        ("models.ranker:load_ranker", "ranker", "rank"),
        ("models.activity:load", "activity", "activity"),
    ],
)
def test_every_model_loader_names_file_and_stage(tmp_path, loader, name, stage):
    import importlib

    mod, fn = loader.split(":")
    load = getattr(importlib.import_module(mod), fn)
    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(ArtifactError, match=rf"_models/{name}/dt=2026-01-05.*stage '{stage}'"):
        load(lake, DAY)
    with lake.publish_dir(Lake.model_rel(name, DAY)) as st:
        lake.write_text(f"{st}/manifest.json", json.dumps({"version": 999}))
    with pytest.raises(ArtifactError, match=f"version 999.*stage '{stage}'"):
        load(lake, DAY)


@pytest.mark.parametrize("name, stage", [("user_index", "two_tower"), ("item_index", "similarity")])
def test_index_loader_names_file_and_stage(tmp_path, name, stage):
    from models.ann import load_index

    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(ArtifactError, match=f"stage '{stage}'"):
        load_index(lake, name, DAY)
    with lake.publish_dir(Lake.model_rel(name, DAY)) as st:
        lake.write_text(f"{st}/manifest.json", json.dumps({"version": 1}))
    with pytest.raises(ArtifactError, match=f"index.faiss is missing|stage '{stage}'"):
        load_index(lake, name, DAY)
