"""KuaiRand-Pure -> lake (``dualrec ingest kuairand --src DIR --lake DIR``).

Source files (``KuaiRand-Pure/data/``; ``DIR`` may be ``KuaiRand-Pure``, its ``data`` folder
or their parent), columns as in the published README (https://kuairand.com, checked against
the chongminggao/KuaiRand README):

* ``log_standard_4_08_to_4_21_pure.csv``, ``log_standard_4_22_to_5_08_pure.csv`` and
  ``log_random_4_22_to_5_08_pure.csv`` (skip the last with ``include_random=False``):
  user_id, video_id, date (YYYYMMDD, Beijing time), hourmin (documented as "HHSS"; in
  practice hour*100 + minute, e.g. 400 = 04:00), time_ms (unix ms), is_click, is_like,
  is_follow, is_comment, is_forward, is_hate, long_view, play_time_ms, duration_ms,
  profile_stay_time, comment_stay_time, is_profile_enter, is_rand, tab.
* ``user_features_pure.csv``: user_id, user_active_degree, is_lowactive_period,
  is_live_streamer, is_video_author, follow_user_num(_range), fans_user_num(_range),
  friend_user_num(_range), register_days, register_days_range, onehot_feat0..onehot_feat17.
* ``video_features_basic_pure.csv``: video_id, author_id, video_type, upload_dt
  (YYYY-MM-DD), upload_type, visible_status, video_duration (ms, may be empty),
  server_width, server_height, music_id, music_type, tag (comma-separated ints, may be empty).

Doubts noted: the README example (date 20220421, hourmin 400, time_ms 1650485801301 =
2022-04-20 20:16 UTC) shows ``date``/``hourmin`` are Beijing time (UTC+8), hence the default
``tz_offset_hours=8``; the README does not say which day ``register_days`` counts from (we
take the last log day, ``register_ref``); ``user_active_degree`` is documented as
{high_active, full_active, middle_active, UNKNOWN} but ``low_active`` also occurs.

Mapping:

* ``interactions``: every log row is an exposure. ts = time_ms shifted by
  ``tz_offset_hours`` (stored as wall-clock time labelled UTC, so a "day" is the users'
  local day); dt = ``date``. When the shifted time_ms is not on ``date`` (or is missing) ts is
  rebuilt from date + hourmin (+ the sub-minute part of time_ms). is_click = is_click;
  is_like = is_like; is_comment = is_comment; is_follow = is_follow; is_share = is_forward;
  is_profile_enter = is_profile_enter; is_long_view = long_view; play_time_ms =
  play_time_ms. is_hate, stay times, is_rand and tab are not used. Several exposures of a
  video to a user on one day (within a log or across the standard and random logs) fold
  into one row: first ts, flags OR-ed, play time summed.
* ``items``: creator_id = author_id (-1 when the video has no features row); category =
  1 + first tag (0 = no tag); duration_ms = video_duration, else the median log duration_ms,
  else 0. Upload day with ``upload_time="upload_dt"`` (default) = upload_dt, clamped to the
  first log day for older videos (their catalogue "arrives" on day one) and never later than
  the video's first exposure; with ``upload_time="first_exposure"`` = day of the first
  exposure. upload_ts = a per-video hash-spread instant in that day, before the first
  exposure. Videos never exposed are kept only when upload_dt falls inside the log days.
  content_emb: [tags multi-hot (tag mod 96, unit norm), video_type, upload_type,
  music_type, visible_status (crc32-hashed one-hots), log duration, portrait/landscape]
  -> fixed seeded Gaussian projection to ``emb_dim`` (default 32) -> L2 normalised.
* ``visits``: active on a day with any exposure; sessions = distinct hours with an
  exposure; watch_ms = sum of play_time_ms.
* ``users``: snapshot per day of users registered by then; register_dt = register_ref -
  register_days, never after the first exposure (users without features: first exposure);
  age_bucket = gender = 0 (not in KuaiRand); region = user_active_degree (1 low, 2 middle,
  3 high, 4 full, 0 unknown: the slot carries the platform's activity tier); device = 1 +
  is_video_author + 2 * is_live_streamer; follower_count = fans_user_num (0 if missing).
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.csv as pacsv

from dualrec.ingest.common import (
    US_PER_DAY,
    Dataset,
    IngestError,
    date_to_day,
    find_file,
    first_activity,
    hash_strings,
    multi_hot,
    one_hot,
    project_embedding,
    require_columns,
    to_int,
    upload_times,
)

log = logging.getLogger(__name__)

SUBDIRS = ("data", "KuaiRand-Pure/data", "KuaiRand-Pure")
STANDARD_LOGS = ("log_standard_4_08_to_4_21_pure.csv", "log_standard_4_22_to_5_08_pure.csv")
RANDOM_LOG = "log_random_4_22_to_5_08_pure.csv"
USER_FILE = "user_features_pure.csv"
VIDEO_FILE = "video_features_basic_pure.csv"

LOG_COLUMNS = ("user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like", "is_follow", "is_comment",
               "is_forward", "long_view", "play_time_ms", "duration_ms", "is_profile_enter")
FLAG_SOURCE = {"is_click": "is_click", "is_like": "is_like", "is_comment": "is_comment", "is_follow": "is_follow",
               "is_share": "is_forward", "is_profile_enter": "is_profile_enter", "is_long_view": "long_view"}
USER_COLUMNS = ("user_id", "user_active_degree", "is_live_streamer", "is_video_author", "fans_user_num", "register_days")
VIDEO_COLUMNS = ("video_id", "author_id", "upload_dt", "video_duration", "tag")
ACTIVE_DEGREE = {"low_active": 1, "middle_active": 2, "high_active": 3, "full_active": 4}
TAG_BUCKETS = 96


def _header(path: Path) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        line = f.readline().strip()
    if not line:
        raise IngestError(f"file {path.name!r} is empty")
    return [c.strip().strip('"') for c in line.split(",")]


def read_log(path: Path) -> pd.DataFrame:
    """One log CSV with only the columns the mapping uses (multi-threaded Arrow reader)."""
    missing = [c for c in LOG_COLUMNS if c not in _header(path)]
    if missing:
        raise IngestError(f"file {path.name!r}: missing column(s) {', '.join(missing)}")
    try:
        tbl = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(include_columns=list(LOG_COLUMNS)))
    except Exception as e:  # noqa: BLE001 - re-raised naming the file
        raise IngestError(f"file {path.name!r}: cannot parse: {e}") from e
    return tbl.to_pandas()


def _num(s: pd.Series) -> np.ndarray:
    return pd.to_numeric(s, errors="coerce").to_numpy(np.float64)


def map_log(log_df: pd.DataFrame, tz_offset_hours: float = 8.0) -> tuple[pd.DataFrame, int]:
    """Log rows -> raw exposures (user_id, item_id, day, ts_us, flags, play_time_ms); also rows dropped."""
    user = _num(log_df["user_id"])
    item = _num(log_df["video_id"])
    date = _num(log_df["date"])
    tms = _num(log_df["time_ms"])

    # date (YYYYMMDD int) -> day number, via the few distinct dates
    date_day = np.full(len(log_df), np.nan)
    has_date = ~np.isnan(date)
    if has_date.any():
        uniq, inv = np.unique(date[has_date].astype(np.int64), return_inverse=True)
        conv = pd.to_datetime(pd.Series(uniq.astype(str)), format="%Y%m%d", errors="coerce")
        days = ((conv - pd.Timestamp("1970-01-01")).dt.days).to_numpy(np.float64)
        date_day[has_date] = days[inv]
    has_date = ~np.isnan(date_day)

    off_us = int(round(tz_offset_hours * 3600)) * 1_000_000
    has_t = ~np.isnan(tms)
    ts = np.where(has_t, np.nan_to_num(tms).astype(np.int64) * 1000 + off_us, 0)
    t_day = ts // US_PER_DAY
    dday = np.nan_to_num(date_day).astype(np.int64)
    trusted = has_t & (~has_date | (t_day == dday))
    hm = np.nan_to_num(_num(log_df["hourmin"])).astype(np.int64)
    within = (np.clip(hm // 100, 0, 23) * 3600 + np.clip(hm % 100, 0, 59) * 60) * 1_000_000
    sub_minute = np.where(has_t, (np.nan_to_num(tms).astype(np.int64) % 60_000) * 1000, 0)
    rebuilt = dday * US_PER_DAY + np.minimum(within + sub_minute, US_PER_DAY - 1)
    ts = np.where(trusted, ts, rebuilt)
    day = np.where(has_date, dday, t_day)

    keep = ~np.isnan(user) & ~np.isnan(item) & (has_date | has_t)
    out = pd.DataFrame({
        "user_id": user[keep].astype(np.int64),
        "item_id": item[keep].astype(np.int64),
        "day": day[keep],
        "ts_us": ts[keep],
    })
    for f, src in FLAG_SOURCE.items():
        out[f] = (np.nan_to_num(_num(log_df[src]))[keep] > 0).astype(np.int8)
    out["play_time_ms"] = np.nan_to_num(_num(log_df["play_time_ms"]))[keep].clip(min=0).astype(np.int64)
    out["duration_ms"] = _num(log_df["duration_ms"])[keep]
    return out, int((~keep).sum())


def map_users(uf: pd.DataFrame, first_u: pd.DataFrame, ref_day: int, first_log_day: int) -> pd.DataFrame:
    """User features + first exposures -> profiles with register_day (see module docstring)."""
    uf = uf[pd.to_numeric(uf["user_id"], errors="coerce").notna()].drop_duplicates("user_id")
    prof = pd.DataFrame({
        "user_id": _num(uf["user_id"]).astype(np.int64),
        "reg": ref_day - _num(uf["register_days"]),
        "region": uf["user_active_degree"].astype(str).str.strip().map(ACTIVE_DEGREE).fillna(0).to_numpy(),
        "device": 1 + (np.nan_to_num(_num(uf["is_video_author"])) > 0) + 2 * (np.nan_to_num(_num(uf["is_live_streamer"])) > 0),
        "follower_count": np.nan_to_num(_num(uf["fans_user_num"])).clip(min=0),
    })
    prof = prof.merge(first_u[["user_id", "first_day"]], on="user_id", how="outer")
    reg = prof["reg"].to_numpy()
    first = prof["first_day"].to_numpy()
    reg = np.where(np.isnan(reg), first, np.where(np.isnan(first), reg, np.minimum(reg, first)))
    reg = np.where(np.isnan(reg), first_log_day, reg)
    return pd.DataFrame({
        "user_id": prof["user_id"].to_numpy(np.int64),
        "register_day": reg.astype(np.int64),
        "age_bucket": np.zeros(len(prof), dtype=np.int32),
        "gender": np.zeros(len(prof), dtype=np.int32),
        "region": prof["region"].fillna(0).to_numpy().astype(np.int32),
        "device": prof["device"].fillna(0).to_numpy().astype(np.int32),
        "follower_count": prof["follower_count"].fillna(0).to_numpy().astype(np.int64),
    }).sort_values("user_id", kind="stable").reset_index(drop=True)


def video_features(v: pd.DataFrame, log_duration: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Video rows -> (category, duration_ms, attribute matrix for the content embedding)."""
    n = len(v)
    tags = v["tag"].astype("string").str.replace(r"\s+", "", regex=True).str.split(",").explode()
    tag_int = pd.to_numeric(tags, errors="coerce")
    ok = tag_int.notna().to_numpy()
    rows = np.asarray(tags.index)[ok]
    tag_vals = tag_int.to_numpy()[ok].astype(np.int64)
    first_tag = pd.Series(tag_vals, index=rows).groupby(level=0).first()
    category = np.zeros(n, dtype=np.int32)
    category[first_tag.index.to_numpy()] = (first_tag.to_numpy() + 1).astype(np.int32)
    tag_block = multi_hot(rows, tag_vals % TAG_BUCKETS, n, TAG_BUCKETS)

    def cat(col: str, width: int, weight: float) -> np.ndarray:
        if col not in v.columns:
            return np.zeros((n, width))
        return one_hot(hash_strings(v[col].astype("string"), width), width, weight)

    dur = _num(v["video_duration"])
    dur = np.where(np.isnan(dur), log_duration, dur)
    dur = np.nan_to_num(dur).clip(min=0)
    w = _num(v["server_width"]) if "server_width" in v.columns else np.full(n, np.nan)
    h = _num(v["server_height"]) if "server_height" in v.columns else np.full(n, np.nan)
    shape = np.column_stack([(h > w) * 0.3, (w > h) * 0.3]).astype(np.float64)
    feats = np.hstack([
        tag_block,
        cat("video_type", 4, 0.3),
        cat("upload_type", 16, 0.3),
        cat("music_type", 16, 0.3),
        cat("visible_status", 4, 0.2),
        (np.where(dur > 0, (np.log1p(dur / 1000.0) - 3.0) / 2.0, 0.0) * 0.5)[:, None],
        shape,
    ])
    return category, dur.astype(np.int64), feats


