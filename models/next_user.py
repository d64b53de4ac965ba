"""Next-user generative retrieval (papers/next-user-retrieval.txt): PyTorch + NumPy, no Spark.

For an item, a transformer reads

- **prefix prompt tokens** from item features: content embedding, creator, category, duration
  and the item ID (the ID token is a learned "no history" token while the item has no positive
  user yet: a new item's ID carries nothing);
- the item's **positive users in chronological order** (at most ``max_seq``), one token per
  user: a hashed UID embedding plus a projection of the user's two-tower embedding as of D (our
  choice: on a small world a UID table alone learns little; the two-tower vector is the user's
  identity in the space we retrieve from);
- a learnable **[CLS]** token at the end.

Encoder attention is causal over the user tokens with the prefix unmasked (prefix tokens see
each other; user token j sees the prefix and users 1..j; [CLS] sees everything). A decoder with
learnable queries gives u^_1..u^_{n+1} (u^_j sees the prefix and users < j) and u^_next (sees
everything), Eq. 2-3. ``u^_next`` is mapped into the two-tower user space, so serving is a dot
product search in the FAISS index of available users.

Losses (Eq. 4-7, each switchable by a weight of 0): in-batch contrastive between u^_next and the
two-tower embedding of the true next user (temperature tau); binary cross-entropy of u^_next .
e_u with the true next user as positive and users exposed to the item without positive feedback
as negatives; auxiliary reconstruction ||sg(token_j) - aux(u^_j)||^2 of the user tokens.

Training samples: for a warm item with positives u_1..u_n, a random cut j in [0, n-1] gives the
input u_1..u_j (the last ``max_seq`` of them) and the target u_{j+1}; j = 0 is the "no positive
yet" case that serving meets for most new items.

Ablation switches (paper Table 1): ``prefix_prompts`` (off: the five prompt tokens are replaced
by learned constants, "mask prefix prompt"), ``cls_token`` (off: no [CLS], u^_next reads the
encoder outputs only), ``causal`` (off: full attention everywhere), ``max_seq``.

Baseline: :func:`sum_pool` is the paper's "traditional lookalike" (sum of the positive users'
embeddings, searched the same way).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from models.torch_io import load_model, load_state, optimizer_step, save_model, sparse_dense_optimizers
from models.two_tower import hash_ids

log = logging.getLogger(__name__)

VERSION = 1
MODEL_NAME = "next_user"
WEIGHTS_FILE = "model.pt"
N_PREFIX = 5  # content, creator, category, duration, item id
_SALT_ITEM, _SALT_CREATOR, _SALT_CAT, _SALT_USER = 101, 103, 107, 109


@dataclass
class NextUserSpec:
    """Network shape and switches (stored in the manifest; warm start needs an equal spec)."""

    dim: int
    user_dim: int
    content_dim: int
    heads: int = 2
    layers: int = 1
    max_seq: int = 50
    id_buckets: int = 1 << 16
    cat_buckets: int = 256
    prefix_prompts: bool = True
    cls_token: bool = True
    causal: bool = True

    @classmethod
    def from_cfg(cls, cfg, user_dim: int, content_dim: int, **over: Any) -> "NextUserSpec":
        """From a :class:`~dualrec.config.NextUserConfig` (``over`` for ablations)."""
        kw = dict(dim=cfg.dim, user_dim=int(user_dim), content_dim=int(content_dim), heads=cfg.heads, layers=cfg.layers,
                  max_seq=cfg.max_seq, id_buckets=cfg.id_buckets, cat_buckets=cfg.cat_buckets,
                  prefix_prompts=cfg.prefix_prompts, cls_token=cfg.cls_token, causal=cfg.causal)
        kw.update(over)
        return cls(**kw)


# ---------------------------------------------------------------------- encoding
def encode_items(item_ids, creator_ids, categories, duration_ms, content: np.ndarray, spec: NextUserSpec) -> dict[str, np.ndarray]:
    """Item features -> prompt inputs (hashed ids, log duration, content matrix)."""
    content = np.ascontiguousarray(content, np.float32)
    if content.ndim != 2 or content.shape[1] != spec.content_dim:
        raise ValueError(f"content embeddings of shape {content.shape}, expected (n, {spec.content_dim})")
    return {
        "iid": hash_ids(np.asarray(item_ids, np.int64), spec.id_buckets, _SALT_ITEM),
        "creator": hash_ids(np.asarray(creator_ids, np.int64), spec.id_buckets, _SALT_CREATOR),
        "cat": hash_ids(np.asarray(categories, np.int64), spec.cat_buckets, _SALT_CAT),
        "dur": np.log1p(np.maximum(np.asarray(duration_ms, np.float64), 0.0)).astype(np.float32)[:, None],
        "content": content,
    }


@dataclass
class UserTable:
    """Two-tower embeddings of the users sequences and targets refer to (sorted ids)."""

    ids: np.ndarray
    emb: np.ndarray

    @classmethod
    def build(cls, ids, emb) -> "UserTable":
        ids = np.asarray(ids, np.int64)
        order = np.argsort(ids, kind="stable")
        return cls(ids[order], np.ascontiguousarray(np.asarray(emb, np.float32)[order]))

    def rows(self, user_ids) -> np.ndarray:
        """Row of each user id, -1 when unknown."""
        u = np.asarray(user_ids, np.int64)
        pos = np.searchsorted(self.ids, u)
        pos = np.minimum(pos, max(len(self.ids) - 1, 0))
        return np.where((len(self.ids) > 0) & (self.ids[pos] == u), pos, -1) if len(self.ids) else np.full(len(u), -1)


def pack_sequences(seqs: list[np.ndarray], max_seq: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded (n, M) matrix of the last ``max_seq`` entries of each sequence and the lengths (M >= 1)."""
    lens = np.array([min(len(s), max_seq) for s in seqs], np.int64)
    m = max(int(lens.max()) if len(lens) else 0, 1)
    out = np.zeros((len(seqs), m), np.int64)
    for r, s in enumerate(seqs):
        if lens[r]:
            out[r, : lens[r]] = np.asarray(s, np.int64)[-lens[r]:]
    return out, lens


