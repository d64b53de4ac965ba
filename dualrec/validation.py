"""Checks of everything a stage reads, before it runs: every partition of every read window.

A stage declares what it reads for day D (``reads(cfg, day) -> {table: [dates]}`` in its
module, the same windows its code reads). :func:`check_reads` then, for every upstream table:

1. **gaps**: a partition missing inside a window (after the table's first partition, up to D)
   is an error naming the table, the date and the stage, unless the operator listed it in
   ``validation.allow_missing`` (then it is recorded, never silent);
2. **contract**: every present partition is validated against ``schemas/`` (every data file,
   whatever its name, each file's own schema), the result cached per partition and content
   version (listing fingerprint), so reruns and later stages skip unchanged partitions;
3. **references**: interactions -> items (any items partition <= its day), interactions and
   visits -> the users snapshot of their day, and interaction ts >= the item's upload_ts,
   each with its policy (``error`` or ``drop_and_report``; dropped rows are recorded next to
   the partition and left out by every reader, counts in the stage's stats).

Vectorised PyArrow/NumPy, a few columns at a time; nothing here starts Spark.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dualrec.lake import Lake, LakeError
from schemas.tables import TABLES
from schemas.validate import SAMPLE_ROWS, BadInputError

log = logging.getLogger(__name__)

VALIDATOR_VERSION = 2  # bump when a check changes: cached results of older versions are recomputed
REF_TABLES = ("interactions", "visits")


@dataclass
class InputChecks:
    """What the checks of one stage run did (goes into the stage's stats and ``_validation/_stages``)."""

    partitions: int = 0
    validated: int = 0
    cached: int = 0
    allowed_missing: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "partitions": self.partitions,
            "validated": self.validated,
            "cached": self.cached,
            "allowed_missing": list(self.allowed_missing),
            "dropped": dict(self.dropped),
            "seconds": round(self.seconds, 3),
        }


def check_reads(
    lake: Lake,
    stage: str,
    day: dt.date,
    windows: dict[str, Iterable[dt.date]],
    vcfg,
    memo: set | None = None,
) -> InputChecks:
    """Run gaps, contract and reference checks over a stage's read windows (see the module doc).

    ``memo`` holds (kind, table, day, version) already checked in this process (a day's run
    shares it across stages); ``vcfg`` is the ``validation`` config section.
    """
    t0 = time.perf_counter()
    memo = memo if memo is not None else set()
    out = InputChecks()
    allow = set(getattr(vcfg, "allow_missing", []) or [])
    use_cache = bool(getattr(vcfg, "cache", True))
    present: dict[str, list[dt.date]] = {}
    for table, days in windows.items():
        if table not in TABLES or TABLES[table].kind != "input":
            continue  # derived tables were validated when their producer published them
        days = sorted({d for d in days if d <= day})  # point in time: never after D
        if not days:
            continue
        have = set(lake.partitions(table))
        first = min(have) if have else None
        keep = []
        for d in days:
            if d in have:
                keep.append(d)
                continue
            if first is None or d < first:
                continue  # before the table's history begins: not a gap (history checks are the stage's)
            entry = f"{table}:{d.isoformat()}"
            if entry in allow:
                out.allowed_missing.append(entry)
                log.warning("stage %s: %s accepted as missing (validation.allow_missing)", stage, entry)
                continue
            raise LakeError(
                f"table {table!r}: partition dt={d} is missing inside the window dt={days[0]}..{days[-1]} "
                f"that stage {stage!r} reads for {day} (the table's history starts at dt={first}); deliver it, "
                f"or accept the gap explicitly with validation.allow_missing=['{entry}']"
            )
        present[table] = keep
    # day D first (fail fast on today's delivery, as before), then the history, newest first
    order = sorted(((t, d) for t, ds in present.items() for d in ds), key=lambda td: (td[1] != day, -td[1].toordinal()))
    for table, d in order:
        out.partitions += 1
        if validate_partition(lake, table, d, memo, use_cache):
            out.cached += 1
        else:
            out.validated += 1
    refs = _References(lake)
    policies = dict(getattr(vcfg, "referential", {}) or {})
    for table in REF_TABLES:
        for d in present.get(table, []):
            for check, n in refs.check(table, d, policies, memo, use_cache).items():
                out.dropped[check] = out.dropped.get(check, 0) + n
    out.seconds = time.perf_counter() - t0
    return out


