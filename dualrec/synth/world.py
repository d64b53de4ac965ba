"""Generator of the synthetic world: users, creators, uploads, an organic feed and its feedback.

Everything is vectorised NumPy and every random draw comes from a generator seeded by
``SeedSequence([seed, day_index, stream, chunk])``, so a world is a pure function of
(preset, start, days, seed, emb_dim); a world of N days is a prefix of the world of N+1 days.

The generative story (hidden truth in ``<lake>/_truth/``, see :mod:`dualrec.synth.truth`):

* topics: ``K`` random unit centroids in a ``d``-dim latent space; category = topic index.
* users: interest = unit-norm mixture of 1-3 topic centroids + noise; profile features are
  weakly tied to the main topic; activity propensity (heavy/light mixture) with per-user
  weekly seasonality and a streak term (active yesterday raises today's logit); a few new
  users register each day (active on their register day) and users churn with a daily hazard.
* creators: a subset of the initial users with a quality, a topic mix and an upload rate;
  items get a topic from the creator's mix, a latent vector near the topic centroid and a
  content embedding that is a *noisy* fixed random projection of that latent vector.
* organic feed: every active user sees ~20 items from the last ``pool_days`` days (today's
  only after their upload time), sampled by popularity (impressions so far) and recency, and
  personalised by affinity, so brand-new items get few impressions.
* feedback: independent Bernoulli per type with logit driven by affinity (user . item
  latent), creator quality, a per-user bias, an "enthusiast" flag (~5 % of users like almost
  everything) and, for long views, the duration.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import posixpath
import time
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dualrec.lake import Lake, parse_date
from dualrec.synth.model import (
    DIURNAL,
    FEEDBACK_PARAMS,
    FEEDBACK_TYPES,
    LONG_VIEW_FRACTION,
    WEEKLY_ACTIVITY,
    WEEKLY_UPLOADS,
    activity_logit,
    feedback_probs,
    sigmoid,
)
from dualrec.synth.presets import Preset, get_preset

log = logging.getLogger(__name__)

US_PER_DAY = 86_400 * 1_000_000
NEVER = np.iinfo(np.int32).max
FIRST_ITEM_ID = 1_000_000_000  # item ids live in another range than user ids: join bugs show up
TRUTH_DIR = "_truth"

# random streams (the third SeedSequence word)
ST_INIT, ST_REGISTER, ST_CHURN, ST_ACTIVITY, ST_UPLOAD, ST_FEED, ST_FEEDBACK, ST_VISITS = range(8)


def _rng(seed: int, day_index: int, stream: int, *extra: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, day_index, stream, *extra])))


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _diurnal_us(rng: np.random.Generator, n: int) -> np.ndarray:
    """Microseconds after midnight UTC, following the diurnal hour profile."""
    cdf = np.cumsum(DIURNAL) / DIURNAL.sum()
    hour = np.searchsorted(cdf, rng.random(n), side="right").clip(0, 23)
    return hour.astype(np.int64) * 3_600_000_000 + rng.integers(0, 3_600_000_000, n, dtype=np.int64)


def _day_start_us(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp()) * 1_000_000


@dataclass
class _Users:
    """Column arrays of every registered user (grows as users register)."""

    uid: np.ndarray
    reg_day: np.ndarray  # day index relative to start (negative: before the world starts)
    age: np.ndarray
    gender: np.ndarray
    region: np.ndarray
    device: np.ndarray
    interest: np.ndarray  # (n, d) float32 unit norm
    base: np.ndarray  # activity logit intercept
    amp: np.ndarray  # weekly seasonality amplitude
    bias: np.ndarray  # feedback bias
    enth: np.ndarray  # enthusiast flag (likes almost everything)
    intensity: np.ndarray  # feed-consumption intensity (mean 1)
    hazard: np.ndarray  # daily churn hazard
    churn_day: np.ndarray  # day index of churn, NEVER if still alive
    followers: np.ndarray
    active_prev: np.ndarray  # active yesterday

    def __len__(self) -> int:
        return len(self.uid)

    def append(self, other: "_Users") -> None:
        for f in self.__dataclass_fields__:
            setattr(self, f, np.concatenate([getattr(self, f), getattr(other, f)]))


class _Generator:
    def __init__(self, preset: Preset, start: dt.date, days: int, seed: int, emb_dim: int):
        self.p = preset
        self.start = start
        self.days = days
        self.seed = seed
        self.emb_dim = emb_dim
        rng = _rng(seed, 0, ST_INIT)
        p = preset
        self.centroids = _unit(rng.standard_normal((p.topics, p.latent_dim)))
        self.topic_pop = rng.dirichlet(np.full(p.topics, 2.0))
        # semi-orthogonal projection latent -> content space: ||z P|| = ||z||
        q, _ = np.linalg.qr(rng.standard_normal((emb_dim, p.latent_dim)))
        self.proj = q.T.astype(np.float32)  # (d, E)
        self.topic_age = rng.uniform(1.0, 5.0, p.topics)  # age bucket centre per topic
        self.topic_gender = rng.uniform(0.2, 0.8, p.topics)
        self.users = self._draw_users(rng, p.users, 1, -rng.integers(1, 731, p.users))
        self.users.active_prev = rng.random(p.users) < sigmoid(self.users.base + p.streak * sigmoid(self.users.base))
        self.next_uid = p.users + 1
        # creators: a subset of the initial users
        n_c = max(1, min(int(p.uploads_per_day * p.creators_per_upload), int(p.max_creator_share * p.users)))
        self.c_uidx = np.sort(rng.choice(p.users, n_c, replace=False))
        rate = rng.gamma(0.7, 1.0, n_c)
        self.c_rate = rate / rate.sum() * p.uploads_per_day
        self.c_quality = rng.normal(0.0, 0.5, n_c)
        mix = rng.dirichlet(np.full(p.topics, 0.15), n_c) * 0.7 + self.topic_pop * 0.3
        self.c_mix_cdf = np.cumsum(mix / mix.sum(1, keepdims=True), axis=1)
        self.c_mix = mix
        self.users.hazard[self.c_uidx] = 0.0  # creators stay
        self.users.followers[self.c_uidx] += np.round(
            rng.lognormal(3.0, 1.3, n_c) * np.exp(self.c_quality)
        ).astype(np.int64)
        # items (every item ever uploaded)
        d = p.latent_dim
        self.i_id = np.zeros(0, np.int64)
        self.i_creator = np.zeros(0, np.int32)
        self.i_day = np.zeros(0, np.int32)
        self.i_ts = np.zeros(0, np.int64)
        self.i_topic = np.zeros(0, np.int32)
        self.i_dur = np.zeros(0, np.int64)
        self.i_latent = np.zeros((0, d), np.float32)
        self.i_imp = np.zeros(0, np.float64)
        self.next_iid = FIRST_ITEM_ID
        self.activity_days: list[int] = []
        self.perf: dict[str, dict[str, float]] = {}

    # ------------------------------------------------------------------ users
    def _draw_users(self, rng: np.random.Generator, n: int, first_id: int, reg_day) -> _Users:
        p = self.p
        k = rng.choice([1, 2, 3], n, p=[0.4, 0.4, 0.2])
        topics = rng.choice(p.topics, (n, 3), p=self.topic_pop)
        w = rng.gamma(1.0, 1.0, (n, 3)) * (np.arange(3) < k[:, None])
        w /= w.sum(1, keepdims=True)
        vec = np.einsum("nk,nkd->nd", w, self.centroids[topics])
        vec += p.user_noise * rng.standard_normal((n, p.latent_dim)) / np.sqrt(p.latent_dim)
        main = topics[np.arange(n), w.argmax(1)]
        heavy = rng.random(n) < p.heavy_share
        base = np.where(heavy, rng.normal(1.2, 0.6, n), rng.normal(-2.3, 1.0, n))
        return _Users(
            uid=np.arange(first_id, first_id + n, dtype=np.int64),
            reg_day=np.broadcast_to(np.asarray(reg_day, np.int32), (n,)).copy(),
            age=np.clip(np.rint(rng.normal(self.topic_age[main], 1.0)), 0, 6).astype(np.int32),
            gender=(rng.random(n) < self.topic_gender[main]).astype(np.int32),
            region=rng.integers(0, 32, n).astype(np.int32),
            device=rng.choice(4, n, p=[0.55, 0.3, 0.1, 0.05]).astype(np.int32),
            interest=_unit(vec),
            base=base,
            amp=rng.lognormal(0.0, 0.3, n),
            bias=rng.normal(0.0, 0.4, n),
            enth=rng.random(n) < p.enthusiast_share,
            intensity=rng.lognormal(-0.125, 0.5, n),
            hazard=p.churn_rate * 2.0 * sigmoid(-base),
            churn_day=np.full(n, NEVER, np.int32),
            followers=rng.poisson(2.0, n).astype(np.int64),
            active_prev=np.zeros(n, bool),
        )

    def _register(self, i: int) -> int:
        rng = _rng(self.seed, i, ST_REGISTER)
        n = int(rng.poisson(self.p.new_user_rate * len(self.users)))
        if n:
            self.users.append(self._draw_users(rng, n, self.next_uid, i))
            self.next_uid += n
        return n

    def _activity(self, i: int, day: dt.date, draw: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """True P(active) of every registered user on day index i, and the realised activity."""
        u = self.users
        alive = (u.churn_day == NEVER) & (u.reg_day < i)
        churn = alive & (_rng(self.seed, i, ST_CHURN).random(len(u)) < u.hazard)
        u.churn_day[churn] = i
        prob = sigmoid(activity_logit(u.base, u.amp, day.weekday(), u.active_prev, self.p.streak))
        prob = np.where(u.churn_day <= i, 0.0, prob)
        prob = np.where(u.reg_day == i, 1.0, prob)
        if not draw:
            return prob, None
        active = _rng(self.seed, i, ST_ACTIVITY).random(len(u)) < prob
        return prob, active

    # ------------------------------------------------------------------ uploads
    def _upload(self, i: int, day: dt.date) -> dict[str, np.ndarray]:
        p, rng = self.p, _rng(self.seed, i, ST_UPLOAD)
        counts = rng.poisson(self.c_rate * WEEKLY_UPLOADS[day.weekday()])
        creator = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        n = len(creator)
        topic = (self.c_mix_cdf[creator] < rng.random(n)[:, None]).sum(1).clip(0, p.topics - 1).astype(np.int32)
        noise = rng.standard_normal((n, p.latent_dim)) / np.sqrt(p.latent_dim)
        latent = _unit(self.centroids[topic] + p.item_noise * noise)
        dur = np.clip(rng.lognormal(np.log(20_000.0), 0.7, n), 3_000, 600_000).astype(np.int64)
        ts = _day_start_us(day) + _diurnal_us(rng, n)
        emb_noise = rng.standard_normal((n, self.emb_dim)).astype(np.float32) / np.float32(np.sqrt(self.emb_dim))
        emb = _unit(latent @ self.proj + np.float32(p.emb_noise) * emb_noise)
        order = np.argsort(ts, kind="stable")  # item ids ascend with upload time
        creator, topic, latent, dur, ts, emb = creator[order], topic[order], latent[order], dur[order], ts[order], emb[order]
        iid = np.arange(self.next_iid, self.next_iid + n, dtype=np.int64)
        self.next_iid += n
        self.i_id = np.concatenate([self.i_id, iid])
        self.i_creator = np.concatenate([self.i_creator, creator])
        self.i_day = np.concatenate([self.i_day, np.full(n, i, np.int32)])
        self.i_ts = np.concatenate([self.i_ts, ts])
        self.i_topic = np.concatenate([self.i_topic, topic])
        self.i_dur = np.concatenate([self.i_dur, dur])
        self.i_latent = np.concatenate([self.i_latent, latent])
        self.i_imp = np.concatenate([self.i_imp, np.zeros(n)])
        return dict(item_id=iid, creator_id=self.users.uid[self.c_uidx[creator]], upload_ts=ts, category=topic,
                    duration_ms=dur, content_emb=emb)

    # ------------------------------------------------------------------ organic feed
    def _feed(self, i: int, day: dt.date, active: np.ndarray) -> dict[str, np.ndarray]:
        """Impressions and feedback of the organic (user-side) feed for the day's active users."""
        p = self.p
        start_us = _day_start_us(day)
        pool = np.flatnonzero((self.i_day > i - p.pool_days) & (self.i_day <= i))
        act_idx = np.flatnonzero(active)
        empty = dict(uidx=np.zeros(0, np.int64), item=np.zeros(0, np.int64), ts=np.zeros(0, np.int64),
                     flags=np.zeros((0, len(FEEDBACK_TYPES)), np.int8), play=np.zeros(0, np.int64))
        if len(pool) == 0 or len(act_idx) == 0:
            return empty
        age_days = np.maximum(start_us - self.i_ts[pool], 0) / US_PER_DAY
        q = self.c_quality[self.i_creator[pool]]
        w = np.exp(0.5 * q) * (self.i_imp[pool] + p.popularity_prior) ** p.popularity_alpha * np.exp(-age_days / p.age_decay_days)
        cdf = np.cumsum(w)
        pool_ts, pool_lat = self.i_ts[pool], self.i_latent[pool]
        parts = []
        for c, lo in enumerate(range(0, len(act_idx), p.chunk_users)):
            users = act_idx[lo:lo + p.chunk_users]
            rng = _rng(self.seed, i, ST_FEED, c)
            n_imp = np.clip(rng.poisson(p.impressions_mean * self.users.intensity[users]), 1, p.impressions_max)
            n_cand = n_imp * p.candidate_factor
            owner = np.repeat(np.arange(len(users)), n_cand)
            cand = np.searchsorted(cdf, rng.random(len(owner)) * cdf[-1], side="right").clip(0, len(pool) - 1)
            ts = start_us + _diurnal_us(rng, len(owner))
            aff = np.einsum("nd,nd->n", self.users.interest[users][owner], pool_lat[cand])
            score = p.feed_temperature * aff.astype(np.float64) + rng.gumbel(size=len(owner))
            score[ts < pool_ts[cand]] = -np.inf  # today's items only after their upload
            key = owner.astype(np.int64) * len(pool) + cand
            o = np.argsort(key, kind="stable")
            dup = np.zeros(len(key), bool)
            dup[o[1:]] = key[o[1:]] == key[o[:-1]]
            score[dup] = -np.inf  # one impression per (user, item) per day
            o = np.argsort(-score, kind="stable")  # best first; two stable sorts beat lexsort ~10x
            o = o[np.argsort(owner[o], kind="stable")]
            seg_start = np.concatenate([[0], np.cumsum(n_cand)[:-1]])
            rank = np.arange(len(o)) - seg_start[owner[o]]
            keep = o[(rank < n_imp[owner[o]]) & np.isfinite(score[o])]
            uidx, item, ts, aff = users[owner[keep]], pool[cand[keep]], ts[keep], aff[keep]
            # feedback
            rng = _rng(self.seed, i, ST_FEEDBACK, c)
            probs = feedback_probs(aff, self.c_quality[self.i_creator[item]], self.users.bias[uidx],
                                   self.users.enth[uidx], self.i_dur[item])
            draws = rng.random((len(keep), len(FEEDBACK_TYPES)))
            flags = np.stack([draws[:, k] < probs[t] for k, t in enumerate(FEEDBACK_TYPES)], axis=1).astype(np.int8)
            dur = self.i_dur[item]
            long_view = flags[:, FEEDBACK_TYPES.index("long_view")].astype(bool)
            frac = np.where(long_view, rng.uniform(LONG_VIEW_FRACTION, 1.6, len(keep)),
                            rng.uniform(0.02, LONG_VIEW_FRACTION * 0.999, len(keep)))
            play = np.where(long_view, np.ceil(dur * frac), np.floor(dur * frac)).astype(np.int64)
            parts.append(dict(uidx=uidx, item=item, ts=ts, flags=flags, play=play))
        out = {k: np.concatenate([pt[k] for pt in parts]) for k in empty}
        o = np.argsort(out["uidx"].astype(np.int64) * US_PER_DAY + (out["ts"] - start_us), kind="stable")
        return {k: v[o] for k, v in out.items()}

    # ------------------------------------------------------------------ one day
    def step(self, i: int, lake: Lake, truth_rel: str) -> dict:
        day = self.start + dt.timedelta(days=i)
        clock = _Clock(self.perf)
        n_new = self._register(i)
        prob, active = self._activity(i, day)
        self.activity_days.append(i)
        _write_activity_truth(lake, truth_rel, day, self.users.uid, prob, active)
        clock.lap("users")
        items = self._upload(i, day)
        _write(lake, "items", day, _items_table(items))
        clock.lap("items", len(items["item_id"]))
        feed = self._feed(i, day, active)
        u = self.users
        # state updates: popularity, followers, streaks
        self.i_imp += np.bincount(feed["item"], minlength=len(self.i_imp))
        follow = feed["flags"][:, FEEDBACK_TYPES.index("follow")].astype(bool)
        u.followers += np.bincount(self.c_uidx[self.i_creator[feed["item"][follow]]], minlength=len(u))
        u.active_prev = active
        _write(lake, "interactions", day, self._interactions_table(feed))
        clock.lap("interactions", len(feed["item"]))
        # visits
        rng = _rng(self.seed, i, ST_VISITS)
        act_idx = np.flatnonzero(active)
        n_rows = np.bincount(feed["uidx"], minlength=len(u))[act_idx]
        play = np.bincount(feed["uidx"], weights=feed["play"], minlength=len(u))[act_idx]
        visits = dict(
            user_id=u.uid[act_idx],
            sessions=(1 + rng.poisson(n_rows / 10.0)).astype(np.int32),
            watch_ms=(play + rng.integers(0, 120_000, len(act_idx))).astype(np.int64),
        )
        _write(lake, "visits", day, pa.table(visits))
        clock.lap("visits", len(act_idx))
        _write(lake, "users", day, self._users_table())  # after follows: follower_count as of end of day
        clock.lap("users", len(u))
        n_imp = len(feed["item"])
        fresh = self.i_day[feed["item"]] == i if n_imp else np.zeros(0, bool)
        return dict(
            day=day.isoformat(), users=len(u), new_users=n_new, active=int(active.sum()),
            uploads=len(items["item_id"]), impressions=n_imp,
            impressions_per_new_item=float(fresh.sum() / max(len(items["item_id"]), 1)),
            positives=feed["flags"].sum(0).astype(np.int64),
        )

    def _users_table(self) -> pa.Table:
        u = self.users
        epoch_day = (self.start - dt.date(1970, 1, 1)).days
        return pa.table(dict(
            user_id=u.uid,
            register_dt=pa.array((epoch_day + u.reg_day).astype(np.int32), pa.date32()),
            age_bucket=u.age, gender=u.gender, region=u.region, device=u.device,
            follower_count=u.followers,
        ))

    def _interactions_table(self, f: dict[str, np.ndarray]) -> pa.Table:
        cols = dict(
            user_id=self.users.uid[f["uidx"]],
            item_id=self.i_id[f["item"]],
            ts=pa.array(f["ts"], pa.timestamp("us", tz="UTC")),
        )
        for k, t in enumerate(FEEDBACK_TYPES):
            cols[f"is_{t}"] = f["flags"][:, k]
        cols["play_time_ms"] = f["play"]
        return pa.table(cols)

    # ------------------------------------------------------------------ truth
    def write_truth(self, lake: Lake, rel: str, meta: dict) -> None:
        u = self.users
        epoch_day = (self.start - dt.date(1970, 1, 1)).days
        churn = np.where(u.churn_day == NEVER, 0, epoch_day + u.churn_day).astype(np.int32)
        is_creator = np.zeros(len(u), bool)
        is_creator[self.c_uidx] = True
        _write_parquet(lake, posixpath.join(rel, "users.parquet"), pa.table(dict(
            user_id=u.uid,
            register_dt=pa.array((epoch_day + u.reg_day).astype(np.int32), pa.date32()),
            churn_dt=pa.array(churn, pa.date32(), mask=u.churn_day == NEVER),
            base_logit=u.base, season_amp=u.amp, bias=u.bias, enthusiast=u.enth,
            intensity=u.intensity, churn_hazard=u.hazard, is_creator=is_creator,
        )))
        _write_npy(lake, posixpath.join(rel, "user_interest.npy"), u.interest)
        _write_parquet(lake, posixpath.join(rel, "creators.parquet"), pa.table(dict(
            creator_id=u.uid[self.c_uidx], quality=self.c_quality, upload_rate=self.c_rate,
        )))
        _write_npy(lake, posixpath.join(rel, "creator_topic_mix.npy"), self.c_mix.astype(np.float32))
        _write_parquet(lake, posixpath.join(rel, "items.parquet"), pa.table(dict(
            item_id=self.i_id,
            creator_id=u.uid[self.c_uidx[self.i_creator]],
            upload_ts=pa.array(self.i_ts, pa.timestamp("us", tz="UTC")),
            topic=self.i_topic, duration_ms=self.i_dur,
            creator_quality=self.c_quality[self.i_creator],
            impressions=self.i_imp,
        )))
        _write_npy(lake, posixpath.join(rel, "item_latent.npy"), self.i_latent)
        _write_npy(lake, posixpath.join(rel, "topic_centroids.npy"), self.centroids)
        _write_npy(lake, posixpath.join(rel, "content_projection.npy"), self.proj)
        params = dict(
            meta,
            preset=asdict(self.p),
            feedback_types=list(FEEDBACK_TYPES),
            feedback_params=FEEDBACK_PARAMS,
            long_view_fraction=LONG_VIEW_FRACTION,
            weekly_activity=WEEKLY_ACTIVITY.tolist(),
            weekly_uploads=WEEKLY_UPLOADS.tolist(),
            activity_days=[(self.start + dt.timedelta(days=k)).isoformat() for k in self.activity_days],
            forecast_day=(self.start + dt.timedelta(days=self.days)).isoformat(),
        )
        lake.write_text(posixpath.join(rel, "params.json"), json.dumps(params, indent=2, sort_keys=True))


