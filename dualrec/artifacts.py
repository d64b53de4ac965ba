"""Model and index artefacts: files plus a JSON manifest, checked on load.

A loader that finds an artefact missing, corrupt or of another format version raises
:class:`ArtifactError` naming the file and the stage that produces it, so an operator knows
which stage to rerun. Nothing here unpickles: weights are loaded with
``torch.load(weights_only=True)``, XGBoost models from JSON, FAISS indexes from their own format.
"""

from __future__ import annotations

import datetime as dt
import json
import posixpath
from typing import Any

import pyarrow.fs as pafs

from dualrec.lake import SUCCESS, Lake, LakeError, parse_date
from dualrec.registry import artifact_producer

MANIFEST = "manifest.json"

class ArtifactError(LakeError):
    """A model/index artefact is missing, corrupt or of an unexpected version.

    A :class:`LakeError`, so stage entry points exit with the bad-input code (2) and the
    message (file + producing stage) is kept as is."""


def artifact_rel(name: str, day: dt.date | str) -> str:
    return Lake.model_rel(name, day)


def read_manifest(lake: Lake, name: str, day: dt.date | str, version: int | None = None) -> dict[str, Any]:
    """Load and check ``_models/<name>/dt=D/manifest.json``."""
    day = parse_date(day)
    rel = artifact_rel(name, day)
    path = lake.uri(f"{rel}/{MANIFEST}")
    stage = artifact_producer(name)
    if not lake.is_complete(rel) or not lake.exists(f"{rel}/{MANIFEST}"):
        raise ArtifactError(
            f"artefact {name!r} for dt={day} is missing: {path} (produced by stage {stage!r}; run it for {day})"
        )
    try:
        manifest = json.loads(lake.read_text(f"{rel}/{MANIFEST}"))
        if not isinstance(manifest, dict):
            raise ValueError("manifest is not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"artefact {name!r}: corrupt manifest {path} ({e}); rerun stage {stage!r} for {day}") from e
    if version is not None and manifest.get("version") != version:
        raise ArtifactError(
            f"artefact {name!r}: {path} has version {manifest.get('version')!r}, this code reads version {version}; "
            f"rerun stage {stage!r} for {day}"
        )
    return manifest


def artifact_file(lake: Lake, name: str, day: dt.date | str, filename: str) -> str:
    """Filesystem path of a file inside an artefact, checked to exist."""
    rel = f"{artifact_rel(name, day)}/{filename}"
    if not lake.exists(rel):
        raise ArtifactError(
            f"artefact {name!r}: file {lake.uri(rel)} is missing (produced by stage {artifact_producer(name)!r})"
        )
    return lake.fs_path(rel)


def corrupt_error(lake: Lake, name: str, day: dt.date | str, filename: str, err: Exception) -> ArtifactError:
    rel = f"{artifact_rel(name, day)}/{filename}"
    detail = (str(err).strip().splitlines() or [""])[0]  # native libraries append stack traces
    return ArtifactError(
        f"artefact {name!r}: {lake.uri(rel)} cannot be loaded ({type(err).__name__}: {detail}); "
        f"rerun stage {artifact_producer(name)!r} for {parse_date(day)}"
    )


def keep_previous(lake: Lake, name: str, day: dt.date | str, prev_day: dt.date | str, reason: str) -> dict[str, Any]:
    """Publish ``_models/<name>/dt=D`` as a copy of the model of ``prev_day``, saying so in its manifest.

    Why: real logs have quiet days (no uploads, no exposures in an incremental training
    window, a handful of active users). A stage with nothing to train on keeps the previous
    model instead of stopping the day, and day D still has its own artefact, so loaders, warm
    starts and the evaluation find one per day. The manifest keeps every field of the previous
    one (training window, spec, ...) and adds ``kept_previous: true``, ``kept_from`` (the day
    the weights were trained, followed through earlier kept days) and ``reason``.
    """
    day, prev_day = parse_date(day), parse_date(prev_day)
    src = artifact_rel(name, prev_day)
    manifest = read_manifest(lake, name, prev_day)
    manifest.update({
        "kept_previous": True,
        "kept_from": manifest.get("kept_from") or prev_day.isoformat(),
        "reason": reason,
    })
    if "day" in manifest:
        manifest["day"] = day.isoformat()
    with lake.publish_dir(artifact_rel(name, day)) as staging:
        for info in lake.fs.get_file_info(pafs.FileSelector(lake.fs_path(src), recursive=True)):
            rel = posixpath.relpath(info.path, lake.fs_path(src))
            if info.type == pafs.FileType.Directory:
                lake.fs.create_dir(lake.fs_path(f"{staging}/{rel}"), recursive=True)
            elif rel not in (MANIFEST, SUCCESS):
                lake.fs.copy_file(info.path, lake.fs_path(f"{staging}/{rel}"))
        lake.write_text(f"{staging}/{MANIFEST}", json.dumps(manifest, indent=2, sort_keys=True, default=str))
    return manifest
