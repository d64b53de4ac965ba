"""RecBole atomic files -> lake (``dualrec ingest recbole --src DIR --lake DIR``).

RecBole's atomic files are the recsys community's common exchange format (the ``recbole``
wheel ships MovieLens-100K in it under ``dataset_example/ml-100k``; RecBole's dataset
collection converts ~40 public datasets to it). Each file is tab separated, UTF-8, and its
header names every field with a type, e.g. ``user_id:token  item_id:token  rating:float
timestamp:float``. Types: ``token`` (an id or category), ``token_seq`` (space-separated
tokens), ``float``, ``float_seq`` (space-separated numbers).

Files (``DIR`` holds ``NAME.inter`` and optionally ``NAME.item`` / ``NAME.user``, or one
sub-folder that does; ``dataset=NAME`` picks one when several are present):

* ``.inter`` (required): ``user_id``, ``item_id`` and ``timestamp`` (unix seconds, UTC;
  the lake is day-partitioned, so a dataset without times cannot be ingested), optionally
  ``rating`` or ``label``. Field names can be changed with ``user_field`` / ``item_field`` /
  ``time_field`` / ``rating_field`` / ``label_field`` (RecBole's ``USER_ID_FIELD`` ...).
* ``.item`` (optional): ``item_id`` plus any attributes.
* ``.user`` (optional): ``user_id`` plus any attributes.

Mapping (every row of ``.inter`` is one exposure, as in :mod:`.movielens`):

* ids: when every token of an id field is an integer the ids are kept; otherwise the tokens
  of ``.inter`` and the side file together are numbered 1..n in sorted order (stable across
  re-ingests of the same files).
* ``interactions``: ts = timestamp (+ ``tz_offset_hours``, default 0); is_click = 1;
  with a rating field is_like = rating >= ``like_threshold`` (4) and is_long_view = rating >=
  ``view_threshold`` (3); with only a label field both are label > 0; with neither (an
  implicit-feedback log) both are 1. is_comment = is_follow = is_share = is_profile_enter =
  0; play_time_ms = 0. Same-day repeats of a pair fold into one row (common code).
* ``items``: "uploaded" at the first interaction (dt = that day, upload_ts = that instant),
  so no interaction precedes an upload; items never interacted with are dropped, items
  missing from ``.item`` are kept without attributes. creator_id = the ``creator_field``
  token (e.g. ``artist_id``) when given, else item_id. category = 1 + rank of the first token
  of ``category_field`` (default: the first of class/genre/genres/categories/category
  present) among all first tokens, 0 for none. duration_ms = 0.
  content_emb: per attribute field, token -> hashed one-hot (plus the scaled value when all
  tokens are numbers, e.g. a year), token_seq -> hashed multi-hot of its tokens (unit norm),
  float / float_seq -> standardised value (mean of the sequence) -> the common fixed seeded
  projection to ``emb_dim``, L2 normalised. Same attributes = same vector.
* ``visits``: a user is active on every day with an interaction; sessions = distinct hours.
* ``users``: snapshots from the first interaction day (register_dt); age_bucket from an
  ``age`` field (MovieLens-1M buckets), gender from ``gender`` (M/male -> 1, F/female -> 2),
  region from ``zip_code`` / ``zip`` (1 + first digit, 0 if not a digit) or else from
  ``region`` / ``country`` / ``location`` / ``city`` (1 + rank in the vocabulary), device from
  ``device`` or else ``occupation`` (1 + rank in the vocabulary; MovieLens has no device), 0
  when absent. follower_count = 0. On RecBole's ml-100k this gives the same tables as the
  :mod:`.movielens` adapter on GroupLens' files except for the content embedding's inputs.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from dualrec.ingest.common import (
    FLAGS,
    US_PER_DAY,
    Dataset,
    IngestError,
    first_activity,
    hash_strings,
    multi_hot,
    one_hot,
    project_embedding,
)

log = logging.getLogger(__name__)

TYPES = ("token", "token_seq", "float", "float_seq")
CATEGORY_FIELDS = ("class", "genre", "genres", "categories", "category")
REGION_FIELDS = ("zip_code", "zip", "region", "country", "location", "city")
DEVICE_FIELDS = ("device", "occupation")
TOKEN_BUCKETS = 32
SEQ_BUCKETS = 64
AGE_EDGES = np.array([18, 25, 35, 45, 50, 56])
_INT_RE = re.compile(r"^-?\d{1,18}$")


# --------------------------------------------------------------------------- files
def find_atomic(src: str | Path, dataset: str | None = None) -> tuple[Path, Path | None, Path | None]:
    """(``.inter``, ``.item`` or None, ``.user`` or None) of the dataset in ``src``.

    Looks in ``src`` and then in its sub-folders (RecBole keeps ``dataset/NAME/NAME.inter``).
    """
    root = Path(src)
    if not root.is_dir():
        raise IngestError(f"source directory {str(root)!r} does not exist")
    if dataset:
        tried = [root / f"{dataset}.inter", root / dataset / f"{dataset}.inter"]
        inter = next((p for p in tried if p.is_file()), None)
        if inter is None:
            raise IngestError(f"missing file {dataset + '.inter'!r}: looked in "
                              + ", ".join(repr(str(p.parent)) for p in tried))
    else:
        found = sorted(root.glob("*.inter")) or sorted(root.glob("*/*.inter"))
        if not found:
            raise IngestError(f"no RecBole '.inter' file in {str(root)!r} or its sub-folders")
        if len(found) > 1:
            raise IngestError(f"several '.inter' files in {str(root)!r} ({', '.join(p.name for p in found)}); "
                              "pick one with --dataset NAME")
        inter = found[0]
    side = [inter.with_suffix(s) for s in (".item", ".user")]
    return inter, *(p if p.is_file() else None for p in side)


def read_atomic(path: Path, encoding: str = "utf-8") -> tuple[pd.DataFrame, dict[str, str]]:
    """An atomic file as strings (missing = NA) with bare column names, and each field's type."""
    try:
        with open(path, encoding=encoding, newline="") as fh:
            header = fh.readline().rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise IngestError(f"file {path.name!r} is not {encoding}: {e}") from None
    if not header:
        raise IngestError(f"file {path.name!r} is empty")
    types: dict[str, str] = {}
    for raw in header.split("\t"):
        name, sep, typ = raw.strip().rpartition(":")
        if not sep or not name or typ not in TYPES:
            raise IngestError(f"file {path.name!r}: header field {raw!r} is not NAME:TYPE with TYPE one of "
                              f"{', '.join(TYPES)}")
        if name in types:
            raise IngestError(f"file {path.name!r}: field {name!r} appears twice in the header")
        types[name] = typ
    try:
        df = pd.read_csv(path, sep="\t", header=0, dtype=str, encoding=encoding, quoting=csv.QUOTE_NONE,
                         keep_default_na=False, na_values=[""], skip_blank_lines=True)
    except pd.errors.ParserError as e:
        raise IngestError(f"file {path.name!r}: rows do not match the {len(types)}-field header ({e})") from None
    except UnicodeDecodeError as e:
        raise IngestError(f"file {path.name!r} is not {encoding}: {e}") from None
    df.columns = list(types)
    return df, types