# ---------------------------------------------------------------------- the network
def _emb(n: int, d: int, sparse: bool = True) -> nn.Embedding:
    e = nn.Embedding(n, d, sparse=sparse)  # sparse: an Adam step touches only the rows of the batch
    nn.init.normal_(e.weight, std=0.02)
    return e


class NextUserModel(nn.Module):
    """Prefix prompts + causal user sequence + [CLS] -> encoder -> query decoder -> next-user embedding."""

    def __init__(self, spec: NextUserSpec):
        super().__init__()
        self.spec = spec
        d = spec.dim
        self.content = nn.Linear(spec.content_dim, d)
        self.creator = _emb(spec.id_buckets, d)
        self.category = _emb(spec.cat_buckets, d)
        self.duration = nn.Linear(1, d)
        self.item_id = _emb(spec.id_buckets, d)
        self.no_id = nn.Parameter(torch.zeros(d))
        self.masked_prompts = nn.Parameter(torch.randn(N_PREFIX, d) * 0.02)
        self.uid = _emb(spec.id_buckets, d)
        self.uproj = nn.Linear(spec.user_dim, d)
        self.pos = _emb(spec.max_seq + 1, d, sparse=False)
        self.kind = _emb(3, d, sparse=False)  # 0 prefix, 1 user, 2 [CLS]
        self.cls = nn.Parameter(torch.randn(d) * 0.02)
        enc = nn.TransformerEncoderLayer(d, spec.heads, 2 * d, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(enc, spec.layers, enable_nested_tensor=False)
        dec = nn.TransformerDecoderLayer(d, spec.heads, 2 * d, dropout=0.0, batch_first=True)
        self.decoder = nn.TransformerDecoder(dec, spec.layers)
        self.queries = nn.Parameter(torch.randn(spec.max_seq + 2, d) * 0.02)
        self.out = nn.Linear(d, spec.user_dim)
        self.aux = nn.Linear(d, d)
        self.register_buffer("dur_mean", torch.zeros(1))
        self.register_buffer("dur_std", torch.ones(1))

    @classmethod
    def from_spec(cls, spec: NextUserSpec | dict[str, Any]) -> "NextUserModel":
        return cls(spec if isinstance(spec, NextUserSpec) else NextUserSpec(**spec))

    def fit_normalizers(self, dur: np.ndarray) -> None:
        if len(dur):
            self.dur_mean.fill_(float(dur.mean()))
            self.dur_std.fill_(max(float(dur.std()), 1e-3))

    # tokens -------------------------------------------------------------
    def user_tokens(self, uid: torch.Tensor, uemb: torch.Tensor) -> torch.Tensor:
        """UID token of users (hashed id embedding + projected two-tower embedding)."""
        return self.uid(uid) + self.uproj(uemb)

    def prefix(self, items: dict[str, torch.Tensor], has_id: torch.Tensor) -> torch.Tensor:
        b = items["iid"].shape[0]
        if not self.spec.prefix_prompts:
            return self.masked_prompts.unsqueeze(0).expand(b, -1, -1)
        iid = torch.where(has_id[:, None] > 0, self.item_id(items["iid"]), self.no_id.expand(b, -1))
        toks = [
            self.content(items["content"]),
            self.creator(items["creator"]),
            self.category(items["cat"]),
            self.duration((items["dur"] - self.dur_mean) / self.dur_std),
            iid,
        ]
        return torch.stack(toks, 1)

    # masks (True = may not attend) ------------------------------------
    def _masks(self, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p, c = N_PREFIX, int(self.spec.cls_token)
        t = p + m + c
        enc = torch.zeros(t, t, dtype=torch.bool)
        mem = torch.zeros(m + 2, t, dtype=torch.bool)
        tgt = torch.zeros(m + 2, m + 2, dtype=torch.bool)
        if self.spec.causal:
            enc[:p, p:] = True  # the prefix sees only the prefix (unmasked among itself)
            seq = torch.ones(m, m, dtype=torch.bool).triu(1)  # user j sees users <= j
            enc[p : p + m, p : p + m] = seq
            if c:
                enc[p : p + m, p + m :] = True
            # query q (for u^_{q+1}) sees the prefix and users < q+1, i.e. positions < p+q
            for q in range(m + 1):
                mem[q, p + q :] = True
            tgt = torch.ones(m + 2, m + 2, dtype=torch.bool).triu(1)
        return enc, mem, tgt

    def forward(self, items: dict[str, torch.Tensor], has_id: torch.Tensor, seq_uid: torch.Tensor,
                seq_emb: torch.Tensor, seq_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (u^_next in the user space (b, user_dim), u^_1..u^_{m+1} reconstructions (b, m+1, d),
        user tokens (b, m, d))."""
        b, m = seq_uid.shape
        d = self.spec.dim
        pre = self.prefix(items, has_id) + self.kind.weight[0]
        toks = self.user_tokens(seq_uid, seq_emb)
        pos = torch.arange(m)
        seq = toks + self.pos(pos).unsqueeze(0) + self.kind.weight[1]
        parts = [pre, seq]
        if self.spec.cls_token:
            parts.append((self.cls + self.kind.weight[2]).expand(b, 1, d))
        x = torch.cat(parts, 1)
        pad = torch.zeros(b, x.shape[1], dtype=torch.bool)
        pad[:, N_PREFIX : N_PREFIX + m] = pos.unsqueeze(0) >= seq_len.unsqueeze(1)
        enc_mask, mem_mask, tgt_mask = self._masks(m)
        mem = self.encoder(x, mask=enc_mask, src_key_padding_mask=pad)
        q = torch.cat([self.queries[: m + 1], self.queries[-1:]], 0).unsqueeze(0).expand(b, -1, -1)
        y = self.decoder(q, mem, tgt_mask=tgt_mask, memory_mask=mem_mask, memory_key_padding_mask=pad)
        return self.out(y[:, -1]), self.aux(y[:, : m + 1]), toks


# ---------------------------------------------------------------------- training data
@dataclass
class SequenceData:
    """Warm items with their chronological positive users and exposed-but-negative users.

    Sequence of item row r: ``seq_users[seq_off[r]:seq_off[r+1]]`` (user ids, chronological);
    negatives ``neg_users[neg_off[r]:neg_off[r+1]]``. ``users`` holds every embedding used.
    """

    items: dict[str, np.ndarray]
    seq_users: np.ndarray
    seq_off: np.ndarray
    neg_users: np.ndarray
    neg_off: np.ndarray
    users: UserTable

    @property
    def n_items(self) -> int:
        return len(self.seq_off) - 1


def build_sequence_data(items: dict[str, np.ndarray], seqs: list[np.ndarray], negs: list[np.ndarray],
                        users: UserTable, min_positives: int = 1) -> SequenceData:
    """Keep items with >= ``min_positives`` positive users that have an embedding (others dropped)."""
    keep, sq, ng = [], [], []
    for r, (s, n) in enumerate(zip(seqs, negs)):
        s = np.asarray(s, np.int64)
        s = s[users.rows(s) >= 0]
        if len(s) < max(min_positives, 1):
            continue
        n = np.asarray(n, np.int64)
        keep.append(r)
        sq.append(s)
        ng.append(n[users.rows(n) >= 0])
    keep_a = np.asarray(keep, np.int64)
    off = lambda xs: np.concatenate([[0], np.cumsum([len(x) for x in xs])]).astype(np.int64)  # noqa: E731
    cat = lambda xs: np.concatenate(xs).astype(np.int64) if xs else np.zeros(0, np.int64)  # noqa: E731
    return SequenceData({k: v[keep_a] for k, v in items.items()}, cat(sq), off(sq), cat(ng), off(ng), users)


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def _batch_inputs(spec: NextUserSpec, users: UserTable, items: dict[str, np.ndarray], seqs: list[np.ndarray]):
    packed, lens = pack_sequences(seqs, spec.max_seq)
    rows = users.rows(packed.reshape(-1)).reshape(packed.shape)
    emb = users.emb[np.maximum(rows, 0)] if len(users.ids) else np.zeros((*packed.shape, spec.user_dim), np.float32)
    emb = np.where((rows >= 0)[..., None], emb, 0.0).astype(np.float32)
    uid = hash_ids(packed.reshape(-1), spec.id_buckets, _SALT_USER).reshape(packed.shape)
    tensors = {k: _t(v) for k, v in items.items()}
    return tensors, _t((lens > 0).astype(np.float32)), _t(uid), _t(emb), _t(lens)


def batch_losses(model: NextUserModel, data: SequenceData, r: np.ndarray, cut: np.ndarray, rng: np.random.Generator,
                 cfg) -> dict[str, torch.Tensor]:
    """The three losses of Eq. 5-7 for items ``r`` cut after ``cut`` positives (target = the next one).

    Losses whose weight in ``cfg`` is 0 are not computed (they are absent from the result)."""
    spec, users = model.spec, data.users
    nneg = np.diff(data.neg_off)
    kn = int(cfg.max_exposed_negatives)
    out: dict[str, torch.Tensor] = {}
    seqs = [data.seq_users[data.seq_off[i] : data.seq_off[i] + j] for i, j in zip(r, cut)]
    target = data.seq_users[data.seq_off[r] + cut]
    items, has_id, uid, emb, sl = _batch_inputs(spec, users, {k: v[r] for k, v in data.items.items()}, seqs)
    u_next, u_hat, toks = model(items, has_id, uid, emb, sl)
    t_emb = _t(users.emb[users.rows(target)])
    if cfg.loss_contrastive:
        # Eq. 5: in-batch negatives are the other samples' true next users
        logits = u_next @ t_emb.T / cfg.temperature
        same = _t(target[:, None] == target[None, :]) & ~torch.eye(len(r), dtype=torch.bool)
        out["contrastive"] = nn.functional.cross_entropy(logits.masked_fill(same, -1e9), torch.arange(len(r)))
    if cfg.loss_ce:
        # Eq. 6: the true next user vs users exposed to the item without feedback
        pos_logit = (u_next * t_emb).sum(1)
        terms = [nn.functional.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit), reduction="sum")]
        n_terms = len(r)
        if kn and nneg[r].any():
            pick = (rng.random((len(r), kn)) * np.maximum(nneg[r], 1)[:, None]).astype(np.int64)
            ok = (nneg[r] > 0)[:, None] & np.ones((1, kn), bool)
            neg = data.neg_users[np.minimum(data.neg_off[r][:, None] + pick, max(len(data.neg_users) - 1, 0))]
            ne = _t(users.emb[np.maximum(users.rows(neg.reshape(-1)), 0)].reshape(len(r), kn, -1))
            nl = torch.einsum("bd,bkd->bk", u_next, ne)[_t(ok)]
            terms.append(nn.functional.binary_cross_entropy_with_logits(nl, torch.zeros_like(nl), reduction="sum"))
            n_terms += int(ok.sum())
        out["ce"] = sum(terms) / n_terms
    if cfg.loss_aux:
        # Eq. 7: u^_j reconstructs the j-th user token (j = len: the true next user), targets stop-gradient
        t_tok = model.user_tokens(_t(hash_ids(target, spec.id_buckets, _SALT_USER)), t_emb)
        m = toks.shape[1]
        full = torch.cat([toks, torch.zeros_like(toks[:, :1])], 1)  # (b, m+1, d)
        full = full.index_put((torch.arange(len(r)), torch.minimum(sl, torch.tensor(m))), t_tok)
        valid = torch.arange(m + 1).unsqueeze(0) <= sl.unsqueeze(1)
        err = ((u_hat - full.detach()) ** 2).sum(-1)  # sg(): no gradient into the targets
        out["aux"] = err[valid].mean()
    return out


def train_next_user(model: NextUserModel, data: SequenceData, cfg, seed: int, fit_normalizers: bool = True) -> dict[str, Any]:
    """Train in place (deterministic on CPU given ``seed``); returns per-epoch mean losses.

    ``cfg``: a :class:`~dualrec.config.NextUserConfig` (epochs, batch_size, lr, temperature,
    samples_per_item, max_exposed_negatives, loss weights, torch_threads).
    """
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, int(cfg.torch_threads)))
    rng = np.random.default_rng(seed)
    if data.n_items == 0:
        log.warning("next_user: no warm item with positives; model left as is")
        return {"items": 0, "samples": 0, "epoch_loss": []}
    if fit_normalizers:
        model.fit_normalizers(data.items["dur"][:, 0])
    opts = sparse_dense_optimizers(model, cfg.lr)
    lens = np.diff(data.seq_off)
    w_con, w_ce, w_aux = float(cfg.loss_contrastive), float(cfg.loss_ce), float(cfg.loss_aux)
    losses: list[float] = []
    model.train()
    for epoch in range(cfg.epochs):
        rows = np.repeat(np.arange(data.n_items), cfg.samples_per_item)
        rows = rows[rng.permutation(len(rows))]
        total, steps = 0.0, 0
        for s in range(0, len(rows), cfg.batch_size):
            r = rows[s : s + cfg.batch_size]
            cut = (rng.random(len(r)) * lens[r]).astype(np.int64)  # j in [0, n-1]
            parts = batch_losses(model, data, r, cut, rng, cfg)
            total += optimizer_step(opts, sum(w * parts[k] for k, w in (("contrastive", w_con), ("ce", w_ce), ("aux", w_aux)) if w))
            steps += 1
        losses.append(total / max(steps, 1))
        log.info("next_user epoch %d: loss %.4f (%d samples)", epoch, losses[-1], len(rows))
    model.eval()
    return {"items": int(data.n_items), "positives": int(len(data.seq_users)), "samples_per_epoch": int(data.n_items * cfg.samples_per_item),
            "epoch_loss": [round(x, 5) for x in losses]}


# ---------------------------------------------------------------------- serving
@torch.no_grad()
def generate(model: NextUserModel, items: dict[str, np.ndarray], seqs: list[np.ndarray], users: UserTable,
             batch: int = 1024) -> np.ndarray:
    """Next-user embeddings (n, user_dim) of items with their positive users so far (may be empty)."""
    model.eval()
    n = len(seqs)
    if any(len(v) != n for v in items.values()):
        raise ValueError(f"generate: {n} sequences for {len(next(iter(items.values())))} items")
    out = np.zeros((n, model.spec.user_dim), np.float32)
    for s in range(0, n, batch):
        sl = slice(s, s + batch)
        it, has_id, uid, emb, ln = _batch_inputs(model.spec, users, {k: v[sl] for k, v in items.items()}, seqs[sl])
        out[sl] = model(it, has_id, uid, emb, ln)[0].numpy()
    return out


def sum_pool(seqs: list[np.ndarray], users: UserTable, max_seq: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The paper's "traditional lookalike": sum of the positive users' embeddings (zero rows and
    ``has`` False for items without a known positive user)."""
    out = np.zeros((len(seqs), users.emb.shape[1]), np.float32)
    has = np.zeros(len(seqs), bool)
    for r, s in enumerate(seqs):
        s = np.asarray(s, np.int64)[-max_seq:] if max_seq else np.asarray(s, np.int64)
        rows = users.rows(s)
        rows = rows[rows >= 0]
        if len(rows):
            out[r] = users.emb[rows].sum(0)
            has[r] = True
    return out, has


# ---------------------------------------------------------------------- persistence
def save_next_user(model: NextUserModel, lake, rel: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``model.pt`` + ``manifest.json`` into ``rel`` (a ``lake.publish_dir`` staging dir)."""
    return save_model(model, asdict(model.spec), lake, rel, MODEL_NAME, VERSION, WEIGHTS_FILE, manifest)


def load_next_user(lake, day: dt.date | str) -> NextUserModel:
    """The model of ``_models/next_user/dt=day``; a missing/corrupt artefact names its file and stage."""
    return load_model(lake, MODEL_NAME, day, VERSION, WEIGHTS_FILE,
                      lambda spec, blob: load_state(NextUserModel.from_spec(spec), blob))


__all__ = [
    "NextUserModel", "NextUserSpec", "SequenceData", "UserTable", "build_sequence_data", "encode_items", "generate",
    "load_next_user", "pack_sequences", "save_next_user", "sum_pool", "train_next_user",
]
