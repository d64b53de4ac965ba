"""User-creator co-diverted experiments (paper 5.1.1): arms, their configs, the bucket assignment.

Why co-diverted: in a user-diverted test both groups share creators, so a creator-side change
leaks between them. Here creators are hashed into arms, users are hashed into arms *in the same
proportions*, and an arm's items are dispatched only to its own users, from its own store.

The assignment is a pure function of (salt, entity kind, id): ``u = hash64(id, salt, crc32(kind))``
mapped to [0, 1) and cut at the cumulative arm shares, arms in name order. So it is the same on
every day, rerun, backfill and machine, whatever the row order; it changes only when the salt,
the arm names or their shares change (changing a share moves only the ids between the cut
points that moved). Users and creators use different offsets, so user 5 and creator 5 are
independent draws.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import zlib
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import types as T

from dualrec.config import DualRecConfig, ExperimentConfig
from dualrec.hashing import hash64
from dualrec.lake import Lake

log = logging.getLogger(__name__)

KINDS = ("user", "creator")
BUCKETS = "buckets"
"""Table of the day's assignment: (kind, id, arm), one row per user of activity_scores and per creator of items."""


def arm_names(exp: ExperimentConfig) -> list[str]:
    """Arm names in assignment order (sorted: reordering the YAML never moves an id)."""
    return sorted(exp.arms)


def is_experiment(cfg: DualRecConfig) -> bool:
    """Two or more arms; no section or one arm is a plain run."""
    return len(cfg.experiment.arms) >= 2


def arm_configs(cfg: DualRecConfig) -> dict[str, DualRecConfig]:
    """Each arm's effective config: the base config (without the experiment) plus the arm's overrides."""
    base = cfg.model_copy(update={"experiment": ExperimentConfig()})
    out = {}
    for name in arm_names(cfg.experiment):
        c = base
        for key, value in cfg.experiment.arms[name].overrides.items():
            c = c.with_override(key, value)
        out[name] = c
    return out


def uniform01(ids: Any, kind: str, salt: int) -> np.ndarray:
    """A stable pseudo-uniform number in [0, 1) per id (53 bits of SplitMix64)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    h = hash64(np.asarray(ids, dtype=np.int64), salt, offset=zlib.crc32(kind.encode()))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def assign(ids: Any, kind: str, exp: ExperimentConfig) -> np.ndarray:
    """Arm index (into :func:`arm_names`) of every id."""
    names = arm_names(exp)
    if not names:
        return np.zeros(len(np.asarray(ids)), dtype=np.int64)
    cuts = np.cumsum([exp.arms[n].share for n in names])
    cuts[-1] = 1.0  # shares sum to 1 up to rounding: the last arm takes the remainder
    return np.minimum(np.searchsorted(cuts, uniform01(ids, kind, exp.salt), side="right"), len(names) - 1)


def assign_names(ids: Any, kind: str, exp: ExperimentConfig) -> np.ndarray:
    """Arm name of every id (object array)."""
    return np.asarray(arm_names(exp), dtype=object)[assign(ids, kind, exp)]


def buckets_table(user_ids: Any, creator_ids: Any, exp: ExperimentConfig) -> pa.Table:
    """The ``buckets`` partition: every user and every creator with its arm."""
    users = np.unique(np.asarray(user_ids, dtype=np.int64))
    creators = np.unique(np.asarray(creator_ids, dtype=np.int64))
    return pa.table({
        "kind": pa.array(["user"] * users.size + ["creator"] * creators.size, pa.string()),
        "id": pa.array(np.concatenate([users, creators]), pa.int64()),
        "arm": pa.array(np.concatenate([assign_names(users, "user", exp), assign_names(creators, "creator", exp)])
                        .astype(str).tolist(), pa.string()),
    })


# ============================================================================ Spark helper
def with_arm(df, id_col: str, kind: str, exp: ExperimentConfig):
    """``df`` plus a string column ``arm`` computed from ``id_col`` in NumPy (mapInArrow)."""
    names = np.asarray(arm_names(exp), dtype=object)

    def fn(batches):
        for b in batches:
            arm = names[assign(b.column(id_col).to_numpy(zero_copy_only=False), kind, exp)]
            yield pa.RecordBatch.from_arrays([*b.columns, pa.array(arm.astype(str).tolist(), pa.string())],
                                             names=[*b.schema.names, "arm"])

    schema = T.StructType([*df.schema.fields, T.StructField("arm", T.StringType(), False)])
    return df.mapInArrow(fn, schema)


# ============================================================================ manifest
def manifest_rel(day: dt.date) -> str:
    return f"_experiments/dt={day.isoformat()}"


def write_manifest(lake: Lake, day: dt.date, cfg: DualRecConfig, stats: dict[str, Any]) -> None:
    """``_experiments/dt=D/manifest.json``: salt, arms (share, overrides, effective dispatch config), stats."""
    exp = cfg.experiment
    confs = arm_configs(cfg)
    doc = {
        "date": day.isoformat(), "salt": exp.salt, "control": exp.control, "arms": {
            n: {"share": exp.arms[n].share, "overrides": exp.arms[n].overrides, "dispatch": confs[n].dispatch.model_dump(),
                "stats": stats.get(n)} for n in arm_names(exp)},
    }
    with lake.publish_dir(manifest_rel(day)) as staging:
        lake.write_text(f"{staging}/manifest.json", json.dumps(doc, indent=2, sort_keys=True, default=str))


def read_manifest(lake: Lake, day: dt.date) -> dict[str, Any] | None:
    """The day's experiment manifest, or None when day D was a plain run."""
    rel = manifest_rel(day)
    if not (lake.is_complete(rel) and lake.has_partition(BUCKETS, day)):
        return None
    return json.loads(lake.read_text(f"{rel}/manifest.json"))


def experiment_of(manifest: dict[str, Any]) -> ExperimentConfig:
    """The experiment section a manifest was written with."""
    return ExperimentConfig.model_validate({
        "salt": manifest["salt"], "control": manifest["control"],
        "arms": {n: {"share": a["share"], "overrides": a["overrides"]} for n, a in manifest["arms"].items()},
    })


def clear(lake: Lake, day: dt.date) -> bool:
    """Remove day D's assignment (a plain rerun of an experiment day replaces its outputs)."""
    removed = False
    for rel in (lake.partition_rel(BUCKETS, day), manifest_rel(day)):
        if lake.exists(rel):
            lake.fs.delete_dir(lake.fs_path(rel))
            removed = True
    if removed:
        log.info("day %s: experiment assignment removed (plain run)", day)
    return removed
