"""Synthetic world generator (the project's test bed) and its hidden ground truth.

``generate(lake_root, preset="tiny", start="2026-01-01", days=14, seed=7)`` writes the input
tables ``users``, ``items``, ``visits``, ``interactions`` plus ``<lake>/_truth/``;
:class:`dualrec.synth.truth.Truth` reads the truth back for evaluation.
"""

from dualrec.synth.presets import PRESETS, Preset, get_preset
from dualrec.synth.world import generate

__all__ = ["generate", "PRESETS", "Preset", "get_preset"]
