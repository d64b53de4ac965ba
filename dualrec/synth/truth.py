"""Read access to the hidden truth of a synthetic world (evaluation only, never the pipeline).

API::

    from dualrec.synth.truth import Truth
    t = Truth.load(lake_root)
    t.feedback_prob(user_ids, item_ids)   -> {type: np.ndarray}  P(type | user sees item),
        types: click, like, comment, follow, share, profile_enter, long_view; equal-length
        id arrays, vectorised; exactly the probabilities the generator sampled from.
    t.activity_prob(user_ids, day)        -> np.ndarray  true P(user active on day); 0.0 for
        users who registered after ``day``. Available for every generated day and for the
        day after the last one (a forecast day without tables); other days raise ValueError.
    t.expected_visible_feedback(user_ids, item_ids, day)
                                          -> activity_prob(u, day) * sum of P(like, comment,
        follow, share, profile_enter)  (creator-visible feedback if the pair is dispatched).
    t.active(user_ids, day)               -> np.ndarray int8 realised activity (generated days).
    t.affinity(user_ids, item_ids)        -> user interest . item latent vector.
    t.user_interest(user_ids) / t.item_latent(item_ids) -> (n, d) unit-norm latent vectors.
    t.item_topics(item_ids)               -> topic index (= category) per item.
    t.creator_quality(creator_ids), t.days, t.forecast_day, t.params (the generator's JSON).

Unknown ids raise ``KeyError`` naming a sample of them. Files under ``<lake>/_truth/``:
``params.json``, ``users.parquet`` + ``user_interest.npy``, ``items.parquet`` +
``item_latent.npy``, ``creators.parquet`` + ``creator_topic_mix.npy``,
``topic_centroids.npy``, ``content_projection.npy``, ``activity/dt=YYYY-MM-DD.parquet``
(user_id, p_active, active; active is null on the forecast day). No pickle anywhere.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
import json
import posixpath
from functools import lru_cache

import numpy as np
import pyarrow.parquet as pq

from dualrec.lake import Lake, parse_date
from dualrec.synth.model import FEEDBACK_PARAMS, FEEDBACK_TYPES, REF_DURATION_MS, VISIBLE_TYPES, feedback_probs

TRUTH_DIR = "_truth"


class TruthError(ValueError):
    """The truth cannot answer (missing truth, day not generated)."""


def _lookup(sorted_ids: np.ndarray, ids, what: str) -> np.ndarray:
    """Row positions of ``ids`` in an ascending id array; unknown ids raise a clear KeyError."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    pos = np.searchsorted(sorted_ids, ids).clip(0, max(len(sorted_ids) - 1, 0))
    ok = (sorted_ids[pos] == ids) if len(sorted_ids) else np.zeros(len(ids), bool)
    if not ok.all():
        bad = np.unique(ids[~ok])
        raise KeyError(f"{len(bad)} unknown {what}(s) in the synthetic truth, e.g. {bad[:5].tolist()}")
    return pos


@dataclass(frozen=True)
class VisibleFactors:
    """The separable form of ``expected_visible_feedback`` over a grid of users x items:

    ``w[i, u] = activity[u] * sum_t sigmoid(slope[t] * <user_vec[u], item_vec[i]> + user_offset[t, u]
    + item_offset[t, i])`` (t over the creator-visible types). Evaluation scores millions of pairs
    as a matrix product plus a few sigmoids instead of one id lookup per pair.
    """

    user_vec: np.ndarray  # (n_users, d)
    item_vec: np.ndarray  # (n_items, d)
    slope: np.ndarray  # (T,)
    user_offset: np.ndarray  # (T, n_users)
    item_offset: np.ndarray  # (T, n_items)
    activity: np.ndarray  # (n_users,)


