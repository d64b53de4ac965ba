"""MovieLens-100K -> lake (``dualrec ingest movielens --src DIR --lake DIR``).

Source files (GroupLens ``ml-100k.zip``; ``DIR`` may be the unpacked folder or its parent):

* ``u.data``  tab separated, no header: user id, item id, rating (1-5), unix timestamp (s, UTC).
* ``u.item``  ``|`` separated, latin-1: movie id | title | release date (``01-Jan-1995``) |
  video release date | IMDb URL | 19 genre flags (unknown, Action, Adventure, Animation,
  Children's, Comedy, Crime, Documentary, Drama, Fantasy, Film-Noir, Horror, Musical, Mystery,
  Romance, Sci-Fi, Thriller, War, Western).
* ``u.user``  ``|`` separated: user id | age | gender (M/F) | occupation | zip code.

Mapping (every rating is one exposure):

* ``interactions``: ts = rating time (+ ``tz_offset_hours``, default 0 = UTC), dt = its day.
  is_click = 1 (rating a movie means the user engaged with it); is_like = rating >= 4;
  is_long_view = rating >= 3; is_comment = is_follow = is_share = is_profile_enter = 0
  (MovieLens has no such feedback); play_time_ms = 0. (user, item) is unique per day
  (MovieLens rates a movie once; duplicates would be folded: first time, flags OR-ed).
* ``items``: a movie is "uploaded" at its first rating: dt = that day, upload_ts = that
  instant (so no rating precedes the upload). creator_id = item_id (no creators in
  MovieLens: each movie is its own creator); category = 1 + index of the first set genre
  flag (0 = none); duration_ms = 0 (unknown). Movies never rated are dropped.
  content_emb (``emb_dim``, default 32): [19 genre flags, release-decade one-hot + scaled
  year, title tokens (year removed, lower-cased, crc32-hashed into 64 buckets, unit norm)]
  -> fixed seeded Gaussian projection -> L2 normalised. Same attributes = same vector.
* ``visits``: a user is active on every day with a rating; sessions = distinct hours with a
  rating; watch_ms = 0.
* ``users``: snapshot per day of users whose first rating is on or before it;
  register_dt = day of the first rating; age_bucket = MovieLens-1M buckets (1: <18,
  2: 18-24, 3: 25-34, 4: 35-44, 5: 45-49, 6: 50-55, 7: 56+; 0 unknown); gender 1 = M,
  2 = F, 0 unknown; region = 1 + first digit of the zip code (0 for non-numeric/Canadian);
  device = 1 + occupation index in the 21 published occupations (MovieLens has no device:
  the slot carries occupation so the models still see it; 0 unknown); follower_count = 0.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from dualrec.ingest.common import (
    FLAGS,
    US_PER_DAY,
    Dataset,
    IngestError,
    find_file,
    first_activity,
    hash_strings,
    multi_hot,
    one_hot,
    project_embedding,
    to_int,
)

log = logging.getLogger(__name__)

SUBDIRS = ("ml-100k",)
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
OCCUPATIONS = ("administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
               "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
               "retired", "salesman", "scientist", "student", "technician", "writer")
ITEM_COLUMNS = ("movie_id", "title", "release_date", "video_release_date", "imdb_url", *(f"g{i}" for i in range(19)))
TITLE_BUCKETS = 64
STOP_WORDS = {"the", "a", "an", "of", "and", "la", "le", "les", "de", "in"}


def _read(path: Path, sep: str, names: tuple[str, ...], encoding: str = "latin-1") -> pd.DataFrame:
    try:
        df = pd.read_csv(path, sep=sep, header=None, dtype=str, encoding=encoding, quoting=csv.QUOTE_NONE,
                         keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise IngestError(f"file {path.name!r} is empty") from None
    if df.shape[1] != len(names):
        raise IngestError(f"file {path.name!r}: expected {len(names)} {sep!r}-separated fields per line, found {df.shape[1]}")
    df.columns = list(names)
    return df


def map_ratings(ratings: pd.DataFrame, tz_offset_hours: float = 0.0) -> pd.DataFrame:
    """u.data rows (user_id, item_id, rating, unix_ts) -> raw exposures with feedback flags."""
    r = ratings["rating"].to_numpy()
    ts_us = ratings["unix_ts"].to_numpy(np.int64) * 1_000_000 + int(round(tz_offset_hours * 3600)) * 1_000_000
    out = pd.DataFrame({
        "user_id": ratings["user_id"].to_numpy(np.int64),
        "item_id": ratings["item_id"].to_numpy(np.int64),
        "ts_us": ts_us,
        "day": ts_us // US_PER_DAY,
    })
    zero = np.zeros(len(out), dtype=np.int8)
    for f in FLAGS:
        out[f] = zero
    out["is_click"] = np.int8(1)
    out["is_like"] = (r >= 4).astype(np.int8)
    out["is_long_view"] = (r >= 3).astype(np.int8)
    out["play_time_ms"] = np.int64(0)
    return out


def map_users(users: pd.DataFrame) -> pd.DataFrame:
    """u.user rows -> profile ints (see module docstring); register_day is filled in later."""
    age = pd.to_numeric(users["age"], errors="coerce").to_numpy()
    edges = np.array([18, 25, 35, 45, 50, 56])
    bucket = np.where(np.isnan(age), 0, np.searchsorted(edges, np.nan_to_num(age), side="right") + 1)
    gender = users["gender"].fillna("").str.upper().map({"M": 1, "F": 2}).fillna(0).to_numpy()
    zip0 = users["zip"].fillna("").str.strip().str[:1]
    region = np.where(zip0.str.isdigit(), pd.to_numeric(zip0, errors="coerce").fillna(-1) + 1, 0)
    occ = {o: i + 1 for i, o in enumerate(OCCUPATIONS)}
    device = users["occupation"].fillna("").str.strip().str.lower().map(occ).fillna(0).to_numpy()
    return pd.DataFrame({
        "user_id": users["user_id"].to_numpy(np.int64),
        "age_bucket": bucket.astype(np.int32),
        "gender": gender.astype(np.int32),
        "region": region.astype(np.int32),
        "device": device.astype(np.int32),
        "follower_count": np.zeros(len(users), dtype=np.int64),
    })


def item_features(items: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """u.item rows -> (category, attribute matrix) used for the content embedding."""
    genres = np.column_stack([pd.to_numeric(items[f"g{i}"], errors="coerce").fillna(0).to_numpy() for i in range(19)])
    genres = (genres > 0).astype(np.float64)
    has = genres.any(axis=1)
    category = np.where(has, genres.argmax(axis=1) + 1, 0).astype(np.int32)

    title = items["title"].fillna("").astype(str)
    year = pd.to_datetime(items["release_date"], format="%d-%b-%Y", errors="coerce").dt.year
    year = year.fillna(pd.to_numeric(title.str.extract(r"\((\d{4})\)\s*$")[0], errors="coerce")).to_numpy()
    known = ~np.isnan(year)
    decade = np.where(known, np.clip((np.nan_to_num(year) - 1920) // 10, -1, 8) + 1, -1).astype(np.int64)
    year_block = np.hstack([
        one_hot(decade, 10, weight=0.7),
        np.where(known, (np.nan_to_num(year) - 1980) / 40.0, 0.0)[:, None],
        (~known).astype(np.float64)[:, None],
    ])

    tokens = title.str.replace(r"\(\d{4}\)\s*$", "", regex=True).str.lower().str.findall(r"[a-z0-9]+")
    exploded = tokens.explode()
    exploded = exploded[exploded.notna() & ~exploded.isin(STOP_WORDS)]
    rows = exploded.index.to_numpy()
    pos = pd.Index(items.index).get_indexer(rows)
    cols = hash_strings(exploded.reset_index(drop=True), TITLE_BUCKETS)
    title_block = multi_hot(pos, cols, len(items), TITLE_BUCKETS) * 0.6

    genre_block = genres / np.maximum(np.sqrt(genres.sum(axis=1, keepdims=True)), 1.0)
    return category, np.hstack([genre_block, year_block, title_block])


def load(src: str | Path, emb_dim: int = 32, seed: int = 0, tz_offset_hours: float = 0.0) -> Dataset:
    """Read the three MovieLens files and map them to a :class:`Dataset` (no writing)."""
    p_data = find_file(src, "u.data", SUBDIRS)
    p_item = find_file(src, "u.item", SUBDIRS)
    p_user = find_file(src, "u.user", SUBDIRS)

    raw = _read(p_data, "\t", ("user_id", "item_id", "rating", "unix_ts"))
    ratings = pd.DataFrame({c: to_int(raw[c], p_data, c) for c in raw.columns})
    bad = (ratings["rating"] < 1) | (ratings["rating"] > 5)
    if bad.any():
        raise IngestError(f"file 'u.data', column 'rating': {int(bad.sum())} value(s) outside 1-5, e.g. "
                          f"{ratings.loc[bad].head(3).to_dict('records')}")
    inter = map_ratings(ratings, tz_offset_hours)

    items_raw = _read(p_item, "|", ITEM_COLUMNS)
    items_raw["movie_id"] = to_int(items_raw["movie_id"], p_item, "movie_id")
    items_raw = items_raw.drop_duplicates("movie_id").reset_index(drop=True)
    n_described = len(items_raw)
    first_i = first_activity(inter, "item_id")
    unknown = np.setdiff1d(first_i["item_id"].to_numpy(), items_raw["movie_id"].to_numpy())
    if unknown.size:  # rated but not described: keep, with no attributes
        log.warning("u.data rates %d movie(s) missing from u.item, e.g. %s", unknown.size, unknown[:5].tolist())
        filler = pd.DataFrame({"movie_id": unknown})
        items_raw = pd.concat([items_raw, filler], ignore_index=True)
    items_raw = items_raw.merge(first_i, left_on="movie_id", right_on="item_id", how="inner").reset_index(drop=True)
    category, feats = item_features(items_raw)
    items = pd.DataFrame({
        "item_id": items_raw["movie_id"].to_numpy(np.int64),
        "creator_id": items_raw["movie_id"].to_numpy(np.int64),
        "day": items_raw["first_day"].to_numpy(np.int64),
        "upload_us": items_raw["first_us"].to_numpy(np.int64),
        "category": category,
        "duration_ms": np.zeros(len(items_raw), dtype=np.int64),
    })

    users_raw = _read(p_user, "|", ("user_id", "age", "gender", "occupation", "zip"))
    users_raw["user_id"] = to_int(users_raw["user_id"], p_user, "user_id")
    profiles = map_users(users_raw.drop_duplicates("user_id"))
    first_u = first_activity(inter, "user_id")
    profiles = first_u[["user_id", "first_day"]].merge(profiles, on="user_id", how="left")
    profiles = profiles.rename(columns={"first_day": "register_day"}).fillna(0)
    for c in ("age_bucket", "gender", "region", "device"):
        profiles[c] = profiles[c].astype(np.int32)
    profiles["follower_count"] = profiles["follower_count"].astype(np.int64)

    return Dataset(
        kind="movielens",
        interactions=inter,
        items=items,
        item_emb=project_embedding(feats, emb_dim, seed),
        profiles=profiles,
        options={"emb_dim": emb_dim, "seed": seed, "tz_offset_hours": tz_offset_hours},
        notes={"unrated_items_dropped": n_described + int(unknown.size) - len(items),
               "undescribed_items": int(unknown.size)},
    )
