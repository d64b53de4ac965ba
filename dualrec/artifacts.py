"""Model and index artefacts: files plus a JSON manifest, checked on load.

A loader that finds an artefact missing, corrupt or of another format version raises
:class:`ArtifactError` naming the file and the stage that produces it, so an operator knows
which stage to rerun. Nothing here unpickles: weights are loaded with
``torch.load(weights_only=True)``, XGBoost models from JSON, FAISS indexes from their own format.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from dualrec.lake import Lake, LakeError, parse_date
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
