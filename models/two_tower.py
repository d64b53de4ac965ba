"""Two-tower retrieval model (paper 3.2.2): e_u = f^U(x_u), e_i = f^I(x_i), logit = e_u . e_i.

Pure PyTorch + NumPy (no Spark), so it trains on the driver and runs batched inside Spark
workers (``jobs/two_tower.py`` broadcasts :func:`model_to_bytes` once).

Public API
----------
- ``load_two_tower(lake, day) -> TwoTowerModel``: the artefact ``_models/two_tower/dt=day``.
- ``item_embeddings(model, items) -> np.ndarray[float32, (n, dim)]``: ``items`` has the ``items``
  table columns (item_id, creator_id, category, duration_ms, content_emb); works for brand-new
  items because the item tower never needs a trained item ID (the ID embedding is dropped out in
  training and not used when serving).
- ``user_embeddings(model, users) -> np.ndarray``: ``users`` has the columns of
  :data:`USER_FEATURE_COLUMNS` (built by ``dualrec.two_tower.user_features``).
- ``TwoTowerModel.from_spec`` / ``model_spec(cfg, content_dim)``, ``train_two_tower(model, data, cfg, seed)``,
  ``save_two_tower(model, lake, rel, manifest)``, ``model_to_bytes`` / ``model_from_bytes``.

Features. User tower: hashed user-ID embedding, profile categoricals (hashed), log activity
statistics over the training window, and the mean content embedding of the items the user gave
explicit feedback to in the window ("liked summary"). Item tower: content embedding, hashed
creator, category, log duration, and a hashed item-ID embedding that is zeroed with probability
``item_id_dropout`` in training and always when serving (served items are new uploads).

Training. Positives are (user, item) pairs with explicit feedback. For each positive item the
softmax runs over its positive user, ``negatives_per_positive`` users sampled uniformly from the
available users of the pair's day (paper DualRec-v1) and, optionally, the other positive users of
the batch (in-batch negatives). The liked summary of a positive user leaves the positive item out,
so the model cannot learn to find an item inside its own liker's summary.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from dualrec import artifacts
from dualrec.hashing import hash_bucket
from models import torch_threads
from models.torch_io import load_model, load_state, optimizer_step, save_model, sparse_dense_optimizers, state_to_bytes

log = logging.getLogger(__name__)

VERSION = 1
MODEL_NAME = "two_tower"
WEIGHTS_FILE = "model.pt"
MANIFEST_FILE = "manifest.json"

USER_CAT: tuple[str, ...] = ("age_bucket", "gender", "region", "device")
USER_NUM: tuple[str, ...] = (
    "follower_count",
    "account_age_days",
    "active_days",
    "sessions",
    "watch_ms",
    "n_interactions",
    "n_positive",
    "liked_n",
)
USER_FEATURE_COLUMNS: tuple[str, ...] = ("user_id", *USER_CAT, *USER_NUM, "liked_emb")
ITEM_FEATURE_COLUMNS: tuple[str, ...] = ("item_id", "creator_id", "category", "duration_ms", "content_emb")
CAT_DIM = 8

# salts keep the hashed tables of different fields independent
_SALT_USER, _SALT_ITEM, _SALT_CREATOR, _SALT_CAT = 11, 23, 37, 53


# ---------------------------------------------------------------------- hashing / encoding
def hash_ids(x: np.ndarray, buckets: int, salt: int) -> np.ndarray:
    """SplitMix64 of the id (plus a salt) modulo ``buckets``: stable across runs and machines."""
    return hash_bucket(x, buckets, salt)


def _as_table(data: pd.DataFrame | pa.Table | pa.RecordBatch, columns: tuple[str, ...]) -> pa.Table:
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    if isinstance(data, pd.DataFrame):
        missing = [c for c in columns if c not in data.columns]
        if missing:
            raise ValueError(f"two-tower input is missing column(s): {', '.join(missing)}")
        cols = {}
        for c in columns:
            s = data[c]
            if c.endswith("_emb"):
                cols[c] = pa.array([None if v is None else np.asarray(v, np.float32) for v in s.tolist()],
                                   type=pa.list_(pa.float32()))
            else:
                cols[c] = pa.array(s.to_numpy())
        return pa.table(cols)
    missing = [c for c in columns if c not in data.column_names]
    if missing:
        raise ValueError(f"two-tower input is missing column(s): {', '.join(missing)}")
    return data


def emb_matrix(col: pa.ChunkedArray | pa.Array, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """A list<float> column as an (n, dim) float32 matrix (null rows -> zeros) and a valid mask."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    n = len(col)
    out = np.zeros((n, dim), np.float32)
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    if valid.any():
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        bad = valid & (lengths != dim)
        if bad.any():
            raise ValueError(f"embedding of dimension {int(lengths[bad][0])} where {dim} was expected")
        flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        out[valid] = flat.reshape(-1, dim)
    return out, valid