def validate_partition(lake: Lake, table: str, day: dt.date, memo: set, use_cache: bool = True) -> bool:
    """Validate one partition unless this content version passed before; True when the cache answered."""
    fp = lake.fingerprint(table, day)
    version = _digest(fp, lake.emb_dim(), lake.allows_empty(table), VALIDATOR_VERSION)
    if ("contract", table, day, version) in memo:
        return True
    rec = lake.read_check(table, day) if use_cache else None
    if rec is not None and rec.get("version") == version and rec.get("ok"):
        memo.add(("contract", table, day, version))
        return True
    lake.validate_dir(table, day).raise_if_failed()
    memo.add(("contract", table, day, version))
    _store(lake, table, day, {"version": version, "ok": True, "checked_at": time.time()}, "check")
    return False


class _References:
    """Referential checks of interactions/visits partitions (item ids and upload times loaded once per run)."""

    def __init__(self, lake: Lake):
        self.lake = lake
        self._items: dict[dt.date, tuple[np.ndarray, np.ndarray]] = {}
        self._item_fp: dict[dt.date, str] = {}
        self._all_items: list[dt.date] | None = None
        self._users: dict[dt.date, np.ndarray | None] = {}

    def _items_days(self, day: dt.date) -> tuple[list[dt.date], str]:
        """Items partitions <= ``day`` and a version of their content (listing fingerprints)."""
        if self._all_items is None:
            self._all_items = self.lake.partitions("items")
        days = [d for d in self._all_items if d <= day]
        h = hashlib.sha1()
        for d in days:
            if d not in self._item_fp:
                self._item_fp[d] = self.lake.fingerprint("items", d)
            h.update(f"{d}:{self._item_fp[d]};".encode())
        return days, h.hexdigest()

    def _items_upto(self, days: list[dt.date]) -> tuple[np.ndarray, np.ndarray]:
        """Sorted item ids of the given items partitions and their upload times (us)."""
        for d in days:
            if d not in self._items:
                t = self.lake.read_table("items", d, columns=["item_id", "upload_ts"])
                self._items[d] = (
                    t.column("item_id").to_numpy(zero_copy_only=False).astype(np.int64),
                    _micros(t.column("upload_ts")),
                )
        if not days:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        all_ids = np.concatenate([self._items[d][0] for d in days])
        all_up = np.concatenate([self._items[d][1] for d in days])
        order = np.argsort(all_ids, kind="stable")
        return all_ids[order], all_up[order]

    def _users_of(self, day: dt.date) -> np.ndarray | None:
        if day not in self._users:
            self._users[day] = (
                np.unique(self.lake.read_table("users", day, columns=["user_id"]).column("user_id").to_numpy(zero_copy_only=False))
                if self.lake.has_partition("users", day)
                else None
            )
        return self._users[day]

    def check(self, table: str, day: dt.date, policies: dict[str, str], memo: set, use_cache: bool) -> dict[str, int]:
        """Counts of rows dropped per check (policy ``drop_and_report``); raises for policy ``error``."""
        lake = self.lake
        checks = ["visits_users"] if table == "visits" else ["interactions_items", "interaction_after_upload", "interactions_users"]
        pol = {c: policies.get(c, "error") for c in checks}
        users_fp = lake.fingerprint("users", day) if lake.has_partition("users", day) else "absent"
        items_days, items_version = self._items_days(day) if table == "interactions" else ([], "")
        version = _digest(lake.fingerprint(table, day), users_fp, items_version, sorted(pol.items()), VALIDATOR_VERSION)
        if ("refs", table, day, version) in memo:
            return {}
        rec = lake.read_check(table, day, "refs") if use_cache else None
        if rec is not None and rec.get("version") == version:
            memo.add(("refs", table, day, version))
            return {k: int(v) for k, v in rec.get("dropped", {}).items() if v}
        # read the raw partition (no earlier drop list applied: the checks are recomputed from the data)
        lake.write_dropped(table, day, None)
        cols = ["user_id"] if table == "visits" else ["user_id", "item_id", "ts"]
        data = lake.read_table(table, day, columns=cols)
        users = self._users_of(day)
        bad: dict[str, np.ndarray] = {}
        uid = data.column("user_id").to_numpy(zero_copy_only=False).astype(np.int64)
        if users is not None:
            bad[checks[-1]] = ~np.isin(uid, users)
        if table == "interactions":
            item_ids, item_up = self._items_upto(items_days)
            iid = data.column("item_id").to_numpy(zero_copy_only=False).astype(np.int64)
            pos = np.searchsorted(item_ids, iid).clip(max=max(len(item_ids) - 1, 0))
            found = (item_ids[pos] == iid) if len(item_ids) else np.zeros(len(iid), bool)
            bad["interactions_items"] = ~found
            ts = _micros(data.column("ts"))
            up = item_up[pos] if len(item_ids) else np.zeros(len(iid), np.int64)
            bad["interaction_after_upload"] = found & (ts < up)
        dropped: dict[str, int] = {}
        drop = np.zeros(data.num_rows, bool)
        errors = []
        for check, mask in bad.items():
            n = int(mask.sum())
            if not n:
                continue
            if pol[check] == "drop_and_report":
                dropped[check] = n
                drop |= mask
                log.warning("table %r, partition dt=%s: %d row(s) dropped by check %s", table, day, n, check)
            else:
                errors.append(_ref_message(table, day, check, mask, data, uid))
        if errors:
            raise BadInputError(f"{len(errors)} problem(s):\n" + "\n".join(f"  - {e}" for e in errors))
        if drop.any():
            key = list(TABLES[table].key)
            lake.write_dropped(table, day, data.select(key).filter(pa.array(drop)))
        memo.add(("refs", table, day, version))
        _store(lake, table, day, {"version": version, "dropped": dropped, "checked_at": time.time()}, "refs")
        return dropped


