"""The feedback vocabulary of the data contract, defined once.

The ``interactions`` table carries one int8 flag per feedback type; the ranker predicts the
six tasks of paper 3.3 (``RANK_TASKS``); the creator-visible ones (``VISIBLE_FEEDBACKS``: the
paper's explicit feedback, which a creator sees) are the positives of the two-tower model, of
H^I and of every "positive user" notion, and the ones the synthetic truth's expected
feedback counts. Every module takes these tuples from here.
"""

from __future__ import annotations

FEEDBACK_TYPES: tuple[str, ...] = ("click", "like", "comment", "follow", "share", "profile_enter", "long_view")
"""Every feedback flag in ``interactions`` (``is_<type>``), in column order."""

RANK_TASKS: tuple[str, ...] = ("like", "comment", "follow", "share", "profile_enter", "long_view")
"""The M = 6 tasks of the multi-task ranker (scores ``s_<task>`` in ``ranked``)."""

VISIBLE_FEEDBACKS: tuple[str, ...] = ("like", "comment", "follow", "share", "profile_enter")
"""Creator-visible (explicit) feedback; an effective (long) view is not visible to the creator."""

FEEDBACK_FLAGS: tuple[str, ...] = tuple(f"is_{t}" for t in FEEDBACK_TYPES)
"""The int8 flag columns of ``interactions``."""