def _require(df: pd.DataFrame, fields: tuple[str, ...], path: Path) -> None:
    missing = [f for f in fields if f not in df.columns]
    if missing:
        raise IngestError(f"file {path.name!r}: missing field(s) {', '.join(missing)} "
                          f"(found: {', '.join(map(str, df.columns))})")


def _floats(series: pd.Series, path: Path, field: str) -> np.ndarray:
    """A required numeric field; empty or unparsable values are an error naming file and field."""
    num = pd.to_numeric(series, errors="coerce")
    bad = num.isna() | ~np.isfinite(num.to_numpy(np.float64, na_value=np.nan))
    if bad.any():
        raise IngestError(f"file {path.name!r}, field {field!r}: {int(bad.sum())} missing or non-numeric value(s), "
                          f"e.g. {series[bad].head(3).tolist()}")
    return num.to_numpy(np.float64)


def id_codes(*columns: pd.Series) -> tuple[list[np.ndarray], str]:
    """int64 ids for token columns that share one id space (``.inter`` + side file).

    Integer tokens are kept as they are (so ids match the original dataset); otherwise all
    tokens are numbered 1..n in sorted order. Returns the codes and how they were made.
    """
    tokens = [c.astype("string").str.strip() for c in columns]
    if all(t.str.fullmatch(_INT_RE).fillna(False).all() for t in tokens):
        return [t.astype(np.int64).to_numpy() for t in tokens], "integer tokens kept"
    vocab = pd.Index(pd.concat(tokens, ignore_index=True).dropna().unique()).sort_values()
    return [vocab.get_indexer(t).astype(np.int64) + 1 for t in tokens], "tokens numbered 1..n in sorted order"