class _Clock:
    """Accumulates seconds, rows and the process's peak RSS per table (for the benchmark)."""

    def __init__(self, perf: dict[str, dict[str, float]]):
        self.perf = perf
        self.t = time.perf_counter()

    def lap(self, table: str, rows: int = 0) -> None:
        import resource
        import sys

        now = time.perf_counter()
        rec = self.perf.setdefault(table, {"seconds": 0.0, "rows": 0, "peak_rss_mb": 0.0})
        rec["seconds"] += now - self.t
        rec["rows"] += rows
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
        rec["peak_rss_mb"] = max(rec["peak_rss_mb"], rss)
        self.t = now


def _items_table(items: dict[str, np.ndarray]) -> pa.Table:
    emb = items["content_emb"]
    n, e = emb.shape
    offsets = pa.array(np.arange(0, (n + 1) * e, e, dtype=np.int32))
    return pa.table(dict(
        item_id=items["item_id"], creator_id=items["creator_id"],
        upload_ts=pa.array(items["upload_ts"], pa.timestamp("us", tz="UTC")),
        category=items["category"], duration_ms=items["duration_ms"],
        content_emb=pa.ListArray.from_arrays(offsets, pa.array(emb.reshape(-1), pa.float32())),
    ))


def _write(lake: Lake, table: str, day: dt.date, data: pa.Table) -> None:
    t0 = time.perf_counter()
    lake.write_table(table, day, data)
    log.debug("wrote %s dt=%s: %d rows in %.2fs", table, day, data.num_rows, time.perf_counter() - t0)


