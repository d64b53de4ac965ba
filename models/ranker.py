"""Multi-task ranker (paper 3.3.1): s^m_ui for the M = 6 feedbacks, PyTorch on CPU, no Spark.

Shared-bottom network: hashed ID embeddings (user, item, creator), small categoricals, dense
user / item / cross features -> shared MLP -> one small tower per task (sigmoid outputs).

The paper's two training changes are switches of :class:`RankerSpec`:

- ``sample_augmentation`` (SA): every training row also appears with the item ID masked (bucket
  0). New items have an unknown ID at scoring time, which is exactly the masked ID, so with SA
  the model has learnt to score them from side features; without SA the masked bucket is never
  trained (it keeps its near-zero initialisation).
- ``extra_features`` (EF): the item's interacting users so far (exposure count, positive rates,
  mean profile of its positive users and its match with the user) and similar-items statistics
  (creator's earlier items' rates, sim-weighted rates of S^I(i)). Without EF those columns are
  not fed to the network.

``promo`` ("off", "promo", "m", "t"): PROMO's pinnacle-feedback prompts (:mod:`models.promo`).
The network then also takes, per row, the item's pinnacle and negative users (or S^I
pseudo-pinnacle users) as of the row's cutoff (:class:`models.promo.PinnacleLists`): their
user-ID embeddings pass through the prompt network, are mean-pooled and go into the bottom
with their dot products with the row's user embedding; the two prompt-enhanced losses join BCE.

Tasks without any positive in a training set are skipped (no loss term, reported); a task never
trained scores 0. Artefact: ``model.pt`` (state_dict, ``torch.load(weights_only=True)``) +
``manifest.json`` (spec, training window, metrics).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from dualrec.hashing import hash_bucket as hash_ids
from models import torch_threads
from models.promo import PinnacleLists, PromptNet, masked_mean, pinnacle_loss, popularity_loss
from models.torch_io import load_model, load_state, save_model, state_to_bytes
from schemas.feedback import RANK_TASKS

log = logging.getLogger(__name__)

VERSION = 1
MODEL_NAME = "ranker"
WEIGHTS_FILE = "model.pt"
MANIFEST_FILE = "manifest.json"
TASKS: tuple[str, ...] = RANK_TASKS

ID_COLS: tuple[str, ...] = ("user_id", "item_id", "creator_id")
SMALL_CAT_COLS: tuple[str, ...] = ("category", "age_bucket", "gender", "region", "device")
ITEM_ID_POS = 1  # position of item_id in ID_COLS (the column SA masks)
CAT_DIM = 8


def label_columns() -> list[str]:
    return [f"y_{t}" for t in TASKS]


def base_dense_columns(profile_dim: int) -> list[str]:
    """User and item side features every variant gets (point-in-time, built by dualrec.ranking)."""
    return (
        ["u_log_imp", "u_log_follower", "u_has_prof", *[f"u_rate_{t}" for t in TASKS]]
        + [f"u_prof_{k}" for k in range(profile_dim)]
        + ["i_log_duration"]
        + [f"i_proj_{k}" for k in range(profile_dim)]
    )


def extra_dense_columns(profile_dim: int) -> list[str]:
    """EF: the item's interacting users so far and similar-items statistics."""
    return (
        ["e_log_imp", "e_log_pos", *[f"e_rate_{t}" for t in TASKS]]
        + [f"e_pos_prof_{k}" for k in range(profile_dim)]
        + ["c_log_imp", *[f"c_rate_{t}" for t in TASKS]]
        + ["s_has", *[f"s_rate_{t}" for t in TASKS]]
    )


def input_columns(profile_dim: int) -> list[str]:
    """Every column a feature table must have (EF columns too, so the same table serves all variants)."""
    return [*ID_COLS, *SMALL_CAT_COLS, *base_dense_columns(profile_dim), *extra_dense_columns(profile_dim)]


@dataclass
class RankerSpec:
    """Everything needed to rebuild the network and its inputs (stored in the manifest)."""

    profile_dim: int = 16
    id_buckets: int = 1 << 17
    cat_buckets: int = 64
    emb_dim: int = 16
    hidden: int = 128
    sample_augmentation: bool = True
    extra_features: bool = True
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    promo: str = "off"  # off | promo | m | t
    promo_k: int = 8
    promo_negatives: int = 8
    promo_lambda_pinnacle: float = 0.0
    promo_lambda_popularity: float = 0.0
    promo_cold_positives: int = 5

    @property
    def n_prompt(self) -> int:
        """Bottom inputs PROMO adds: pooled pinnacle and negative prompts, their dots with the user, 2 flags."""
        return 0 if self.promo == "off" else 2 * self.emb_dim + 4

    @property
    def dense_columns(self) -> list[str]:
        cols = base_dense_columns(self.profile_dim)
        return cols + extra_dense_columns(self.profile_dim) if self.extra_features else cols

    @property
    def n_dense(self) -> int:
        # + cross features computed in featurize
        return len(self.dense_columns) + (2 if self.extra_features else 1)

    @classmethod
    def from_cfg(cls, rank_cfg, **over) -> "RankerSpec":
        kw = dict(
            profile_dim=rank_cfg.profile_dim, id_buckets=rank_cfg.id_buckets, cat_buckets=rank_cfg.cat_buckets,
            emb_dim=rank_cfg.emb_dim, hidden=rank_cfg.hidden, sample_augmentation=rank_cfg.sample_augmentation,
            extra_features=rank_cfg.extra_features,
        )
        pc_ = getattr(rank_cfg, "promo", None)
        if pc_ is not None and pc_.enabled:
            kw.update(promo=pc_.variant, promo_k=pc_.k, promo_negatives=pc_.negatives,
                      promo_lambda_pinnacle=pc_.lambda_pinnacle, promo_lambda_popularity=pc_.lambda_popularity,
                      promo_cold_positives=pc_.cold_positives)
        kw.update(over)
        return cls(**kw)


