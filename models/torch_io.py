"""Saving and loading PyTorch models as weights + JSON manifest (shared by the two-tower and the ranker),
and the optimiser plumbing the two-tower and next-user trainers share.

Weights are a ``state_dict`` loaded with ``torch.load(weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Callable
from typing import Any

import torch

from dualrec import artifacts

MANIFEST_FILE = "manifest.json"


def sparse_dense_optimizers(model: torch.nn.Module, lr: float) -> list[torch.optim.Optimizer]:
    """SparseAdam for the ``sparse=True`` embedding tables, Adam for every other parameter.

    Hashed-ID tables are large and each batch touches a few rows: sparse gradients keep a step
    proportional to the rows touched. Parameter order follows ``model.modules()``, so training stays
    bitwise reproducible."""
    sparse = [p for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse for p in m.parameters()]
    ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if id(p) not in ids]
    return [torch.optim.SparseAdam(sparse, lr=lr), torch.optim.Adam(dense, lr=lr)]


def optimizer_step(opts: list[torch.optim.Optimizer], loss: torch.Tensor) -> float:
    """One gradient step of every optimiser on ``loss``; returns the loss as a float."""
    for o in opts:
        o.zero_grad()
    loss.backward()
    for o in opts:
        o.step()
    return float(loss.detach())


def state_to_bytes(model: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def load_state(model: torch.nn.Module, blob: bytes) -> torch.nn.Module:
    """Fill ``model`` from weights bytes and put it in eval mode."""
    model.load_state_dict(torch.load(io.BytesIO(blob), weights_only=True))
    model.eval()
    return model


def save_model(
    model: torch.nn.Module, spec: dict[str, Any], lake, rel: str, name: str, version: int, weights_file: str,
    manifest: dict[str, Any],
) -> dict[str, Any]:
    """Write weights + manifest into ``rel`` (a ``lake.publish_dir`` staging directory)."""
    with lake.fs.open_output_stream(lake.fs_path(posixpath.join(rel, weights_file))) as f:
        f.write(state_to_bytes(model))
    full = {"name": name, "version": version, "spec": spec, "weights": weights_file, **manifest}
    lake.write_text(posixpath.join(rel, MANIFEST_FILE), json.dumps(full, indent=2, sort_keys=True, default=str))
    return full


def load_model(
    lake, name: str, day, version: int, weights_file: str, from_bytes: Callable[[dict[str, Any], bytes], torch.nn.Module]
) -> torch.nn.Module:
    """The model of ``_models/<name>/dt=day`` (``from_bytes(spec, blob)`` rebuilds it), manifest attached as
    ``.manifest``. Why one loader: a missing, other-version or corrupt artefact must name its file and the
    stage that produces it the same way for every model."""
    manifest = artifacts.read_manifest(lake, name, day, version=version)
    weights = manifest.get("weights", weights_file)
    path = artifacts.artifact_file(lake, name, day, weights)
    try:
        with lake.fs.open_input_stream(path) as f:
            model = from_bytes(manifest["spec"], f.read())
    except Exception as e:  # noqa: BLE001 - any decoding failure is a corrupt artefact
        raise artifacts.corrupt_error(lake, name, day, weights, e) from e
    model.manifest = manifest  # type: ignore[attr-defined]
    return model