class Truth:
    """Ground truth of one generated lake, loaded into memory (arrays indexed by sorted ids)."""

    def __init__(self, lake: Lake):
        self.lake = lake
        if not lake.is_complete(TRUTH_DIR):
            raise TruthError(f"no synthetic truth at {lake.uri(TRUTH_DIR)} (was the lake made by `dualrec synth`?)")
        self.params: dict = json.loads(lake.read_text(posixpath.join(TRUTH_DIR, "params.json")))
        users = self._parquet("users.parquet")
        self._uid = users.column("user_id").to_numpy()
        self._bias = users.column("bias").to_numpy()
        self._enth = users.column("enthusiast").to_numpy(zero_copy_only=False).astype(np.float64)
        self._interest = self._npy("user_interest.npy")
        items = self._parquet("items.parquet")
        self._iid = items.column("item_id").to_numpy()
        self._quality = items.column("creator_quality").to_numpy()
        self._dur = items.column("duration_ms").to_numpy()
        self._topic = items.column("topic").to_numpy()
        self._latent = self._npy("item_latent.npy")
        creators = self._parquet("creators.parquet")
        order = np.argsort(creators.column("creator_id").to_numpy())
        self._cid = creators.column("creator_id").to_numpy()[order]
        self._cq = creators.column("quality").to_numpy()[order]
        if not (np.all(np.diff(self._uid) > 0) and np.all(np.diff(self._iid) > 0)):
            raise TruthError("truth ids are not ascending; truth files are corrupt")
        self.days = [parse_date(d) for d in self.params["activity_days"]]
        self.forecast_day = parse_date(self.params["forecast_day"])
        self._act_cache: dict[dt.date, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @classmethod
    def load(cls, lake_root: str | Lake) -> "Truth":
        return cls(lake_root if isinstance(lake_root, Lake) else Lake(lake_root))

    # ------------------------------------------------------------------ files
    def _parquet(self, name: str):
        return pq.read_table(self.lake.fs_path(posixpath.join(TRUTH_DIR, name)), filesystem=self.lake.fs)

    def _npy(self, name: str) -> np.ndarray:
        with self.lake.fs.open_input_stream(self.lake.fs_path(posixpath.join(TRUTH_DIR, name))) as f:
            return np.load(io.BytesIO(f.read()), allow_pickle=False)

    def _activity(self, day) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = parse_date(day)
        if d not in self._act_cache:
            if d not in self.days:
                raise TruthError(
                    f"no true activity for {d}: the world covers {self.days[0]}..{self.days[-1]} "
                    f"(the last of these, {self.forecast_day}, is a forecast day without tables)"
                )
            t = self._parquet(posixpath.join("activity", f"dt={d.isoformat()}.parquet"))
            act = t.column("active").to_numpy(zero_copy_only=False)
            self._act_cache[d] = (t.column("user_id").to_numpy(), t.column("p_active").to_numpy(), act)
        return self._act_cache[d]

    # ------------------------------------------------------------------ API
    @property
    def user_ids(self) -> np.ndarray:
        return self._uid

    @property
    def item_ids(self) -> np.ndarray:
        return self._iid

    def user_interest(self, user_ids) -> np.ndarray:
        return self._interest[_lookup(self._uid, user_ids, "user_id")]

    def item_latent(self, item_ids) -> np.ndarray:
        return self._latent[_lookup(self._iid, item_ids, "item_id")]

    def item_topics(self, item_ids) -> np.ndarray:
        return self._topic[_lookup(self._iid, item_ids, "item_id")]

    def creator_quality(self, creator_ids) -> np.ndarray:
        return self._cq[_lookup(self._cid, creator_ids, "creator_id")]

    def affinity(self, user_ids, item_ids) -> np.ndarray:
        u, i = self._pairs(user_ids, item_ids)
        return np.einsum("nd,nd->n", self._interest[u], self._latent[i])

    def _pairs(self, user_ids, item_ids) -> tuple[np.ndarray, np.ndarray]:
        u = _lookup(self._uid, user_ids, "user_id")
        i = _lookup(self._iid, item_ids, "item_id")
        if len(u) != len(i):
            raise ValueError(f"user_ids and item_ids must have equal length ({len(u)} != {len(i)})")
        return u, i

    def feedback_prob(self, user_ids, item_ids, types: tuple[str, ...] = FEEDBACK_TYPES) -> dict[str, np.ndarray]:
        """P(feedback type | user sees item), for aligned id arrays."""
        unknown = set(types) - set(FEEDBACK_TYPES)
        if unknown:
            raise ValueError(f"unknown feedback type(s) {sorted(unknown)}; known: {FEEDBACK_TYPES}")
        u, i = self._pairs(user_ids, item_ids)
        aff = np.einsum("nd,nd->n", self._interest[u], self._latent[i])
        return feedback_probs(aff, self._quality[i], self._bias[u], self._enth[u], self._dur[i], types)

    def activity_prob(self, user_ids, day) -> np.ndarray:
        """True P(active on day); users registered after ``day`` get 0."""
        uid, prob, _ = self._activity(day)
        ids = np.asarray(user_ids, dtype=np.int64).reshape(-1)
        _lookup(self._uid, ids, "user_id")  # unknown ids -> KeyError
        pos = np.searchsorted(uid, ids).clip(0, max(len(uid) - 1, 0))
        known = uid[pos] == ids if len(uid) else np.zeros(len(ids), bool)
        return np.where(known, prob[pos], 0.0)

    def active(self, user_ids, day) -> np.ndarray:
        """Realised activity (int8) on a generated day."""
        uid, _, act = self._activity(day)
        if parse_date(day) == self.forecast_day:
            raise TruthError(f"{self.forecast_day} is the forecast day: its activity was not drawn")
        ids = np.asarray(user_ids, dtype=np.int64).reshape(-1)
        _lookup(self._uid, ids, "user_id")
        pos = np.searchsorted(uid, ids).clip(0, max(len(uid) - 1, 0))
        return np.where(uid[pos] == ids, act[pos], 0).astype(np.int8)

    def visible_feedback_factors(self, user_ids, item_ids, day) -> VisibleFactors:
        """Factors of :meth:`expected_visible_feedback` for every (item, user) of two id lists."""
        u = _lookup(self._uid, user_ids, "user_id")
        i = _lookup(self._iid, item_ids, "item_id")
        logdur = np.log(self._dur[i].astype(np.float64) / REF_DURATION_MS)
        bias, enth = self._bias[u].astype(np.float64), self._enth[u].astype(np.float64)
        quality = self._quality[i].astype(np.float64)
        par = [FEEDBACK_PARAMS[t] for t in VISIBLE_TYPES]
        return VisibleFactors(
            user_vec=self._interest[u].astype(np.float64),
            item_vec=self._latent[i].astype(np.float64),
            slope=np.array([p["b"] for p in par], dtype=np.float64),
            user_offset=np.stack([p["s"] * bias + p["e"] * enth for p in par]),
            item_offset=np.stack([p["a"] + p["c"] * quality + p["dur"] * logdur for p in par]),
            activity=self.activity_prob(np.asarray(user_ids, dtype=np.int64), day).astype(np.float64),
        )

    def expected_visible_feedback(self, user_ids, item_ids, day) -> np.ndarray:
        """P(active on day) * expected creator-visible feedback given the user sees the item."""
        probs = self.feedback_prob(user_ids, item_ids, VISIBLE_TYPES)
        return self.activity_prob(user_ids, day) * np.sum([probs[t] for t in VISIBLE_TYPES], axis=0)


@lru_cache(maxsize=4)
def _cached(root: str) -> Truth:
    return Truth.load(root)


def load_cached(lake_root: str) -> Truth:
    """A process-wide cached Truth (evaluation calls it per metric)."""
    return _cached(Lake(lake_root).root)
