"""The one declaration of a day's stages: what each reads, writes and produces.

Pure data with no imports beyond the standard library, so every layer may consult it: the
stage runner checks inputs from it, artefact loaders name the producing stage from it, and
the cost figures of ``evaluate`` pick each stage's output table from it. Adding a stage (or
an artefact) means editing this table only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class StageSpec:
    """One stage of a day.

    ``inputs`` are the day-D table partitions checked before the stage starts; ``outputs`` the
    tables it publishes (the first is its headline output, counted for rows/s); ``artifacts``
    the models and indexes it writes under ``_models/``.
    """

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...] = ()
    artifacts: tuple[str, ...] = ()
    module: str = ""

    @property
    def module_path(self) -> str:
        return self.module or f"dualrec.stages.{self.name}"


STAGE_SPECS: tuple[StageSpec, ...] = (
    StageSpec("activity", ("users", "visits", "interactions", "items"), ("activity_scores",), ("activity",)),
    StageSpec(
        "two_tower", ("users", "items", "interactions", "activity_scores"), ("user_embeddings",), ("two_tower", "user_index")
    ),
    StageSpec(
        "similarity",
        ("items", "interactions", "user_embeddings", "activity_scores"),
        ("item_similar", "item_positive_users", "user_similar"),
        # next_user: trained here when the channel is enabled (dualrec.channels.next_user declares it)
        ("item_index", "next_user"),
    ),
    # channel-specific inputs are declared by each channel (dualrec.channels) and checked by the stage
    StageSpec("retrieve", ("items", "activity_scores"), ("candidates",)),
    StageSpec("rank", ("users", "items", "interactions", "candidates"), ("ranked",), ("ranker",)),
    # buckets: only on experiment days (dualrec.experiment)
    StageSpec(
        "dispatch", ("items", "activity_scores", "ranked"), ("match_sets", "user_match_sets", "available_users", "buckets")
    ),
    StageSpec("metrics", ("items", "activity_scores", "match_sets"), ("metrics",)),
)

STAGES: tuple[str, ...] = tuple(s.name for s in STAGE_SPECS)
"""Stage order of a day (SPEC section 4)."""

_BY_NAME = {s.name: s for s in STAGE_SPECS}


def stage_spec(name: str) -> StageSpec:
    """The declaration of stage ``name``; a clear error for an unknown one."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}") from None


def stage_inputs(name: str) -> tuple[str, ...]:
    return stage_spec(name).inputs


def table_producer(table: str) -> str | None:
    """The stage that publishes ``table``, or None for an upstream (input) table."""
    for s in STAGE_SPECS:
        if table in s.outputs:
            return s.name
    return None


_derived_producers: Callable[[], dict[str, str]] | None = None


def use_artifact_producers(producers: Callable[[], dict[str, str]] | None) -> None:
    """Install the source of derived artefact producers (artefact -> stage).

    The channel registry (:mod:`dualrec.channels`, a higher layer) installs it when imported: a
    channel that declares a trainer names the stage that trains its ``_models/<channel>``
    artefact, so a new trained channel needs no edit of :data:`STAGE_SPECS`."""
    global _derived_producers
    _derived_producers = producers


def artifact_producer(artifact: str) -> str:
    """The stage that writes artefact ``artifact`` (its own name when no stage declares it)."""
    for s in STAGE_SPECS:
        if artifact in s.artifacts:
            return s.name
    if _derived_producers is not None:
        stage = _derived_producers().get(artifact)
        if stage:
            return stage
    return artifact


def headline_outputs() -> dict[str, str]:
    """Stage -> its headline output table (for rows/s in the cost figures)."""
    return {s.name: s.outputs[0] for s in STAGE_SPECS if s.outputs and s.name != "metrics"}