def vocab_codes(values: pd.Series) -> np.ndarray:
    """1 + rank of each value in the sorted vocabulary; 0 for missing (why: a stable small int code)."""
    v = values.astype("string").str.strip()
    v = v.where(v != "")
    vocab = pd.Index(v.dropna().unique()).sort_values()
    return (vocab.get_indexer(v) + 1).astype(np.int64)


# --------------------------------------------------------------------------- mapping
def map_inter(df: pd.DataFrame, path: Path, users: np.ndarray, items: np.ndarray, time_field: str,
              rating_field: str, label_field: str, like_threshold: float, view_threshold: float,
              tz_offset_hours: float) -> tuple[pd.DataFrame, str]:
    """``.inter`` rows -> raw exposures with feedback flags; also which feedback was used."""
    ts = _floats(df[time_field], path, time_field)
    ts_us = np.round(ts * 1e6).astype(np.int64) + round(tz_offset_hours * 3600) * 1_000_000
    out = pd.DataFrame({"user_id": users, "item_id": items, "ts_us": ts_us, "day": ts_us // US_PER_DAY})
    for f in FLAGS:
        out[f] = np.zeros(len(out), dtype=np.int8)
    out["is_click"] = np.int8(1)
    if rating_field in df.columns:
        r = _floats(df[rating_field], path, rating_field)
        like, view, feedback = r >= like_threshold, r >= view_threshold, "rating"
    elif label_field in df.columns:
        lab = _floats(df[label_field], path, label_field)
        like = view = lab > 0
        feedback = "label"
    else:
        like = view = np.ones(len(out), dtype=bool)
        feedback = "implicit"
    out["is_like"] = like.astype(np.int8)
    out["is_long_view"] = view.astype(np.int8)
    out["play_time_ms"] = np.int64(0)
    return out, feedback


def attribute_features(df: pd.DataFrame, types: dict[str, str], skip: set[str]) -> np.ndarray:
    """Attribute matrix of a side file for the content embedding (see module docstring)."""
    blocks = [np.zeros((len(df), 0))]
    fields = [f for f in df.columns if f not in skip]
    weight = 1.0 / np.sqrt(max(len(fields), 1))
    for f in fields:
        col, typ = df[f], types[f]
        if typ == "token":
            blocks.append(one_hot(hash_strings(col.map(lambda v, f=f: f"{f}={v}" if isinstance(v, str) else v),
                                               TOKEN_BUCKETS), TOKEN_BUCKETS, weight))
            num = pd.to_numeric(col, errors="coerce")
            if col.notna().any() and num[col.notna()].notna().all():
                blocks.append(_scaled(num.to_numpy(np.float64)) * weight)
        elif typ == "token_seq":
            tok = col.fillna("").str.split().explode()
            tok = tok[tok.notna() & (tok != "")]
            rows = pd.Index(df.index).get_indexer(tok.index)
            cols = hash_strings(tok.str.lower().reset_index(drop=True), SEQ_BUCKETS)
            blocks.append(multi_hot(rows, cols, len(df), SEQ_BUCKETS) * weight)
        else:  # float, float_seq: a sequence counts by its mean
            seq = col.fillna("").str.split() if typ == "float_seq" else col.map(lambda v: [v] if isinstance(v, str) else [])
            num = seq.map(lambda xs: np.nanmean(pd.to_numeric(pd.Series(xs), errors="coerce")) if len(xs) else np.nan)
            blocks.append(_scaled(num.to_numpy(np.float64)) * weight)
    return np.hstack(blocks)


def _scaled(x: np.ndarray) -> np.ndarray:
    """Standardised value clipped to [-1, 1] (3 sd) and a missing flag, as two columns."""
    known = np.isfinite(x)
    if known.any():
        mu, sd = float(np.mean(x[known])), float(np.std(x[known])) or 1.0
        z = np.clip((np.where(known, x, mu) - mu) / (3 * sd), -1.0, 1.0)
    else:
        z = np.zeros_like(x)
    return np.column_stack([np.where(known, z, 0.0), (~known).astype(np.float64)])


def map_items(inter: pd.DataFrame, item_df: pd.DataFrame | None, item_types: dict[str, str],
              item_ids: np.ndarray | None, item_field: str, creator_field: str | None,
              category_field: str | None, path: Path | None) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """Items first interacted with (with their attributes when described) and their features."""
    first = first_activity(inter, "item_id")
    if item_df is None:
        attrs = pd.DataFrame({"item_id": first["item_id"]})
        types: dict[str, str] = {}
    else:
        attrs = item_df.drop(columns=[item_field]).assign(item_id=item_ids).drop_duplicates("item_id")
        types = item_types
    merged = first.merge(attrs, on="item_id", how="left").reset_index(drop=True)
    described = merged["item_id"].isin(attrs["item_id"]) if item_df is not None else None
    notes = {"undescribed_items": int((~described).sum()) if described is not None else None,
             "unused_items_dropped": int((~attrs["item_id"].isin(first["item_id"])).sum()) if item_df is not None else 0}

    if creator_field:
        if creator_field not in merged.columns:
            raise IngestError(f"file {path.name if path else '.item'!r}: missing creator field {creator_field!r}")
        creator = merged[creator_field]
        (codes,), _ = id_codes(creator.fillna("-1"))
        creator_id = np.where(creator.isna(), merged["item_id"].to_numpy(np.int64), codes)
    else:
        creator_id = merged["item_id"].to_numpy(np.int64)
    cat_field = category_field or next((f for f in CATEGORY_FIELDS if f in merged.columns), None)
    if category_field and category_field not in merged.columns:
        raise IngestError(f"file {path.name if path else '.item'!r}: missing category field {category_field!r}")
    category = (vocab_codes(merged[cat_field].fillna("").str.split().str[0]) if cat_field
                else np.zeros(len(merged), dtype=np.int64))

    skip = {"item_id", "first_us", "first_day"} | ({creator_field} if creator_field else set())
    feats = attribute_features(merged, types, skip)
    items = pd.DataFrame({
        "item_id": merged["item_id"].to_numpy(np.int64),
        "creator_id": creator_id.astype(np.int64),
        "day": merged["first_day"].to_numpy(np.int64),
        "upload_us": merged["first_us"].to_numpy(np.int64),
        "category": category.astype(np.int32),
        "duration_ms": np.zeros(len(merged), dtype=np.int64),
    })
    return items, feats, notes


def _first_field(df: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in df.columns), None)


def map_users(inter: pd.DataFrame, user_df: pd.DataFrame | None, user_ids: np.ndarray | None,
              user_field: str) -> pd.DataFrame:
    """Profiles of the users who interacted; register_day = day of their first interaction."""
    first = first_activity(inter, "user_id")[["user_id", "first_day"]].rename(columns={"first_day": "register_day"})
    if user_df is None:
        u = first.copy()
    else:
        side = user_df.drop(columns=[user_field]).assign(user_id=user_ids).drop_duplicates("user_id")
        u = first.merge(side, on="user_id", how="left").reset_index(drop=True)
    n = len(u)
    zero = np.zeros(n, dtype=np.int64)
    if "age" in u.columns:
        age = pd.to_numeric(u["age"], errors="coerce").to_numpy(np.float64)
        age_bucket = np.where(np.isnan(age), 0, np.searchsorted(AGE_EDGES, np.nan_to_num(age), side="right") + 1)
    else:
        age_bucket = zero
    if "gender" in u.columns:
        g = u["gender"].astype("string").str.strip().str.upper().str[:1]
        gender = g.map({"M": 1, "F": 2}).astype("Float64").fillna(0).to_numpy(np.int64)
    else:
        gender = zero
    rf = _first_field(u, REGION_FIELDS)
    if rf is None:
        region = zero
    elif "zip" in rf:
        z0 = u[rf].astype("string").str.strip().str[:1]
        region = np.where(z0.str.isdigit().fillna(False), pd.to_numeric(z0, errors="coerce").fillna(-1) + 1, 0)
    else:
        region = vocab_codes(u[rf])
    df_ = _first_field(u, DEVICE_FIELDS)
    device = vocab_codes(u[df_].str.lower()) if df_ else zero
    return pd.DataFrame({
        "user_id": u["user_id"].to_numpy(np.int64),
        "register_day": u["register_day"].to_numpy(np.int64),
        "age_bucket": np.asarray(age_bucket).astype(np.int32),
        "gender": np.asarray(gender).astype(np.int32),
        "region": np.asarray(region).astype(np.int32),
        "device": np.asarray(device).astype(np.int32),
        "follower_count": np.zeros(n, dtype=np.int64),
    })


def load(src: str | Path, emb_dim: int = 32, seed: int = 0, tz_offset_hours: float = 0.0,
         dataset: str | None = None, user_field: str = "user_id", item_field: str = "item_id",
         time_field: str = "timestamp", rating_field: str = "rating", label_field: str = "label",
         like_threshold: float = 4.0, view_threshold: float = 3.0, creator_field: str | None = None,
         category_field: str | None = None, encoding: str = "utf-8") -> Dataset:
    """Read a RecBole dataset's atomic files and map them to a :class:`Dataset` (no writing)."""
    p_inter, p_item, p_user = find_atomic(src, dataset)
    inter_df, _ = read_atomic(p_inter, encoding)
    _require(inter_df, (user_field, item_field, time_field), p_inter)
    if inter_df.empty:
        raise IngestError(f"file {p_inter.name!r} has a header but no rows")

    item_df = item_types = user_df = None
    if p_item is not None:
        item_df, item_types = read_atomic(p_item, encoding)
        _require(item_df, (item_field,), p_item)
    if p_user is not None:
        user_df, _ = read_atomic(p_user, encoding)
        _require(user_df, (user_field,), p_user)
    for df, path, field in ((inter_df, p_inter, user_field), (inter_df, p_inter, item_field),
                            (item_df, p_item, item_field), (user_df, p_user, user_field)):
        if df is not None and df[field].isna().any():
            bad = df.index[df[field].isna()][:3].tolist()
            raise IngestError(f"file {path.name!r}, field {field!r}: {int(df[field].isna().sum())} empty id(s), "
                              f"e.g. data rows {[i + 1 for i in bad]}")

    u_cols, u_how = id_codes(inter_df[user_field], *([user_df[user_field]] if user_df is not None else []))
    i_cols, i_how = id_codes(inter_df[item_field], *([item_df[item_field]] if item_df is not None else []))
    inter, feedback = map_inter(inter_df, p_inter, u_cols[0], i_cols[0], time_field, rating_field, label_field,
                                like_threshold, view_threshold, tz_offset_hours)
    items, feats, item_notes = map_items(inter, item_df, item_types or {}, i_cols[1] if item_df is not None else None,
                                         item_field, creator_field, category_field, p_item)
    profiles = map_users(inter, user_df, u_cols[1] if user_df is not None else None, user_field)
    log.info("recbole %s: %d interactions (%s feedback), %d items, %d users", p_inter.stem, len(inter), feedback,
             len(items), len(profiles))
    return Dataset(
        kind="recbole",
        interactions=inter,
        items=items,
        item_emb=project_embedding(feats, emb_dim, seed),
        profiles=profiles,
        options={"emb_dim": emb_dim, "seed": seed, "tz_offset_hours": tz_offset_hours, "dataset": p_inter.stem,
                 "user_field": user_field, "item_field": item_field, "time_field": time_field,
                 "rating_field": rating_field, "label_field": label_field, "like_threshold": like_threshold,
                 "view_threshold": view_threshold, "creator_field": creator_field, "category_field": category_field},
        notes={"dataset": p_inter.stem, "feedback": feedback, "user_ids": u_how, "item_ids": i_how,
               "files": [p.name for p in (p_inter, p_item, p_user) if p is not None], **item_notes},
    )