def _int_col(t: pa.Table, name: str) -> np.ndarray:
    return t.column(name).fill_null(0).to_numpy().astype(np.int64, copy=False)


def _float_col(t: pa.Table, name: str) -> np.ndarray:
    return t.column(name).cast(pa.float64()).fill_null(0.0).to_numpy().astype(np.float64, copy=False)


@dataclass
class ModelSpec:
    """Everything needed to rebuild the network (stored in the manifest)."""

    dim: int
    hidden: int
    id_buckets: int
    id_dim: int
    cat_buckets: int
    content_dim: int
    user_cat: list[str] = field(default_factory=lambda: list(USER_CAT))
    user_num: list[str] = field(default_factory=lambda: list(USER_NUM))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        return cls(**d)


def model_spec(cfg, content_dim: int) -> ModelSpec:
    """Spec from a :class:`~dualrec.config.TwoTowerConfig` and the lake's content dimension."""
    return ModelSpec(cfg.dim, cfg.hidden, cfg.id_buckets, cfg.id_dim, cfg.cat_buckets, int(content_dim))


def encode_users(data: pd.DataFrame | pa.Table | pa.RecordBatch, spec: ModelSpec) -> dict[str, np.ndarray]:
    """User feature rows -> model input arrays (hashing and log transforms; no normalisation)."""
    t = _as_table(data, USER_FEATURE_COLUMNS)
    uid = hash_ids(_int_col(t, "user_id"), spec.id_buckets, _SALT_USER)
    cat = np.stack(
        [hash_ids(_int_col(t, c), spec.cat_buckets, _SALT_CAT + k) + k * spec.cat_buckets for k, c in enumerate(spec.user_cat)],
        axis=1,
    )
    num = np.log1p(np.maximum(np.stack([_float_col(t, c) for c in spec.user_num], axis=1), 0.0)).astype(np.float32)
    liked, has = emb_matrix(t.column("liked_emb"), spec.content_dim)
    has = has & (_float_col(t, "liked_n") > 0)
    return {"uid": uid, "cat": cat, "num": num, "liked": liked, "has_liked": has.astype(np.float32)[:, None]}


def encode_items(data: pd.DataFrame | pa.Table | pa.RecordBatch, spec: ModelSpec) -> dict[str, np.ndarray]:
    """Item rows (``items`` table columns) -> model input arrays."""
    t = _as_table(data, ITEM_FEATURE_COLUMNS)
    content, valid = emb_matrix(t.column("content_emb"), spec.content_dim)
    if not valid.all():
        raise ValueError("items passed to the item tower must all have a content_emb")
    return {
        "iid": hash_ids(_int_col(t, "item_id"), spec.id_buckets, _SALT_ITEM),
        "creator": hash_ids(_int_col(t, "creator_id"), spec.id_buckets, _SALT_CREATOR),
        "cat": hash_ids(_int_col(t, "category"), spec.cat_buckets, _SALT_CAT + 100),
        "num": np.log1p(np.maximum(_float_col(t, "duration_ms"), 0.0)).astype(np.float32)[:, None],
        "content": content,
    }


def _take(arrays: dict[str, np.ndarray], rows: np.ndarray | slice) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v[rows])) for k, v in arrays.items()}


# ---------------------------------------------------------------------- the network
def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


def _id_table(n: int, d: int) -> nn.Embedding:
    e = nn.Embedding(n, d, sparse=True)
    nn.init.normal_(e.weight, std=0.01)  # unseen (hashed) ids start near zero: little noise for cold ids
    return e


