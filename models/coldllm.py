"""ColdLLM coupled funnel (papers/coldllm-llm-simulator.txt, WSDM'25): PyTorch + NumPy, no Spark.

Three pieces, each a pure function or a small class, so the channel
(:mod:`dualrec.channels.coldllm`) only moves data:

1. **Filter** (paper Eq. 5-7): :class:`ContentFilter` maps an item's content features (content
   embedding, hashed creator, category, log duration; never the item ID, a new item's ID carries
   nothing) to the two-tower behaviour space. It is *distilled* from warm items' behaviour
   embeddings (``coldllm.filter_target``): the two-tower item tower *with* the warm item's
   trained ID embedding (:func:`item_tower_targets`), or the mean two-tower embedding of its
   positive users (:func:`behaviour_targets`, what step 3 computes from interactions). Loss: cosine + MSE
   alignment (the paper's ALDI-style teacher alignment; we have no BPR term, the FAISS search
   of the user index is the ranking).
2. **Simulator** (paper Eq. 9-10): the interface is
   ``dualrec.channels.coldllm.InteractionSimulator`` (kept there so channel discovery stays
   free of torch). Given an item and its filtered users it returns one interaction probability
   per user. The paper's simulator is a LoRA-tuned LLaMA-7B answering "Yes/No"; we cannot run
   one here (no weights, no network), so the product's default is our multi-task ranker
   (:func:`ranker_probabilities`, ``dualrec.channels.coldllm.RankerSimulator``).
3. **Embedding update** (paper Eq. 4): :func:`updated_embeddings` keeps each item's
   ``simulated_positives`` most probable users (a probability >= ``min_probability``; the
   paper keeps the "Yes" users) and mixes the filter embedding with their probability-weighted
   mean embedding: e = (1 - w) f + w sum(p_u e_u) / sum(p_u). An item whose simulator says 0 for
   every user keeps its filter embedding.

Artefact ``_models/coldllm/dt=D``: ``model.pt`` (state_dict) + ``manifest.json``.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from models import torch_threads
from models.ranker import TASKS, SideArrays, featurize_pairs, predict
from models.torch_io import load_model, load_state, save_model
from models.two_tower import emb_matrix, hash_ids
from models.two_tower import encode_items as two_tower_items

log = logging.getLogger(__name__)

VERSION = 1
MODEL_NAME = "coldllm"
WEIGHTS_FILE = "model.pt"
CAT_DIM = 8
_SALT_CREATOR, _SALT_CAT = 211, 223


# ---------------------------------------------------------------------- the filter
@dataclass
class FilterSpec:
    """Network shape (stored in the manifest; a warm start needs an equal spec)."""

    content_dim: int
    dim: int
    hidden: int = 128
    id_buckets: int = 1 << 16
    cat_buckets: int = 256
    creator_dim: int = 16
    target: str = "item_tower"  # what it was distilled from: another target is another model (no warm start)

    @classmethod
    def from_cfg(cls, cfg, content_dim: int, dim: int) -> "FilterSpec":
        """From a :class:`~dualrec.config.ColdLLMConfig` and the lake's / two-tower's dimensions."""
        return cls(int(content_dim), int(dim), cfg.hidden, cfg.id_buckets, cfg.cat_buckets, target=cfg.filter_target)


def encode_items(items: pa.Table, spec: FilterSpec) -> dict[str, np.ndarray]:
    """``items``-table rows (creator_id, category, duration_ms, content_emb) -> filter inputs."""
    content, valid = emb_matrix(items.column("content_emb"), spec.content_dim)
    if not valid.all():
        raise ValueError("coldllm filter: every item needs a content_emb")
    return {
        "creator": hash_ids(items.column("creator_id").fill_null(0).to_numpy().astype(np.int64), spec.id_buckets, _SALT_CREATOR),
        "cat": hash_ids(items.column("category").fill_null(0).to_numpy().astype(np.int64), spec.cat_buckets, _SALT_CAT),
        "dur": np.log1p(np.maximum(items.column("duration_ms").fill_null(0).to_numpy().astype(np.float64), 0.0))
        .astype(np.float32)[:, None],
        "content": content,
    }


class ContentFilter(nn.Module):
    """F_I of Eq. 5: content features -> a vector in the two-tower user space (searched by inner product)."""

    def __init__(self, spec: FilterSpec):
        super().__init__()
        self.spec = spec
        self.creator = nn.Embedding(spec.id_buckets, spec.creator_dim)
        self.category = nn.Embedding(spec.cat_buckets, CAT_DIM)
        nn.init.normal_(self.creator.weight, std=0.01)
        nn.init.normal_(self.category.weight, std=0.01)
        n_in = spec.content_dim + spec.creator_dim + CAT_DIM + 1
        self.mlp = nn.Sequential(nn.Linear(n_in, spec.hidden), nn.ReLU(), nn.Linear(spec.hidden, spec.hidden), nn.ReLU(),
                                 nn.Linear(spec.hidden, spec.dim))
        self.register_buffer("dur_mean", torch.zeros(1))
        self.register_buffer("dur_std", torch.ones(1))

    @classmethod
    def from_spec(cls, spec: FilterSpec | dict[str, Any]) -> "ContentFilter":
        return cls(spec if isinstance(spec, FilterSpec) else FilterSpec(**spec))

    def forward(self, t: dict[str, torch.Tensor]) -> torch.Tensor:
        x = torch.cat([t["content"], self.creator(t["creator"]), self.category(t["cat"]),
                       (t["dur"] - self.dur_mean) / self.dur_std], dim=1)
        return self.mlp(x)


def _take(enc: dict[str, np.ndarray], rows) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v[rows])) for k, v in enc.items()}


@torch.no_grad()
def filter_embeddings(model: ContentFilter, enc: dict[str, np.ndarray], batch: int = 4096) -> np.ndarray:
    """f_i of every encoded item, float32 (n, dim)."""
    model.eval()
    n = len(enc["cat"])
    out = np.zeros((n, model.spec.dim), np.float32)
    for s in range(0, n, batch):
        out[s : s + batch] = model(_take(enc, slice(s, s + batch))).numpy()
    return out


def behaviour_targets(pos_users: list[np.ndarray], user_ids: np.ndarray, user_emb: np.ndarray, min_positives: int = 1
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Behaviour embedding of warm items: the mean embedding of the positive users that have one.

    ``user_ids`` sorted; returns (targets (n, dim), keep mask: at least ``min_positives`` known users)."""
    dim = user_emb.shape[1] if user_emb.ndim == 2 else 0
    out = np.zeros((len(pos_users), dim), np.float32)
    keep = np.zeros(len(pos_users), bool)
    for r, u in enumerate(pos_users):
        rows = lookup_rows(user_ids, np.asarray(u, np.int64))
        rows = rows[rows >= 0]
        if len(rows) >= max(min_positives, 1):
            out[r] = user_emb[rows].mean(0)
            keep[r] = True
    return out, keep