# ---------------------------------------------------------------------- features
def hash_bucket(x: np.ndarray, buckets: int, salt: int) -> np.ndarray:
    """SplitMix64 of id+salt into [1, buckets): bucket 0 is reserved for "masked / unknown"."""
    return hash_ids(x, buckets - 1, salt) + 1


def _col(df: pd.DataFrame | pa.Table | pa.RecordBatch, name: str, dtype) -> np.ndarray:
    """One column as a NumPy array of ``dtype``, nulls as 0 (Arrow input is read without pandas)."""
    if isinstance(df, (pa.Table, pa.RecordBatch)):
        if name not in df.schema.names:
            raise ValueError(f"ranker input is missing column {name!r}")
        col = df.column(name)
        if col.null_count:
            col = pc.fill_null(col, 0)
        return np.asarray(col.to_numpy(zero_copy_only=False)).astype(dtype, copy=False)
    if name not in df.columns:
        raise ValueError(f"ranker input is missing column {name!r}")
    s = df[name]
    if s.hasnans:
        s = s.fillna(0)
    return s.to_numpy().astype(dtype, copy=False)


def _dense_block(df, names: list[str], n: int, out: np.ndarray | None = None, rows: int = 2048) -> np.ndarray:
    """[n, len(names)] float32 from columns, written in blocks of ``rows`` rows that stay in cache
    (a column-at-a-time strided write over the whole array is ~3x slower)."""
    out = np.empty((n, len(names)), np.float32) if out is None else out
    cols = [_col(df, c, np.float32) for c in names]
    for r in range(0, n, rows):
        blk = out[r : r + rows]
        for j, c in enumerate(cols):
            blk[:, j] = c[r : r + rows]
    return out


