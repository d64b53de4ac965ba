"""Console formatting and config loading shared by the CLI's light and heavy sub-commands."""

from __future__ import annotations

import argparse

import numpy as np

from jobs.common import load_config


def format_summary(summary: dict, title: str = "synthetic world written:") -> str:
    lines = [title]
    for k, v in summary.items():
        if isinstance(v, dict):
            lines.append(f"  {k}:")
            lines.extend(f"    {kk}: {fmt(vv)}" for kk, vv in v.items())
        else:
            lines.append(f"  {k}: {fmt(v)}")
    return "\n".join(lines)

def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)

def config_of(args: argparse.Namespace):
    return load_config(getattr(args, "config", None), getattr(args, "set", None))


def json_default(v):
    """``json.dumps`` fallback: NumPy scalars as Python numbers, anything else as text."""
    if isinstance(v, np.generic):
        return v.item()
    return str(v)
