"""Saving and loading PyTorch models as weights + JSON manifest (shared by the two-tower and the ranker).

Weights are a ``state_dict`` loaded with ``torch.load(weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

import io
import json
import posixpath
from typing import Any

import torch

MANIFEST_FILE = "manifest.json"


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
