"""Fixtures of the reliability suite (helpers live in ``relhelpers.py``)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from relhelpers import copy_world  # noqa: E402
from dualrec.lake import Lake  # noqa: E402


@pytest.fixture(scope="module")
def world(tiny_world, tmp_path_factory) -> Lake:
    """A private copy of the tiny world for one test module (tests restore what they corrupt)."""
    return copy_world(tiny_world, tmp_path_factory.mktemp("rel_world") / "lake")
