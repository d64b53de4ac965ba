"""Public-dataset adapters: ``dualrec ingest {movielens,kuairand,recbole} --src DIR --lake DIR``.

``ingest(kind, src, lake_root, **opts) -> dict`` reads the user-downloaded files in ``src``
(nothing is downloaded here), maps them to the four input tables of the lake contract
(``users``, ``items``, ``visits``, ``interactions``, one ``dt=`` partition per day from the
first to the last day with activity), validates every partition before publishing any, and
writes ``_lake.json`` (``emb_dim``, ``allow_empty_tables``, ``source``). Re-ingesting the
same files gives the same lake. The mappings are documented in :mod:`.movielens`,
:mod:`.kuairand` and ``docs/datasets.md``.

Options (keyword ``opts``), all optional:

* all: ``emb_dim`` (32) content-embedding dimension, ``seed`` (0) projection/hash seed,
  ``tz_offset_hours`` (MovieLens and RecBole 0, KuaiRand 8) shift from UTC to the dataset's local day.
* kuairand: ``include_random`` (True) also read the random-exposure log,
  ``upload_time`` ("upload_dt" | "first_exposure"), ``register_ref`` (YYYY-MM-DD day that
  ``register_days`` counts back from; default the last log day).
* recbole: ``dataset`` (NAME of ``NAME.inter`` when ``src`` holds several), field names
  ``user_field`` / ``item_field`` / ``time_field`` / ``rating_field`` / ``label_field``,
  ``like_threshold`` (4) / ``view_threshold`` (3) on the rating, ``creator_field`` and
  ``category_field`` of ``.item`` (see :mod:`.recbole`).

Errors: :class:`IngestError` (a ``ValueError``) names the missing/unreadable file or column;
``schemas.validate.BadInputError`` lists contract violations (nothing is written then).
"""

from __future__ import annotations

import importlib
import inspect
import logging
from pathlib import Path
from typing import Any

from dualrec.ingest.common import IngestError, write_dataset

log = logging.getLogger(__name__)

KINDS = ("movielens", "kuairand", "recbole")


def load(kind: str, src: str | Path, **opts: Any):
    """Map a dataset to an in-memory :class:`~dualrec.ingest.common.Dataset` without writing."""
    if kind not in KINDS:
        raise IngestError(f"unknown dataset kind {kind!r}; known: {', '.join(KINDS)}")
    mod = importlib.import_module(f"dualrec.ingest.{kind}")  # only the adapter asked for is loaded
    known = [n for n in inspect.signature(mod.load).parameters if n != "src"]
    unknown = sorted(set(opts) - set(known))
    if unknown:
        raise IngestError(f"{kind}: unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return mod.load(src, **opts)


def ingest(kind: str, src: str | Path, lake_root: str, **opts: Any) -> dict[str, Any]:
    """Convert a public dataset in ``src`` into the lake at ``lake_root``; return a summary.

    Summary keys: kind, lake, start, end, days, users, active_users, items, emb_dim,
    rows (per table), raw_exposures, positive_rates (per feedback), allow_empty_tables,
    adapter notes (dropped rows ...), seconds.
    """
    ds = load(kind, src, **opts)
    return write_dataset(ds, lake_root)



__all__ = ["KINDS", "IngestError", "ingest", "load"]
