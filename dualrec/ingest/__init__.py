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

import inspect
import logging
from pathlib import Path
from typing import Any

from dualrec.ingest.common import IngestError, write_dataset

log = logging.getLogger(__name__)

KINDS = ("movielens", "kuairand", "recbole")


def load(kind: str, src: str | Path, **opts: Any):
    """Map a dataset to an in-memory :class:`~dualrec.ingest.common.Dataset` without writing."""
    if kind == "movielens":
        from dualrec.ingest import movielens as mod
    elif kind == "kuairand":
        from dualrec.ingest import kuairand as mod
    elif kind == "recbole":
        from dualrec.ingest import recbole as mod
    else:
        raise IngestError(f"unknown dataset kind {kind!r}; known: {', '.join(KINDS)}")
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


def add_subcommand(sub) -> None:
    """Register ``dualrec ingest {movielens,kuairand,recbole} --src DIR --lake DIR [options]`` on a subparsers object.

    For ``jobs/cli.py``: ``_EXTRA_COMMANDS.append(add_subcommand)``. Returns exit code 0;
    errors propagate as ``ValueError`` (IngestError / BadInputError), which the CLI maps to 2.
    """
    p = sub.add_parser("ingest", help="convert a public dataset (MovieLens-100K, KuaiRand-Pure, RecBole atomic files) into a lake")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--src", required=True, help="folder with the downloaded files (see docs/datasets.md)")
    p.add_argument("--lake", required=True)
    p.add_argument("--emb-dim", type=int, default=32, help="content-embedding dimension")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tz-offset-hours", type=float, default=None, help="default: movielens 0, kuairand 8")
    p.add_argument("--no-random-log", action="store_true", help="kuairand: skip log_random_4_22_to_5_08_pure.csv")
    p.add_argument("--upload-time", choices=["upload_dt", "first_exposure"], default="upload_dt", help="kuairand")
    p.add_argument("--register-ref", help="kuairand: day register_days counts back from (default: last log day)")
    p.add_argument("--dataset", help="recbole: NAME of NAME.inter when --src holds several")
    p.add_argument("--like-threshold", type=float, default=4.0, help="recbole: rating >= this is a like")
    p.add_argument("--view-threshold", type=float, default=3.0, help="recbole: rating >= this is a long view")
    p.add_argument("--creator-field", help="recbole: .item field holding the creator (default: item_id)")
    p.add_argument("--category-field", help="recbole: .item field holding the category (default: class/genre/...)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(fn=_cmd_ingest)


def _cmd_ingest(args) -> int:
    import json

    opts: dict[str, Any] = {"emb_dim": args.emb_dim, "seed": args.seed}
    if args.tz_offset_hours is not None:
        opts["tz_offset_hours"] = args.tz_offset_hours
    if args.kind == "kuairand":
        opts.update(include_random=not args.no_random_log, upload_time=args.upload_time, register_ref=args.register_ref)
    if args.kind == "recbole":
        opts.update(dataset=args.dataset, like_threshold=args.like_threshold, view_threshold=args.view_threshold,
                    creator_field=args.creator_field, category_field=args.category_field)
    summary = ingest(args.kind, args.src, args.lake, **opts)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"ingested {summary['kind']} into {summary['lake']}: {summary['start']} .. {summary['end']} "
              f"({summary['days']} days), {summary['users']} users, {summary['items']} items")
        print("  rows: " + ", ".join(f"{k}={v}" for k, v in summary["rows"].items()))
        print("  positive rates: " + ", ".join(f"{k}={v:.4f}" for k, v in summary["positive_rates"].items()))
    return 0


__all__ = ["KINDS", "IngestError", "add_subcommand", "ingest", "load"]