def featurize(data: pd.DataFrame | pa.Table | pa.RecordBatch, spec: RankerSpec, mask_item_id: bool | np.ndarray = False
              ) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows -> (cat int64 [n, 3 + 5], dense float32 [n, n_dense]); nulls and NaN/inf become 0.

    ``mask_item_id``: True (or a per-row bool array) puts the item ID in the masked bucket 0 -
    what scoring does for new items. Arrow input (a scoring batch) is read directly: no pandas
    conversion, one preallocated dense array (this function bounds the scoring throughput).
    """
    df = data
    n = data.num_rows if isinstance(data, (pa.Table, pa.RecordBatch)) else len(data)
    ncat = len(ID_COLS) + len(SMALL_CAT_COLS)
    cat = np.empty((n, ncat), np.int64)
    for k, c in enumerate(ID_COLS):
        cat[:, k] = hash_bucket(_col(df, c, np.int64), spec.id_buckets, 17 + k)
    for k, c in enumerate(SMALL_CAT_COLS):
        cat[:, len(ID_COLS) + k] = (_col(df, c, np.int64) % (spec.cat_buckets - 1)) + 1 + k * spec.cat_buckets
    mask = np.broadcast_to(np.asarray(mask_item_id, bool), (n,))
    cat[mask, ITEM_ID_POS] = 0
    cols = spec.dense_columns
    dense = np.empty((n, spec.n_dense), np.float32)
    _dense_block(df, cols, n, out=dense[:, : len(cols)])
    _profile_dots(dense, spec)
    if not np.isfinite(dense).all():
        np.nan_to_num(dense, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return cat, dense


USER_CAT_COLS: tuple[str, ...] = ("age_bucket", "gender", "region", "device")
ITEM_CAT_COLS: tuple[str, ...] = ("category",)


def _is_user_col(name: str) -> bool:
    return name.startswith("u_")


def user_dense_columns(spec: RankerSpec) -> list[str]:
    """The dense columns that depend on the user only (as of the feature day)."""
    return [c for c in spec.dense_columns if _is_user_col(c)]


def item_dense_columns(spec: RankerSpec) -> list[str]:
    """The dense columns that depend on the item only (content, so-far history, creator, similar items)."""
    return [c for c in spec.dense_columns if not _is_user_col(c)]


def user_table_columns(profile_dim: int) -> list[str]:
    """Columns of a per-user feature table (:func:`side_arrays`), ``user_id`` first."""
    spec = RankerSpec(profile_dim=profile_dim)
    return ["user_id", *USER_CAT_COLS, *user_dense_columns(spec)]


def item_table_columns(profile_dim: int) -> list[str]:
    """Columns of a per-item feature table (:func:`side_arrays`), ``item_id`` first."""
    spec = RankerSpec(profile_dim=profile_dim)
    return ["item_id", "creator_id", *ITEM_CAT_COLS, *item_dense_columns(spec)]


@dataclass
class SideArrays:
    """Per-user and per-item halves of the model input, sorted by ID, for pair lookups.

    Why: a (user, item) pair's features are a user part and an item part (plus two cross
    features), so scoring a day's candidates needs users x features and items x features, not
    pairs x ~100 columns built by joins. Row ``len(user_ids)`` of the user arrays is the
    "unknown user" row (all zeros: what a left join with nulls gives :func:`featurize`).
    """

    user_ids: np.ndarray  # int64, sorted
    user_cat: np.ndarray  # [n_users + 1, 1 + len(USER_CAT_COLS)] int64: hashed user ID, small cats
    user_dense: np.ndarray  # [n_users + 1, len(user_dense_columns)] float32
    item_ids: np.ndarray  # int64, sorted
    item_cat: np.ndarray  # [n_items, 3] int64: hashed item ID, hashed creator ID, category
    item_dense: np.ndarray  # [n_items, len(item_dense_columns)] float32
    user_extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. theta inputs, by user row
    item_extra: dict[str, np.ndarray] = field(default_factory=dict)
    item_prompt: PinnacleLists | None = None  # PROMO: each item's pinnacle lists at its batch cutoff, by item row

    def user_rows(self, ids: np.ndarray) -> np.ndarray:
        """Row of each user ID (the unknown-user row when absent)."""
        pos = np.searchsorted(self.user_ids, ids)
        pos = np.minimum(pos, max(len(self.user_ids) - 1, 0))
        hit = (self.user_ids[pos] == ids) if len(self.user_ids) else np.zeros(len(ids), bool)
        return np.where(hit, pos, len(self.user_ids))

    def item_rows(self, ids: np.ndarray) -> np.ndarray:
        """Row of each item ID, -1 when absent (such pairs are dropped, like the inner join they replace)."""
        pos = np.searchsorted(self.item_ids, ids)
        pos = np.minimum(pos, max(len(self.item_ids) - 1, 0))
        hit = (self.item_ids[pos] == ids) if len(self.item_ids) else np.zeros(len(ids), bool)
        return np.where(hit, pos, -1)


def _sorted_unique(data, key: str) -> tuple[np.ndarray, np.ndarray]:
    ids = _col(data, key, np.int64)
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    if len(ids) > 1 and (np.diff(ids) == 0).any():
        raise ValueError(f"ranker side table: duplicate {key} values (e.g. {ids[1:][np.diff(ids) == 0][:5].tolist()})")
    return ids, order


def side_arrays(users, items, spec: RankerSpec, user_extra: tuple[str, ...] = (), item_extra: tuple[str, ...] = ()
                ) -> SideArrays:
    """Per-user / per-item feature tables (Arrow or pandas, :func:`user_table_columns` /
    :func:`item_table_columns`) -> :class:`SideArrays`, with the same null/NaN rules as :func:`featurize`."""
    u_ids, u_ord = _sorted_unique(users, "user_id")
    i_ids, i_ord = _sorted_unique(items, "item_id")
    nu, ni = len(u_ids), len(i_ids)
    ucat = np.zeros((nu + 1, 1 + len(USER_CAT_COLS)), np.int64)
    ucat[:nu, 0] = hash_bucket(u_ids, spec.id_buckets, 17)
    for k, c in enumerate(USER_CAT_COLS):
        j = SMALL_CAT_COLS.index(c)
        v = (_col(users, c, np.int64)[u_ord] % (spec.cat_buckets - 1)) + 1 + j * spec.cat_buckets
        ucat[:nu, 1 + k] = v
        ucat[nu, 1 + k] = 1 + j * spec.cat_buckets  # a null category reads as 0 in featurize
    ucols = user_dense_columns(spec)
    udense = np.zeros((nu + 1, len(ucols)), np.float32)
    _dense_block(users, ucols, nu, out=udense[:nu])
    udense[:nu] = udense[:nu][u_ord] if nu else udense[:nu]
    icat = np.zeros((ni, 3), np.int64)
    icat[:, 0] = hash_bucket(i_ids, spec.id_buckets, 17 + ITEM_ID_POS)
    icat[:, 1] = hash_bucket(_col(items, "creator_id", np.int64)[i_ord], spec.id_buckets, 17 + ID_COLS.index("creator_id"))
    j = SMALL_CAT_COLS.index("category")
    icat[:, 2] = (_col(items, "category", np.int64)[i_ord] % (spec.cat_buckets - 1)) + 1 + j * spec.cat_buckets
    icols = item_dense_columns(spec)
    idense = _dense_block(items, icols, ni)[i_ord] if ni else np.zeros((0, len(icols)), np.float32)
    for a in (udense, idense):
        if not np.isfinite(a).all():
            np.nan_to_num(a, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    uex = {c: np.append(_col(users, c, np.float64)[u_ord], 0.0) for c in user_extra}
    iex = {c: _col(items, c, np.float64)[i_ord] for c in item_extra}
    return SideArrays(u_ids, ucat, udense, i_ids, icat, idense, uex, iex)


def featurize_pairs(side: SideArrays, user_ids: np.ndarray, u_rows: np.ndarray, i_rows: np.ndarray, spec: RankerSpec,
                    mask_item_id: bool | np.ndarray = False) -> tuple[np.ndarray, np.ndarray]:
    """(cat, dense) of (user row, item row) pairs: the same arrays :func:`featurize` gives for the
    joined feature rows, gathered from the two side tables (no per-pair columns exist anywhere).

    ``user_ids`` are the pairs' user IDs: an unknown user still has its own hashed ID."""
    n = len(u_rows)
    cat = np.empty((n, len(ID_COLS) + len(SMALL_CAT_COLS)), np.int64)
    uc, ic = side.user_cat[u_rows], side.item_cat[i_rows]
    cat[:, 0] = uc[:, 0]
    unknown = u_rows == len(side.user_ids)
    if unknown.any():
        cat[unknown, 0] = hash_bucket(np.asarray(user_ids, np.int64)[unknown], spec.id_buckets, 17)
    cat[:, ITEM_ID_POS] = ic[:, 0]
    cat[:, ID_COLS.index("creator_id")] = ic[:, 1]
    for k, c in enumerate(SMALL_CAT_COLS):
        cat[:, len(ID_COLS) + k] = ic[:, 2] if c == "category" else uc[:, 1 + USER_CAT_COLS.index(c)]
    mask = np.broadcast_to(np.asarray(mask_item_id, bool), (n,))
    cat[mask, ITEM_ID_POS] = 0
    cols = spec.dense_columns
    dense = np.empty((n, spec.n_dense), np.float32)
    upos = [k for k, c in enumerate(cols) if _is_user_col(c)]
    ipos = [k for k, c in enumerate(cols) if not _is_user_col(c)]
    ud, idn = side.user_dense[u_rows], side.item_dense[i_rows]
    if upos == list(range(len(upos))) and ipos == list(range(len(upos), len(cols))):
        dense[:, : len(upos)] = ud
        dense[:, len(upos) : len(cols)] = idn
    else:
        dense[:, upos] = ud
        dense[:, ipos] = idn
    _profile_dots(dense, spec)
    return cat, dense