def _write_parquet(lake: Lake, rel: str, table: pa.Table) -> None:
    lake.fs.create_dir(posixpath.dirname(lake.fs_path(rel)), recursive=True)
    with lake.fs.open_output_stream(lake.fs_path(rel)) as f:
        pq.write_table(table, f, compression="zstd")


def _write_npy(lake: Lake, rel: str, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    lake.fs.create_dir(posixpath.dirname(lake.fs_path(rel)), recursive=True)
    with lake.fs.open_output_stream(lake.fs_path(rel)) as f:
        f.write(buf.getvalue())


def _write_activity_truth(lake: Lake, rel: str, day: dt.date, uid: np.ndarray, prob: np.ndarray,
                          active: np.ndarray | None) -> None:
    act = pa.nulls(len(uid), pa.int8()) if active is None else pa.array(active.astype(np.int8))
    _write_parquet(lake, posixpath.join(rel, "activity", f"dt={day.isoformat()}.parquet"),
                   pa.table(dict(user_id=uid, p_active=prob, active=act)))


def generate(
    lake_root: str,
    preset: str | Preset = "tiny",
    start: str | dt.date = "2026-01-01",
    days: int = 14,
    seed: int = 0,
    emb_dim: int = 128,
    profile: bool = False,
) -> dict:
    """Write a synthetic world into ``lake_root`` and return a summary of what was generated.

    Tables ``users``, ``items``, ``visits``, ``interactions`` get one validated partition per
    day; the hidden truth goes to ``<lake>/_truth/`` (published atomically at the end).
    ``profile=True`` adds per-table seconds, rows, rows/s and peak RSS under ``"tables"``.
    """
    t0 = time.perf_counter()
    p = get_preset(preset)
    start = parse_date(start)
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    lake = Lake(lake_root)
    meta = {"emb_dim": int(emb_dim), "preset": p.name, "seed": int(seed), "start": start.isoformat(),
            "days": int(days), "generator": "dualrec.synth"}
    lake.write_meta(meta)
    gen = _Generator(p, start, days, seed, emb_dim)
    per_day = []
    with lake.publish_dir(TRUTH_DIR) as truth_rel:
        for i in range(days):
            t_day = time.perf_counter()
            per_day.append(gen.step(i, lake, truth_rel))
            log.info("synth %s: %s (%.1fs)", per_day[-1]["day"],
                     {k: v for k, v in per_day[-1].items() if k not in ("day", "positives")},
                     time.perf_counter() - t_day)
        # the day after the last one: true activity probability only (no tables), so the last
        # day's dispatch can still be scored against truth
        fday = start + dt.timedelta(days=days)
        prob, _ = gen._activity(days, fday, draw=False)
        gen.activity_days.append(days)
        _write_activity_truth(lake, truth_rel, fday, gen.users.uid, prob, None)
        gen.write_truth(lake, truth_rel, meta)
    imps = np.array([d["impressions"] for d in per_day], dtype=np.float64)
    extra = {}
    if profile:
        extra["tables"] = {t: dict(r, rows_per_s=r["rows"] / max(r["seconds"], 1e-9)) for t, r in gen.perf.items()}
    pos = np.sum([d["positives"] for d in per_day], axis=0)
    return {
        "users": len(gen.users),
        "creators": len(gen.c_uidx),
        "days": days,
        "uploads_per_day": float(np.mean([d["uploads"] for d in per_day])),
        "daily_active_share": float(np.mean([d["active"] / d["users"] for d in per_day])),
        "impressions_per_day": float(imps.mean()),
        # day 0 has no older items to compete with, so it is left out when there are later days
        "impressions_per_new_item_same_day": float(np.mean([d["impressions_per_new_item"] for d in per_day[1:] or per_day])),
        "positive_rate": {t: float(pos[k] / max(imps.sum(), 1)) for k, t in enumerate(FEEDBACK_TYPES)},
        "seconds": round(time.perf_counter() - t0, 2),
        "lake": lake.root,
        **extra,
    }