_REF_TEXT = {
    "interactions_items": ("item_id", "row(s) reference an item that is in no items partition on or before this day"),
    "interactions_users": ("user_id", "row(s) reference a user absent from the users snapshot of this day"),
    "visits_users": ("user_id", "row(s) reference a user absent from the users snapshot of this day"),
    "interaction_after_upload": ("ts", "row(s) are timestamped before the item's upload_ts"),
}


def _ref_message(table: str, day: dt.date, check: str, mask: np.ndarray, data: pa.Table, uid: np.ndarray) -> str:
    column, text = _REF_TEXT[check]
    idx = np.flatnonzero(mask)[:SAMPLE_ROWS]
    sample = [{c: _py(data.column(c)[int(i)].as_py()) for c in data.column_names} for i in idx]
    return (
        f"table {table!r}, partition dt={day}, column {column!r}: {int(mask.sum())} {text} (check {check!r}, "
        f"policy 'error'; validation.referential.{check}=drop_and_report drops them instead)"
        f"\n    sample rows: " + "; ".join(json.dumps(r, default=str) for r in sample)
    )


def _py(v):
    return v.isoformat() if isinstance(v, dt.datetime) else v


def _micros(ts: pa.ChunkedArray | pa.Array) -> np.ndarray:
    arr = ts.combine_chunks() if isinstance(ts, pa.ChunkedArray) else ts
    return pc.cast(pc.cast(arr, pa.timestamp("us", tz="UTC")), pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)


def _digest(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, default=str, sort_keys=True).encode()).hexdigest()


def _store(lake: Lake, table: str, day: dt.date, record: dict, name: str) -> None:
    try:
        lake.write_check(table, day, record, name)
    except OSError as e:  # a read-only lake still validates, it only cannot cache
        log.warning("cannot cache the validation of %s dt=%s: %s", table, day, e)


def record_stage_inputs(lake: Lake, stage: str, day: dt.date, checks: InputChecks, windows: dict) -> None:
    """``_validation/_stages/<stage>/dt=D.json``: what the stage's checks saw (gaps accepted, rows dropped)."""
    rec = {
        "stage": stage,
        "day": day.isoformat(),
        "windows": {t: [min(d).isoformat(), max(d).isoformat()] for t, d in windows.items() if d},
        **checks.as_dict(),
    }
    try:
        lake.write_check("_stages", day, rec, stage)
    except OSError as e:
        log.warning("cannot record the input checks of stage %s: %s", stage, e)


__all__ = ["InputChecks", "check_reads", "record_stage_inputs", "validate_partition", "VALIDATOR_VERSION"]