def _profile_dots(dense: np.ndarray, spec) -> None:
    """Fill the derived columns after the contract's dense columns, in place: the user profile's dot
    product with the item's content projection and, with extra features, with the item's positive users'
    profile (cross features the towers would otherwise have to learn from two profile blocks)."""
    cols, p = spec.dense_columns, spec.profile_dim
    u0, i0 = cols.index("u_prof_0"), cols.index("i_proj_0")
    u_prof = dense[:, u0 : u0 + p]
    dense[:, len(cols)] = np.einsum("ij,ij->i", u_prof, dense[:, i0 : i0 + p])
    if spec.extra_features:
        e0 = cols.index("e_pos_prof_0")
        dense[:, len(cols) + 1] = np.einsum("ij,ij->i", u_prof, dense[:, e0 : e0 + p])


def labels_of(data: pd.DataFrame | pa.Table | pa.RecordBatch, tasks: list[str] | tuple[str, ...] = TASKS) -> np.ndarray:
    n = data.num_rows if isinstance(data, (pa.Table, pa.RecordBatch)) else len(data)
    return _dense_block(data, [f"y_{t}" for t in tasks], n).clip(0, 1)


def augment(cat: np.ndarray, dense: np.ndarray, labels: np.ndarray, fresh: dict[int, float] | None = None,
            fresh_share: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample augmentation: the rows plus a copy of every row with the item ID masked (bucket 0).

    ``fresh`` (dense column -> value): in a random ``fresh_share`` of the copies the item's own
    history is also reset to "no exposure yet" (see :func:`fresh_item_values`), so the model sees
    both a new item with no history (scoring right after upload) and an unknown ID with some
    history. Resetting all copies made masked-with-history rows unseen: cold AUC -4.9pp on small.
    """
    masked = cat.copy()
    masked[:, ITEM_ID_POS] = 0
    d2 = dense.copy()
    if fresh:
        rows = fresh_rows(len(d2), fresh_share, seed)
        for col, v in fresh.items():
            d2[rows, col] = v
    return np.concatenate([cat, masked]), np.concatenate([dense, d2]), np.concatenate([labels, labels])


def fresh_rows(n: int, share: float, seed: int) -> np.ndarray:
    """The SA copies that also read as "no exposure yet" (the same draw for features and PROMO lists)."""
    return np.random.default_rng(seed).random(n) < share


@dataclass
class PromptBatch:
    """PROMO inputs of a batch as tensors: hashed user buckets (0 = padding) and their masks."""

    pos: torch.Tensor  # [B, k] int64
    pos_mask: torch.Tensor  # [B, k] bool
    neg: torch.Tensor  # [B, n] int64
    neg_mask: torch.Tensor  # [B, n] bool
    flags: torch.Tensor  # [B, 2] float: has own pinnacle users, uses pseudo-pinnacle users
    cold: torch.Tensor  # [B] bool: at most cold_positives positive users so far


def prompt_arrays(lists: PinnacleLists, spec: "RankerSpec") -> dict[str, np.ndarray]:
    """NumPy form of :class:`PromptBatch` for all rows: own pinnacle users, else the pseudo ones."""
    own = (lists.pos >= 0).any(1)
    users = np.where(own[:, None], lists.pos, lists.pseudo)
    pseudo = ~own & (lists.pseudo >= 0).any(1)

    def buckets(u):
        return np.where(u >= 0, hash_bucket(np.maximum(u, 0), spec.id_buckets, 17), 0).astype(np.int64)

    return {"pos": buckets(users), "pos_mask": users >= 0, "neg": buckets(lists.neg), "neg_mask": lists.neg >= 0,
            "flags": np.stack([own, pseudo], 1).astype(np.float32), "cold": lists.n_pos <= spec.promo_cold_positives}


def prompt_batch(arrs: dict[str, np.ndarray] | None, idx=None) -> PromptBatch | None:
    if arrs is None:
        return None
    sel = (lambda a: a) if idx is None else (lambda a: a[idx])
    return PromptBatch(**{k: torch.from_numpy(np.ascontiguousarray(sel(v))) for k, v in arrs.items()})


def fresh_item_values(spec: "RankerSpec", labels: np.ndarray) -> dict[int, float]:
    """Dense column index -> value of the item-history (EF) features for an item without exposures.

    Why: training exposures mostly come from items hours or days old with rich history, while
    scoring happens at the batch cutoff right after upload (measured on ``small``: ~3 same-day
    exposures per new item). Without fresh-item examples the network extrapolates far out of its
    training range there (we saw s ~ 1e-29 before this).
    """
    if not spec.extra_features:
        return {}
    cols = spec.dense_columns
    out: dict[int, float] = {cols.index("e_log_imp"): 0.0, cols.index("e_log_pos"): 0.0}
    for k, t in enumerate(spec.tasks):
        out[cols.index(f"e_rate_{t}")] = float(labels[:, k].mean()) if len(labels) else 0.0
    for k in range(spec.profile_dim):
        out[cols.index(f"e_pos_prof_{k}")] = 0.0
    out[spec.n_dense - 1] = 0.0  # cross feature u_prof . e_pos_prof
    return out


# ---------------------------------------------------------------------- network
class MultiTaskRanker(nn.Module):
    """Shared bottom + per-task towers; dense inputs standardised by buffers fitted at cold start."""

    def __init__(self, spec: RankerSpec):
        super().__init__()
        self.spec = spec
        # sparse gradients: a step touches only the rows of its batch (dense Adam over the hashed
        # tables cost ~0.15 s/step at 2^17 buckets)
        self.ids = nn.ModuleList([nn.Embedding(spec.id_buckets, spec.emb_dim, sparse=True) for _ in ID_COLS])
        for e in self.ids:
            nn.init.normal_(e.weight, std=0.01)
        self.small = nn.Embedding(len(SMALL_CAT_COLS) * spec.cat_buckets, CAT_DIM)
        nn.init.normal_(self.small.weight, std=0.05)
        n_in = len(ID_COLS) * spec.emb_dim + len(SMALL_CAT_COLS) * CAT_DIM + spec.n_dense + spec.n_prompt
        if spec.promo != "off":
            self.prompt_net = PromptNet(spec.promo, spec.emb_dim, item_in=spec.emb_dim + spec.profile_dim)
            if spec.promo == "promo":
                # the item's own prompt embedding ("independent sets of embeddings" per item), masked bucket 0 for new items
                self.item_prompt = nn.Embedding(spec.id_buckets, spec.emb_dim, sparse=True)
                nn.init.normal_(self.item_prompt.weight, std=0.01)
            cols = spec.dense_columns
            self._i_proj = cols.index("i_proj_0")
        self.bottom = nn.Sequential(nn.Linear(n_in, spec.hidden), nn.ReLU(), nn.Linear(spec.hidden, spec.hidden), nn.ReLU())
        self.towers = nn.ModuleList(
            [nn.Sequential(nn.Linear(spec.hidden, spec.hidden // 2), nn.ReLU(), nn.Linear(spec.hidden // 2, 1)) for _ in spec.tasks]
        )
        self.register_buffer("dense_mean", torch.zeros(spec.n_dense))
        self.register_buffer("dense_std", torch.ones(spec.n_dense))
        self.register_buffer("task_trained", torch.zeros(len(spec.tasks)))

    def fit_normalizer(self, dense: np.ndarray) -> None:
        if len(dense):
            self.dense_mean.copy_(torch.from_numpy(dense.mean(0).astype(np.float32)))
            self.dense_std.copy_(torch.from_numpy(np.maximum(dense.std(0), 1e-3).astype(np.float32)))

    def set_base_rates(self, labels: np.ndarray) -> None:
        """Start each tower's bias at the logit of its base rate (faster, stabler start)."""
        rate = np.clip(labels.mean(0), 1e-4, 1 - 1e-4)
        with torch.no_grad():
            for t, r in zip(self.towers, rate):
                t[-1].bias.fill_(float(np.log(r / (1 - r))))

    def sparse_tables(self) -> list[nn.Embedding]:
        """The hashed-ID tables trained with SparseAdam."""
        return [*self.ids, *([self.item_prompt] if hasattr(self, "item_prompt") else [])]

    def bottom_input(self, cat: torch.Tensor, dense: torch.Tensor, prompt: PromptBatch | None = None,
                     aux: dict | None = None) -> torch.Tensor:
        """The bottom MLP's input; with PROMO also the prompt features (``aux`` receives the
        per-user prompt outputs for the pinnacle loss)."""
        n = cat.shape[0]
        parts = [e(cat[:, k]) for k, e in enumerate(self.ids)]
        parts.append(self.small(cat[:, len(ID_COLS):]).reshape(n, -1))
        # clipped: a feature far outside the training range must not blow the logits up
        nd = ((dense - self.dense_mean) / self.dense_std).clamp(-6.0, 6.0)
        parts.append(nd)
        if self.spec.promo != "off":
            if prompt is None:
                raise ValueError("a PROMO ranker needs its pinnacle-user inputs (prompt)")
            z = None
            if self.spec.promo == "promo":
                p0 = self._i_proj
                z = torch.cat([self.item_prompt(cat[:, ITEM_ID_POS]), nd[:, p0 : p0 + self.spec.profile_dim]], 1)
            h_pos = self.prompt_net(self.ids[0](prompt.pos), z)
            h_neg = self.prompt_net(self.ids[0](prompt.neg), z)
            P, N = masked_mean(h_pos, prompt.pos_mask), masked_mean(h_neg, prompt.neg_mask)
            u = parts[0]
            parts += [P, N, (u * P).sum(1, keepdim=True), (u * N).sum(1, keepdim=True), prompt.flags]
            if aux is not None:
                aux.update(h_pos=h_pos, h_neg=h_neg)
        return torch.cat(parts, dim=1)

    def forward(self, cat: torch.Tensor, dense: torch.Tensor, prompt: PromptBatch | None = None,
                aux: dict | None = None) -> torch.Tensor:
        h = self.bottom(self.bottom_input(cat, dense, prompt, aux))
        return torch.cat([t(h) for t in self.towers], dim=1)


def new_model(spec: RankerSpec, seed: int) -> MultiTaskRanker:
    torch.manual_seed(seed)
    return MultiTaskRanker(spec)


def train_ranker(
    model: MultiTaskRanker,
    cat: np.ndarray,
    dense: np.ndarray,
    labels: np.ndarray,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    cold_start: bool = True,
    threads: int | None = 1,
    prompt: PinnacleLists | None = None,
) -> dict[str, Any]:
    """Train in place; returns epoch losses, skipped tasks (no positives) and row counts.

    With ``model.spec.sample_augmentation`` every row is duplicated with its item ID masked.
    ``cold_start`` fits the dense normaliser and the tower biases (not on warm starts, where the
    weights were learnt against the old normaliser).
    """
    spec = model.spec
    n_orig = len(cat)
    pos = labels.sum(0)
    active = pos > 0
    skipped = [t for t, a in zip(spec.tasks, active) if not a]
    if skipped:
        log.warning("ranker: task(s) without positives in the training window are skipped: %s", skipped)
    if spec.promo != "off" and prompt is None:
        raise ValueError("a PROMO ranker trains on pinnacle-user inputs: pass prompt=PinnacleLists")
    if spec.sample_augmentation:
        fresh = fresh_item_values(spec, labels)
        if prompt is not None:
            prompt = PinnacleLists.concat([prompt, prompt.fresh(fresh_rows(n_orig, 0.5, seed) if fresh else
                                                               np.zeros(n_orig, bool))])
        cat, dense, labels = augment(cat, dense, labels, fresh, seed=seed)
    parr = prompt_arrays(prompt, spec) if (prompt is not None and spec.promo != "off") else None
    if cold_start:
        model.fit_normalizer(dense)
        model.set_base_rates(labels)
    report: dict[str, Any] = {"rows": int(n_orig), "train_rows": int(len(cat)), "skipped_tasks": skipped,
                              "positives": {t: int(p) for t, p in zip(spec.tasks, pos)}, "epoch_loss": []}
    if parr is not None:
        report["promo"] = {"variant": spec.promo, "rows_own_pinnacle": int(parr["flags"][:n_orig, 0].sum()),
                           "rows_pseudo_pinnacle": int(parr["flags"][:n_orig, 1].sum()),
                           "rows_cold": int(parr["cold"][:n_orig].sum()), "epoch_terms": []}
    if not active.any() or len(cat) == 0:
        report["note"] = "no task has positives: nothing trained"
        return report
    if threads:
        torch.set_num_threads(torch_threads(threads))  # (spinning threads on shared cores: see models/__init__)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    sparse = [p for e in model.sparse_tables() for p in e.parameters()]
    sparse_ids = {id(p) for p in sparse}
    opts = [torch.optim.Adam([p for p in model.parameters() if id(p) not in sparse_ids], lr=lr),
            torch.optim.SparseAdam(sparse, lr=lr)]
    cat_t, dense_t, y_t = torch.from_numpy(cat), torch.from_numpy(dense), torch.from_numpy(labels)
    act = torch.from_numpy(active.astype(np.float32))
    bce = nn.BCEWithLogitsLoss(reduction="none")
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(cat), generator=g)
        total, seen = 0.0, 0
        terms_sum = np.zeros(2)
        for s in range(0, len(perm), batch_size):
            idx = perm[s : s + batch_size]
            pb = prompt_batch(parr, idx.numpy()) if parr is not None else None
            aux: dict = {}
            logits = model(cat_t[idx], dense_t[idx], pb, aux)
            per_task = bce(logits, y_t[idx]).mean(0)
            loss = (per_task * act).sum() / act.sum()
            if pb is not None:
                loss, terms = promo_loss(loss, spec, logits, y_t[idx], pb, aux, act)
                terms_sum += np.array(terms) * len(idx)
            for o in opts:
                o.zero_grad()
            loss.backward()
            for o in opts:
                o.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        report["epoch_loss"].append(round(total / max(seen, 1), 6))
        if parr is not None:
            report["promo"]["epoch_terms"].append([round(float(x) / max(seen, 1), 6) for x in terms_sum])
        log.info("ranker epoch %d: loss %.5f (%d rows)", epoch, report["epoch_loss"][-1], seen)
    with torch.no_grad():
        model.task_trained.copy_(torch.maximum(model.task_trained, act))
    model.eval()
    return report