@torch.no_grad()
def item_tower_targets(two_tower, items: pa.Table, batch: int = 4096) -> np.ndarray:
    """Behaviour embedding of warm items: the two-tower item tower WITH each item's trained ID
    embedding (serving drops it for new items; here it is what the filter learns to stand in for)."""
    two_tower.eval()
    enc = two_tower_items(items, two_tower.spec)
    n = len(enc["iid"])
    out = np.zeros((n, two_tower.spec.dim), np.float32)
    for s in range(0, n, batch):
        t = _take(enc, slice(s, s + batch))
        out[s : s + batch] = two_tower.item_forward(t, torch.ones(t["iid"].shape[0])).numpy()
    return out


def lookup_rows(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row of each id in ``sorted_ids``, -1 when absent."""
    ids = np.asarray(ids, np.int64)
    if len(sorted_ids) == 0:
        return np.full(len(ids), -1, np.int64)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == ids, pos, -1)


def train_filter(model: ContentFilter, enc: dict[str, np.ndarray], targets: np.ndarray, cfg, seed: int,
                 fit_normalizers: bool = True) -> dict[str, Any]:
    """Distil ``targets`` into the filter in place (deterministic on CPU given ``seed``).

    ``cfg``: a :class:`~dualrec.config.ColdLLMConfig` (epochs, batch_size, lr, cosine_weight,
    mse_weight, torch_threads). Returns per-epoch losses and the final mean cosine."""
    n = len(targets)
    if n == 0:
        log.warning("coldllm: no warm item with positives; filter left as is")
        return {"items": 0, "epoch_loss": [], "mean_cosine": None}
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(torch_threads(cfg.torch_threads))
    try:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        if fit_normalizers:
            model.dur_mean.fill_(float(enc["dur"].mean()))
            model.dur_std.fill_(max(float(enc["dur"].std()), 1e-3))
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        y_all = torch.from_numpy(np.ascontiguousarray(targets, np.float32))
        losses: list[float] = []
        model.train()
        for _ in range(cfg.epochs):
            order = rng.permutation(n)
            total, steps = 0.0, 0
            for s in range(0, n, cfg.batch_size):
                r = order[s : s + cfg.batch_size]
                out, y = model(_take(enc, r)), y_all[r]
                loss = cfg.mse_weight * ((out - y) ** 2).sum(1).mean()
                loss = loss + cfg.cosine_weight * (1.0 - nn.functional.cosine_similarity(out, y, dim=1, eps=1e-6)).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total, steps = total + float(loss.detach()), steps + 1
            losses.append(total / max(steps, 1))
        model.eval()
        f = filter_embeddings(model, enc)
        cos = float(np.mean(_cosine(f, targets)))
    finally:
        torch.set_num_threads(prev_threads)
    return {"items": int(n), "epoch_loss": [round(x, 5) for x in losses], "mean_cosine": round(cos, 5)}


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-12)


# ---------------------------------------------------------------------- the default simulator
def interaction_probability(s: np.ndarray, tasks: list[str] | tuple[str, ...]) -> np.ndarray:
    """P(at least one of ``tasks``) = 1 - prod(1 - s_m), from ranker outputs ``s`` [n, M] in TASKS order."""
    cols = [TASKS.index(t) for t in tasks]
    return 1.0 - np.prod(1.0 - np.clip(s[:, cols].astype(np.float64), 0.0, 1.0), axis=1)


def ranker_probabilities(model, side: SideArrays, item_ids: np.ndarray, user_ids: np.ndarray, tasks, batch_rows: int = 8192
                         ) -> np.ndarray:
    """The default simulator's core: the ranker's P(interaction) of (item, user) pairs, vectorised.

    Pairs whose item has no feature row get 0 (they cannot be scored); the item ID is masked as for
    every new item at scoring time."""
    item_ids, user_ids = np.asarray(item_ids, np.int64), np.asarray(user_ids, np.int64)
    out = np.zeros(len(item_ids), np.float64)
    i_rows = side.item_rows(item_ids)
    ok = i_rows >= 0
    if ok.any():
        u = user_ids[ok]
        cat, dense = featurize_pairs(side, u, side.user_rows(u), i_rows[ok], model.spec, mask_item_id=True)
        out[ok] = interaction_probability(predict(model, cat, dense, batch_rows), tasks)
    return out


# ---------------------------------------------------------------------- the embedding update
def lift_scores(users: list[np.ndarray], probs: list[np.ndarray]) -> list[np.ndarray]:
    """p(u, i) / mean over the day's filtered items of p(u, .): how much more this item suits the user
    than the items the user was filtered for on average (a user with p = 0 everywhere gets 0).

    Why: an "any explicit feedback" probability is dominated by how active a user is, so the top
    users by probability are the same active users for every item; the lift ranks by the item."""
    flat_u = np.concatenate([np.asarray(u, np.int64) for u in users]) if users else np.zeros(0, np.int64)
    flat_p = np.concatenate([np.asarray(p, np.float64) for p in probs]) if probs else np.zeros(0)
    uniq, inv = np.unique(flat_u, return_inverse=True)
    base = np.bincount(inv, weights=flat_p, minlength=len(uniq)) / np.maximum(np.bincount(inv, minlength=len(uniq)), 1)
    lift = np.where(base[inv] > 0, flat_p / np.maximum(base[inv], 1e-300), 0.0)
    return np.split(lift, np.cumsum([len(u) for u in users])[:-1]) if users else []


def updated_embeddings(filter_emb: np.ndarray, users: list[np.ndarray], probs: list[np.ndarray], user_ids: np.ndarray,
                       user_emb: np.ndarray, n_positive: int, min_probability: float, mix: float,
                       rank_by: list[np.ndarray] | None = None, contrast: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 4 with frozen user embeddings: e = (1 - mix) f + mix * m, m = sum(p e_u) / sum(p) over each item's
    ``n_positive`` most probable users with p >= ``min_probability`` and p > 0 (ties: smaller user id),
    rescaled to |f| (user and item vectors of a two-tower model differ in norm; only the direction
    of m should move f, and the inner-product search then sees the filter's scale). ``rank_by``
    (e.g. :func:`lift_scores`) picks the ``n_positive`` users instead of the probabilities; the
    weights stay the probabilities. ``contrast``: m is the simulated users' mean minus the mean of
    all the item's filtered users (one BPR-like step: positives against the filtered negatives),
    which removes the direction every user shares (without it the mean of any 20 users points
    at the generally popular users).

    ``user_ids`` sorted, ``user_emb`` their rows. Returns (embeddings, simulated positives per item);
    an item with no simulated positive keeps its filter embedding."""
    out = np.array(filter_emb, np.float32, copy=True)
    n_sim = np.zeros(len(users), np.int64)
    if mix <= 0:
        return out, n_sim
    for r, (u, p) in enumerate(zip(users, probs)):
        u, p = np.asarray(u, np.int64), np.asarray(p, np.float64)
        if len(u) != len(p):
            raise ValueError(f"simulator returned {len(p)} probabilities for {len(u)} users (item row {r})")
        if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
            raise ValueError(f"simulator probabilities must be in [0, 1] (item row {r}: {p[:5].tolist()} ...)")
        rows = lookup_rows(user_ids, u)
        sel = (rows >= 0) & (p > 0) & (p >= min_probability)
        if not sel.any():
            continue
        idx = np.flatnonzero(sel)
        key = p if rank_by is None else np.asarray(rank_by[r], np.float64)
        idx = idx[np.lexsort((u[idx], -key[idx]))][:n_positive]
        w = p[idx]
        mean = (w[:, None] * user_emb[rows[idx]].astype(np.float64)).sum(0) / w.sum()
        if contrast:
            mean = mean - user_emb[rows[rows >= 0]].astype(np.float64).mean(0)
        f = filter_emb[r].astype(np.float64)
        nm, nf = np.linalg.norm(mean), np.linalg.norm(f)
        if nm > 0 and nf > 0:
            mean = mean * (nf / nm)  # users and items differ in scale: mix directions, keep the filter's norm
        out[r] = ((1.0 - mix) * f + mix * mean).astype(np.float32)
        n_sim[r] = len(idx)
    return out, n_sim


# ---------------------------------------------------------------------- persistence
def save_filter(model: ContentFilter, lake, rel: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``model.pt`` + ``manifest.json`` into ``rel`` (a ``lake.publish_dir`` staging dir)."""
    return save_model(model, asdict(model.spec), lake, rel, MODEL_NAME, VERSION, WEIGHTS_FILE, manifest)


def load_filter(lake, day: dt.date | str) -> ContentFilter:
    """The filter of ``_models/coldllm/dt=day``; a missing/corrupt artefact names its file and stage."""
    return load_model(lake, MODEL_NAME, day, VERSION, WEIGHTS_FILE,
                      lambda spec, blob: load_state(ContentFilter.from_spec(spec), blob))


__all__ = [
    "ContentFilter", "FilterSpec", "behaviour_targets", "encode_items", "filter_embeddings",
    "interaction_probability", "item_tower_targets", "lift_scores", "load_filter", "lookup_rows", "ranker_probabilities", "save_filter", "train_filter",
    "updated_embeddings",
]
