"""Per-day derived-data caches under ``<lake>/_cache/<name>/dt=X`` (activity and ranker aggregates).

Why: a day's aggregates depend only on that day's input partitions, but every daily run reads a
window of weeks. Each cache entry is computed once, tagged with the content version of the inputs
it came from (:func:`partition_version`: the listing fingerprint and the validation drop list),
and reused while that version holds; republishing an input partition recomputes the entry.
Entries are published by rename, like every partition of the lake, so a crash leaves either
the old entry or the new one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import posixpath
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import pyarrow.fs as pafs

from dualrec.lake import Lake

KEY_FILE = "_key.json"


def partition_version(lake: Lake, table: str, day: dt.date) -> list[Any] | None:
    """What a reader of ``table`` dt=``day`` sees: its listing fingerprint and drop list (None: absent)."""
    if not lake.has_partition(table, day):
        return None
    info = lake.fs.get_file_info(lake.fs_path(f"{lake.validation_rel(table, day)}/dropped.parquet"))
    dropped = [info.size, info.mtime_ns] if info.type == pafs.FileType.File else None
    return [lake.fingerprint(table, day), dropped]


def digest(parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def entry_rel(root: str, day: dt.date) -> str:
    return Lake.partition_rel(root, day)


def entry_ok(lake: Lake, root: str, day: dt.date, key: str) -> bool:
    """The entry of ``day`` exists, is complete, and was computed from inputs of version ``key``."""
    rel = entry_rel(root, day)
    if not lake.is_complete(rel):
        return False
    try:
        return json.loads(lake.read_text(f"{rel}/{KEY_FILE}")).get("key") == key
    except (OSError, ValueError):
        return False


def missing_days(lake: Lake, roots: Iterable[str], keys: dict[dt.date, str]) -> list[dt.date]:
    """Days whose entry is stale or absent in any of ``roots`` (caches that share one key)."""
    roots = list(roots)
    return sorted(d for d, k in keys.items() if not all(entry_ok(lake, r, d, k) for r in roots))


def publish(lake: Lake, roots: str | list[str], days: list[dt.date], keys: dict[dt.date, str],
            fill: Callable[[dict[str, str], list[dt.date]], None]) -> None:
    """Compute the entries of ``days`` in every cache of ``roots`` (one key) and swap each into place.

    ``fill(staging, days)`` gets a staging directory per root and writes
    ``<staging[root]>/dt=X/*.parquet`` for the days that have rows (a day without rows gets an
    entry without data files). Each entry gets its key and ``_SUCCESS``, then replaces a stale
    entry by rename."""
    roots = [roots] if isinstance(roots, str) else list(roots)
    token = uuid.uuid4().hex
    staging = {r: f"{r}/_staging/{token}" for r in roots}
    try:
        fill(staging, days)
        for r in roots:
            for d in days:
                src = entry_rel(staging[r], d)
                if not lake.exists(src):
                    lake.fs.create_dir(lake.fs_path(src), recursive=True)
                lake.write_text(f"{src}/{KEY_FILE}", json.dumps({"key": keys[d], "day": d.isoformat()}))
                lake.write_text(f"{src}/_SUCCESS", "")
                target = lake.fs_path(entry_rel(r, d))
                if lake.fs.get_file_info(target).type != pafs.FileType.NotFound:
                    lake.fs.delete_dir(target)  # a stale entry (its inputs were republished)
                lake.fs.move(lake.fs_path(src), target)
    finally:
        for st in staging.values():
            if lake.exists(st):
                lake.fs.delete_dir(lake.fs_path(st))


def read(spark, lake: Lake, root: str, days: Iterable[dt.date], schema):
    """The entries of ``days`` as one DataFrame with a ``dt`` column (partition discovery)."""
    base = lake.fs_path("")
    paths = [lake.uri(posixpath.relpath(f, base)) for d in sorted(set(days))
             for f in lake.data_files(root, d)]
    if not paths:
        return spark.createDataFrame([], schema)
    return spark.read.schema(schema).option("basePath", lake.uri(root)).parquet(*paths)


__all__ = ["KEY_FILE", "digest", "entry_ok", "entry_rel", "missing_days", "partition_version", "publish", "read"]