class TwoTowerModel(nn.Module):
    """User tower and item tower; the logit of a pair is the inner product of their outputs."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        n_num = len(spec.user_num)
        self.user_id = _id_table(spec.id_buckets, spec.id_dim)
        self.user_cat = _id_table(len(spec.user_cat) * spec.cat_buckets, CAT_DIM)
        self.user_mlp = _mlp(spec.id_dim + len(spec.user_cat) * CAT_DIM + n_num + spec.content_dim + 1, spec.hidden, spec.dim)
        self.item_id = _id_table(spec.id_buckets, spec.id_dim)
        self.creator = _id_table(spec.id_buckets, spec.id_dim)
        self.item_cat = _id_table(spec.cat_buckets, CAT_DIM)
        self.item_mlp = _mlp(2 * spec.id_dim + CAT_DIM + 1 + spec.content_dim, spec.hidden, spec.dim)
        # input normalisers, part of the state_dict (fitted once at cold start)
        self.register_buffer("user_num_mean", torch.zeros(n_num))
        self.register_buffer("user_num_std", torch.ones(n_num))
        self.register_buffer("item_num_mean", torch.zeros(1))
        self.register_buffer("item_num_std", torch.ones(1))

    @classmethod
    def from_spec(cls, spec: ModelSpec | dict[str, Any]) -> "TwoTowerModel":
        return cls(spec if isinstance(spec, ModelSpec) else ModelSpec.from_dict(spec))

    def fit_normalizers(self, user_num: np.ndarray, item_num: np.ndarray) -> None:
        """Standardise the numeric inputs with the statistics of the first training set."""
        for mean, std, x in ((self.user_num_mean, self.user_num_std, user_num), (self.item_num_mean, self.item_num_std, item_num)):
            if len(x):
                mean.copy_(torch.from_numpy(x.mean(0).astype(np.float32)))
                std.copy_(torch.from_numpy(np.maximum(x.std(0), 1e-3).astype(np.float32)))

    def user_forward(self, t: dict[str, torch.Tensor]) -> torch.Tensor:
        n = t["uid"].shape[0]
        x = torch.cat(
            [
                self.user_id(t["uid"]),
                self.user_cat(t["cat"]).reshape(n, -1),
                (t["num"] - self.user_num_mean) / self.user_num_std,
                t["liked"],
                t["has_liked"],
            ],
            dim=1,
        )
        return self.user_mlp(x)

    def item_forward(self, t: dict[str, torch.Tensor], id_keep: torch.Tensor | None = None) -> torch.Tensor:
        """``id_keep``: per-row 0/1 multiplier of the item-ID embedding (None = drop it, cold serving)."""
        iid = self.item_id(t["iid"])
        iid = iid * id_keep[:, None] if id_keep is not None else torch.zeros_like(iid)
        x = torch.cat(
            [iid, self.creator(t["creator"]), self.item_cat(t["cat"]), (t["num"] - self.item_num_mean) / self.item_num_std, t["content"]],
            dim=1,
        )
        return self.item_mlp(x)


def new_two_tower(spec: ModelSpec | dict[str, Any], seed: int) -> TwoTowerModel:
    """A freshly initialised model whose weights depend only on ``seed`` (the global torch RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TwoTowerModel.from_spec(spec)


# ---------------------------------------------------------------------- inference
@torch.no_grad()
def user_embeddings(model: TwoTowerModel, users: pd.DataFrame | pa.Table | pa.RecordBatch, batch_rows: int = 8192) -> np.ndarray:
    """Embeddings of user feature rows, batched (float32, (n, dim))."""
    model.eval()
    enc = encode_users(users, model.spec)
    n = len(enc["uid"])
    out = np.empty((n, model.spec.dim), np.float32)
    for s in range(0, n, batch_rows):
        out[s : s + batch_rows] = model.user_forward(_take(enc, slice(s, s + batch_rows))).numpy()
    return out


@torch.no_grad()
def item_embeddings(model: TwoTowerModel, items: pd.DataFrame | pa.Table, batch_rows: int = 8192) -> np.ndarray:
    """Item-tower embeddings of (possibly brand-new) items, float32 (n, dim); item IDs are not used."""
    model.eval()
    enc = encode_items(items, model.spec)
    n = len(enc["iid"])
    out = np.empty((n, model.spec.dim), np.float32)
    for s in range(0, n, batch_rows):
        out[s : s + batch_rows] = model.item_forward(_take(enc, slice(s, s + batch_rows)), None).numpy()
    return out


# ---------------------------------------------------------------------- training
@dataclass
class TrainData:
    """Encoded training set (rows index into ``users`` / ``items``).

    ``pool_rows[pool_offsets[d] : pool_offsets[d] + pool_sizes[d]]`` are the user rows negatives
    of a positive with ``pos_day == d`` are drawn from.
    """

    users: dict[str, np.ndarray]
    items: dict[str, np.ndarray]
    pos_user: np.ndarray
    pos_item: np.ndarray
    pos_day: np.ndarray
    pool_rows: np.ndarray
    pool_offsets: np.ndarray
    pool_sizes: np.ndarray

    @property
    def n(self) -> int:
        return len(self.pos_user)


def build_train_data(
    users: pd.DataFrame | pa.Table,
    items: pd.DataFrame | pa.Table,
    pairs: pd.DataFrame,
    pools: dict[Any, np.ndarray],
    spec: ModelSpec,
) -> TrainData:
    """Encode features and map ids to rows.

    ``pairs`` has user_id, item_id, day (any hashable day key); ``pools`` maps a day key to the
    user_ids negatives may be drawn from. Pairs whose user or item has no features, or whose day
    has an empty pool, are dropped (logged).
    """
    ut = _as_table(users, USER_FEATURE_COLUMNS)
    it = _as_table(items, ITEM_FEATURE_COLUMNS)
    user_ids = _int_col(ut, "user_id")
    item_ids = _int_col(it, "item_id")
    u_index = pd.Index(user_ids)
    i_index = pd.Index(item_ids)
    if not u_index.is_unique or not i_index.is_unique:
        raise ValueError("user and item feature rows must have unique ids")
    pu = u_index.get_indexer(pairs["user_id"].to_numpy())
    pi = i_index.get_indexer(pairs["item_id"].to_numpy())
    days = sorted(pools)
    pool_list = [u_index.get_indexer(np.asarray(pools[d], np.int64)) for d in days]
    pool_list = [p[p >= 0] for p in pool_list]
    sizes = np.array([len(p) for p in pool_list], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    pdays = pd.Index(days).get_indexer(pairs["day"]).astype(np.int64) if days else np.full(len(pairs), -1, np.int64)
    ok = (pu >= 0) & (pi >= 0) & (pdays >= 0)
    ok[ok] &= sizes[pdays[ok]] > 0
    if (~ok).any():
        log.info("two-tower: dropped %d of %d pairs without features or negative pool", int((~ok).sum()), len(ok))
    return TrainData(
        users=encode_users(ut, spec),
        items=encode_items(it, spec),
        pos_user=pu[ok],
        pos_item=pi[ok],
        pos_day=pdays[ok],
        pool_rows=np.concatenate(pool_list).astype(np.int64) if pool_list else np.zeros(0, np.int64),
        pool_offsets=offsets,
        pool_sizes=sizes,
    )


def _leave_one_out(users: dict[str, torch.Tensor], content: torch.Tensor, liked_n_col: int) -> dict[str, torch.Tensor]:
    """Remove the positive item from its liker's liked summary (mean over n -> mean over n-1)."""
    num = users["num"].clone()
    n = torch.expm1(num[:, liked_n_col]).round()
    has = users["has_liked"][:, 0] > 0
    n_new = torch.where(has, n - 1, n).clamp(min=0)
    liked = torch.where(
        (has & (n_new > 0))[:, None],
        (users["liked"] * n[:, None] - content) / n_new.clamp(min=1)[:, None],
        torch.zeros_like(users["liked"]),
    )
    num[:, liked_n_col] = torch.log1p(n_new)
    out = dict(users)
    out.update(num=num, liked=liked, has_liked=(n_new > 0).float()[:, None])
    return out


def train_two_tower(model: TwoTowerModel, data: TrainData, cfg, seed: int, fit_normalizers: bool = True) -> dict[str, Any]:
    """Train in place; returns per-epoch mean losses.

    Bitwise deterministic on CPU given ``seed``, the data (in its order) and ``torch_threads``:
    deterministic kernels are enforced for the duration of training.
    """
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train_two_tower(model, data, cfg, seed, fit_normalizers)
    finally:
        torch.use_deterministic_algorithms(was)


def _train_two_tower(model: TwoTowerModel, data: TrainData, cfg, seed: int, fit_normalizers: bool) -> dict[str, Any]:
    torch.manual_seed(seed)
    torch.set_num_threads(torch_threads(getattr(cfg, "torch_threads", 2)))
    rng = np.random.default_rng(seed)
    if data.n == 0:
        log.warning("two-tower: no training pairs; model left as is")
        return {"pairs": 0, "epoch_loss": []}
    if fit_normalizers:
        model.fit_normalizers(data.users["num"], data.items["num"])
    opts = sparse_dense_optimizers(model, cfg.lr)
    liked_n_col = model.spec.user_num.index("liked_n")
    k = cfg.negatives_per_positive
    losses: list[float] = []
    model.train()
    for epoch in range(cfg.epochs):
        order = rng.permutation(data.n)
        total, steps = 0.0, 0
        for s in range(0, data.n, cfg.batch_size):
            b = order[s : s + cfg.batch_size]
            pu, pi, pd_ = data.pos_user[b], data.pos_item[b], data.pos_day[b]
            items = _take(data.items, pi)
            keep = torch.from_numpy((rng.random(len(b)) >= cfg.item_id_dropout).astype(np.float32))
            e_i = model.item_forward(items, keep)
            e_pos = model.user_forward(_leave_one_out(_take(data.users, pu), items["content"], liked_n_col))
            logits = []
            if cfg.in_batch_negatives:
                inb = e_i @ e_pos.T
                same = torch.from_numpy(pu[:, None] == pu[None, :]) & ~torch.eye(len(b), dtype=torch.bool)
                logits.append(inb.masked_fill(same, -1e9))
            else:
                logits.append((e_i * e_pos).sum(1, keepdim=True))
            if k > 0:
                r = (rng.random((len(b), k)) * data.pool_sizes[pd_][:, None]).astype(np.int64)
                neg = data.pool_rows[data.pool_offsets[pd_][:, None] + r]
                e_neg = model.user_forward(_take(data.users, neg.reshape(-1))).reshape(len(b), k, -1)
                sl = torch.einsum("bd,bkd->bk", e_i, e_neg)
                logits.append(sl.masked_fill(torch.from_numpy(neg == pu[:, None]), -1e9))
            target = torch.arange(len(b)) if cfg.in_batch_negatives else torch.zeros(len(b), dtype=torch.long)
            total += optimizer_step(opts, nn.functional.cross_entropy(torch.cat(logits, 1), target))
            steps += 1
        losses.append(total / max(steps, 1))
        log.info("two-tower epoch %d: loss %.4f (%d pairs)", epoch, losses[-1], data.n)
    model.eval()
    return {"pairs": int(data.n), "epoch_loss": [round(x, 5) for x in losses]}


# ---------------------------------------------------------------------- persistence
def model_to_bytes(model: TwoTowerModel) -> bytes:
    return state_to_bytes(model)


def model_from_bytes(spec: ModelSpec | dict[str, Any], blob: bytes) -> TwoTowerModel:
    """Rebuild from weights bytes (``weights_only=True``: no pickle code runs)."""
    return load_state(TwoTowerModel.from_spec(spec), blob)


def save_two_tower(model: TwoTowerModel, lake, rel: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``model.pt`` + ``manifest.json`` into ``rel`` (a staging dir from ``lake.publish_dir``)."""
    return save_model(model, asdict(model.spec), lake, rel, MODEL_NAME, VERSION, WEIGHTS_FILE, manifest)


def read_manifest(lake, day: dt.date | str, name: str = MODEL_NAME) -> dict[str, Any]:
    """Checked manifest: a missing, corrupt or other-version artefact names its file and stage."""

    return artifacts.read_manifest(lake, name, day, version=VERSION)


def load_two_tower(lake, day: dt.date | str) -> TwoTowerModel:
    """Load the two-tower model published for ``day`` (``_models/two_tower/dt=day``)."""

    return load_model(lake, MODEL_NAME, day, VERSION, WEIGHTS_FILE, model_from_bytes)


def spec_matches(a: ModelSpec | dict[str, Any], b: ModelSpec | dict[str, Any]) -> bool:
    """Warm start is only possible when the network shape is identical."""
    da = asdict(a) if isinstance(a, ModelSpec) else dict(a)
    db = asdict(b) if isinstance(b, ModelSpec) else dict(b)
    return da == db


__all__ = [
    "TwoTowerModel",
    "ModelSpec",
    "TrainData",
    "build_train_data",
    "encode_items",
    "encode_users",
    "hash_ids",
    "item_embeddings",
    "load_two_tower",
    "model_from_bytes",
    "model_spec",
    "model_to_bytes",
    "read_manifest",
    "save_two_tower",
    "spec_matches",
    "train_two_tower",
    "user_embeddings",
    "USER_FEATURE_COLUMNS",
    "ITEM_FEATURE_COLUMNS",
]