def load(src: str | Path, emb_dim: int = 32, seed: int = 0, tz_offset_hours: float = 8.0,
         include_random: bool = True, upload_time: str = "upload_dt", register_ref: str | None = None) -> Dataset:
    """Read KuaiRand-Pure's CSVs and map them to a :class:`Dataset` (no writing)."""
    if upload_time not in ("upload_dt", "first_exposure"):
        raise IngestError(f"upload_time must be 'upload_dt' or 'first_exposure', not {upload_time!r}")
    names = list(STANDARD_LOGS) + ([RANDOM_LOG] if include_random else [])
    paths = [find_file(src, n, SUBDIRS) for n in names]
    p_user = find_file(src, USER_FILE, SUBDIRS)
    p_video = find_file(src, VIDEO_FILE, SUBDIRS)

    mapped = [map_log(read_log(p), tz_offset_hours) for p in paths]
    inter = pd.concat([m[0] for m in mapped], ignore_index=True)
    dropped = sum(m[1] for m in mapped)
    if inter.empty:
        raise IngestError(f"no usable log rows in {', '.join(names)}")
    first_log_day, last_log_day = int(inter["day"].min()), int(inter["day"].max())

    # ---- items
    vf = pd.read_csv(p_video, dtype={"tag": "string", "upload_dt": "string"}, low_memory=False)
    vf.columns = [c.strip() for c in vf.columns]
    require_columns(vf, VIDEO_COLUMNS, p_video)
    vf["video_id"] = to_int(vf["video_id"], p_video, "video_id")
    vf = vf.drop_duplicates("video_id")
    first_i = first_activity(inter, "item_id")
    med_dur = inter.groupby("item_id")["duration_ms"].median().rename("log_duration").reset_index()
    v = first_i.merge(med_dur, on="item_id", how="left").merge(vf, left_on="item_id", right_on="video_id", how="outer")
    v["item_id"] = v["item_id"].fillna(v["video_id"]).astype(np.int64)
    up = pd.to_datetime(v["upload_dt"], format="%Y-%m-%d", errors="coerce")
    up_day = ((up - pd.Timestamp("1970-01-01")).dt.days).to_numpy(np.float64)
    first_day = v["first_day"].to_numpy(np.float64)
    if upload_time == "upload_dt":
        # older videos arrive on day one; a never-exposed video counts only if uploaded inside the window
        clamped = np.where(np.isnan(first_day), up_day, np.maximum(up_day, first_log_day))
        day = np.where(np.isnan(up_day), first_day, clamped)
        day = np.where(np.isnan(first_day), day, np.fmin(day, first_day))
    else:
        day = first_day
    keep = ~np.isnan(day) & (day <= last_log_day) & (day >= first_log_day)
    v = v[keep].reset_index(drop=True)
    day = day[keep].astype(np.int64)
    first_us = v["first_us"].fillna(np.iinfo(np.int64).max // 2).to_numpy(np.float64).astype(np.int64)
    category, duration, feats = video_features(v, v["log_duration"].to_numpy(np.float64))
    items = pd.DataFrame({
        "item_id": v["item_id"].to_numpy(np.int64),
        "creator_id": v["author_id"].fillna(-1).to_numpy(np.float64).astype(np.int64),
        "day": day,
        "upload_us": upload_times(first_us, day, v["item_id"].to_numpy(np.int64), seed),
        "category": category,
        "duration_ms": duration,
    })

    # ---- users
    uf = pd.read_csv(p_user, low_memory=False)
    uf.columns = [c.strip() for c in uf.columns]
    require_columns(uf, USER_COLUMNS, p_user)
    ref_day = date_to_day(dt.date.fromisoformat(register_ref)) if register_ref else last_log_day
    profiles = map_users(uf, first_activity(inter, "user_id"), ref_day, first_log_day)

    return Dataset(
        kind="kuairand",
        interactions=inter.drop(columns=["duration_ms"]),
        items=items,
        item_emb=project_embedding(feats, emb_dim, seed),
        profiles=profiles,
        options={"emb_dim": emb_dim, "seed": seed, "tz_offset_hours": tz_offset_hours,
                 "include_random": include_random, "upload_time": upload_time, "register_ref": register_ref},
        notes={"dropped_log_rows": dropped,
               "videos_without_features": int(v["video_id"].isna().sum()),
               "items_clamped_to_first_day": int(((up_day[keep] < first_log_day) & (day == first_log_day)).sum())},
    )