def promo_loss(bce_loss: torch.Tensor, spec: RankerSpec, logits, labels, pb: PromptBatch, aux: dict, active
               ) -> tuple[torch.Tensor, tuple[float, float]]:
    """Eq. 13: L = L_bce + lambda1 * L_pinnacle + lambda2 * L_popularity (a term with weight 0 is not
    computed at all, so switching it off gives exactly the BCE-only gradient). PROMO-T has no
    prompt network, so no pinnacle loss. Returns (loss, (pinnacle term, popularity term))."""
    loss, t_pin, t_pop = bce_loss, 0.0, 0.0
    if spec.promo_lambda_pinnacle > 0 and spec.promo != "t":
        lp = pinnacle_loss(aux["h_pos"], pb.pos_mask, aux["h_neg"], pb.neg_mask)
        loss = loss + spec.promo_lambda_pinnacle * lp
        t_pin = float(lp.detach())
    if spec.promo_lambda_popularity > 0:
        lq = popularity_loss(logits, labels, pb.cold, active)
        loss = loss + spec.promo_lambda_popularity * lq
        t_pop = float(lq.detach())
    return loss, (t_pin, t_pop)


def _fused_towers(model: MultiTaskRanker) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The M towers as two GEMMs: stacked first layers [h, M*h2] and block-diagonal second layers
    [M*h2, M], instead of 2M small ones per batch.

    Same arithmetic as ``MultiTaskRanker.forward`` (checked in tests); inference only, built from
    the current weights on each call (cheap), so it never goes stale after training.
    """
    w1 = torch.cat([t[0].weight for t in model.towers], 0).t().contiguous()  # [h, M*h2]
    b1 = torch.cat([t[0].bias for t in model.towers], 0)
    h2 = model.towers[0][0].out_features
    w2 = torch.zeros(len(model.towers) * h2, len(model.towers))
    for k, t in enumerate(model.towers):
        w2[k * h2 : (k + 1) * h2, k] = t[2].weight[0]
    b2 = torch.cat([t[2].bias for t in model.towers], 0)  # [M]
    return w1, b1, w2, b2


@torch.inference_mode()
def predict(model: MultiTaskRanker, cat: np.ndarray, dense: np.ndarray, batch_rows: int = 8192,
            prompt: PinnacleLists | None = None) -> np.ndarray:
    """Probabilities [n, M]; a task the model never trained on scores 0.

    A PROMO model needs ``prompt`` (the rows' pinnacle lists as of their cutoffs).

    The towers run fused (:func:`_fused_towers`): one GEMM instead of 2M small ones per batch.
    """
    model.eval()
    n_tasks = len(model.spec.tasks)
    w1, b1, w2, b2 = _fused_towers(model)
    trained = model.task_trained[None, :]
    out = np.empty((len(cat), n_tasks), np.float32)
    parr = prompt_arrays(prompt, model.spec) if (prompt is not None and model.spec.promo != "off") else None
    for s in range(0, len(cat), batch_rows):
        c = torch.from_numpy(np.ascontiguousarray(cat[s : s + batch_rows]))
        d = torch.from_numpy(np.ascontiguousarray(dense[s : s + batch_rows]))
        n = c.shape[0]
        pb = prompt_batch(parr, slice(s, s + batch_rows)) if parr is not None else None
        h = model.bottom(model.bottom_input(c, d, pb))
        logits = torch.addmm(b2, torch.addmm(b1, h, w1).relu_(), w2)
        out[s : s + n] = (torch.sigmoid(logits) * trained).numpy()
    return out


@dataclass
class PairScorer:
    """The ranker's first layer split into a per-user and a per-item half, computed once per side table.

    Why: the bottom MLP's first layer is linear in its input, and every input block except the
    profile cross features depends on the user alone or on the item alone (the standardise-and-clip
    of :meth:`MultiTaskRanker.bottom_input` is per column). So ``W x + b`` of a pair is
    ``user_part[u] + item_part[i] + W_cross x_cross``: scoring a day's candidates (tens of pairs
    per user, hundreds per item) gathers two rows of ``hidden`` floats per pair instead of building
    ~100 feature columns and multiplying them by the first layer. Same function as
    :func:`featurize_pairs` + :func:`predict`, up to float32 summation order.
    """

    user_part: torch.Tensor  # [n_users + 1, hidden]; the unknown-user row has no ID term (added per pair)
    item_part: torch.Tensor  # [n_items, hidden], the first layer's bias included
    w_uid: torch.Tensor  # [emb_dim, hidden]: an unknown user's own hashed ID
    w_cross: torch.Tensor  # [n_cross, hidden]
    cross_mean: torch.Tensor
    cross_std: torch.Tensor
    u_prof: torch.Tensor  # [n_users + 1, p] raw user profile (cross features)
    i_proj: torch.Tensor  # [n_items, p] raw item content projection
    e_prof: torch.Tensor | None  # [n_items, p] raw positive-user profile (extra features)


@torch.inference_mode()
def pair_scorer(model: MultiTaskRanker, side: SideArrays, mask_item_id: bool = True) -> PairScorer:
    """:class:`PairScorer` of ``model`` over ``side`` (item IDs masked: the day's new items)."""
    spec = model.spec
    if spec.promo != "off":
        raise ValueError("pair_scorer: a PROMO ranker's prompt features are per pair; use featurize_pairs + predict")
    W, b = model.bottom[0].weight, model.bottom[0].bias  # [h, n_in]
    E, cols = spec.emb_dim, spec.dense_columns
    off_small = len(ID_COLS) * E
    off_nd = off_small + len(SMALL_CAT_COLS) * CAT_DIM
    mean, std = model.dense_mean, model.dense_std
    upos = [k for k, c in enumerate(cols) if _is_user_col(c)]
    ipos = [k for k, c in enumerate(cols) if not _is_user_col(c)]
    cross = list(range(len(cols), spec.n_dense))

    def block(j0: int, width: int) -> torch.Tensor:  # [width, h]
        return W[:, j0 : j0 + width].t()

    def nd(x: np.ndarray, pos: list[int]) -> torch.Tensor:
        return ((torch.from_numpy(np.ascontiguousarray(x)) - mean[pos]) / std[pos]).clamp(-6.0, 6.0)

    def small_block(col: str) -> torch.Tensor:
        return block(off_small + SMALL_CAT_COLS.index(col) * CAT_DIM, CAT_DIM)

    nu = len(side.user_ids)
    ucat = torch.from_numpy(side.user_cat)
    up = nd(side.user_dense, upos) @ W[:, [off_nd + k for k in upos]].t()
    uid = model.ids[0](ucat[:, 0]) @ block(0, E)
    uid[nu:] = 0.0  # unknown users: their own hashed ID, added per pair
    up += uid
    for k, c in enumerate(USER_CAT_COLS):
        up += model.small(ucat[:, 1 + k]) @ small_block(c)
    icat = torch.from_numpy(side.item_cat)
    iid = torch.zeros_like(icat[:, 0]) if mask_item_id else icat[:, 0]
    ip = nd(side.item_dense, ipos) @ W[:, [off_nd + k for k in ipos]].t() + b
    ip += model.ids[ITEM_ID_POS](iid) @ block(ITEM_ID_POS * E, E)
    ip += model.ids[ID_COLS.index("creator_id")](icat[:, 1]) @ block(ID_COLS.index("creator_id") * E, E)
    ip += model.small(icat[:, 2]) @ small_block("category")
    ucols, icols, p = user_dense_columns(spec), item_dense_columns(spec), spec.profile_dim

    def sub(a: np.ndarray, names: list[str], first: str) -> torch.Tensor:
        j = names.index(first)
        return torch.from_numpy(np.ascontiguousarray(a[:, j : j + p]))

    return PairScorer(
        user_part=up.contiguous(), item_part=ip.contiguous(), w_uid=block(0, E).contiguous(),
        w_cross=W[:, [off_nd + k for k in cross]].t().contiguous(), cross_mean=mean[cross].clone(), cross_std=std[cross].clone(),
        u_prof=sub(side.user_dense, ucols, "u_prof_0"), i_proj=sub(side.item_dense, icols, "i_proj_0"),
        e_prof=sub(side.item_dense, icols, "e_pos_prof_0") if spec.extra_features else None,
    )


@torch.inference_mode()
def predict_pairs(model: MultiTaskRanker, scorer: PairScorer, user_ids: np.ndarray, u_rows: np.ndarray, i_rows: np.ndarray,
                  batch_rows: int = 2048) -> np.ndarray:
    """Probabilities [n, M] of (user row, item row) pairs through a :class:`PairScorer`
    (= :func:`predict` of :func:`featurize_pairs`' arrays, item IDs masked)."""
    model.eval()
    w1, b1, w2, b2 = _fused_towers(model)
    trained = model.task_trained[None, :]
    layer2 = model.bottom[2]
    n_known = scorer.user_part.shape[0] - 1
    out = np.empty((len(u_rows), len(model.spec.tasks)), np.float32)
    ur_all = torch.from_numpy(np.ascontiguousarray(u_rows, dtype=np.int64))
    ir_all = torch.from_numpy(np.ascontiguousarray(i_rows, dtype=np.int64))
    for s in range(0, len(u_rows), batch_rows):
        ur, ir = ur_all[s : s + batch_rows], ir_all[s : s + batch_rows]
        h = scorer.user_part.index_select(0, ur) + scorer.item_part.index_select(0, ir)
        uprof = scorer.u_prof.index_select(0, ur)
        xs = [(uprof * scorer.i_proj.index_select(0, ir)).sum(1)]
        if scorer.e_prof is not None:
            xs.append((uprof * scorer.e_prof.index_select(0, ir)).sum(1))
        x = ((torch.stack(xs, 1) - scorer.cross_mean) / scorer.cross_std).clamp(-6.0, 6.0)
        h.addmm_(x, scorer.w_cross)
        unknown = (ur == n_known).nonzero().flatten()
        if len(unknown):
            ids = np.asarray(user_ids[s : s + batch_rows], np.int64)[unknown.numpy()]
            hashed = torch.from_numpy(hash_bucket(ids, model.spec.id_buckets, 17))
            h.index_add_(0, unknown, model.ids[0](hashed) @ scorer.w_uid)
        h = layer2(h.relu_()).relu_()
        logits = torch.addmm(b2, torch.addmm(b1, h, w1).relu_(), w2)
        out[s : s + len(ur)] = (torch.sigmoid(logits) * trained).numpy()
    return out


# ---------------------------------------------------------------------- persistence
def model_to_bytes(model: MultiTaskRanker) -> bytes:
    return state_to_bytes(model)


def model_from_bytes(spec: RankerSpec | dict[str, Any], blob: bytes) -> MultiTaskRanker:
    spec = spec if isinstance(spec, RankerSpec) else RankerSpec(**spec)
    return load_state(MultiTaskRanker(spec), blob)


def save_ranker(model: MultiTaskRanker, lake, rel: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write weights + manifest into ``rel`` (a ``lake.publish_dir`` staging directory)."""
    return save_model(model, asdict(model.spec), lake, rel, MODEL_NAME, VERSION, WEIGHTS_FILE, manifest)


def load_ranker(lake, day) -> MultiTaskRanker:
    """The ranker artefact ``_models/ranker/dt=day`` (manifest attached as ``.manifest``)."""

    return load_model(lake, MODEL_NAME, day, VERSION, WEIGHTS_FILE, model_from_bytes)


__all__ = [
    "TASKS", "RankerSpec", "MultiTaskRanker", "featurize", "labels_of", "augment", "fresh_item_values", "new_model", "train_ranker",
    "predict", "save_ranker", "load_ranker", "model_to_bytes", "model_from_bytes", "input_columns", "hash_bucket",
    "SideArrays", "side_arrays", "featurize_pairs", "user_table_columns", "item_table_columns", "promo_loss",
    "prompt_arrays", "PromptBatch", "PairScorer", "pair_scorer", "predict_pairs",
]
