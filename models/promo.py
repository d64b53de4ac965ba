"""PROMO (Prompt tuning for item cold-start, Kuaishou): pinnacle-feedback prompts for the ranker.

Pure NumPy / PyTorch, no Spark (the feedback events and S^I neighbours come in as arrays,
assembled by :mod:`dualrec.ranking`).

- Pinnacle selection (paper Eq. 4): v_ui = alpha * CR + beta * IR per positive feedback; the
  pinnacle users of an item at a cutoff are its top-k users by v among feedback strictly before
  the cutoff (ties: the earlier feedback, then the smaller user ID). Negative users: the latest
  exposures without any positive before the cutoff.
- Pseudo-pinnacle users: an item with no pinnacle user yet takes those of its most similar S^I
  neighbour (by ``sim``) that has some, at the same cutoff (paper: "the most similar popular item").
- Prompt networks (:class:`PromptNet`): ``promo`` generates an item-wise two-layer network from
  the item (its own prompt-ID embedding plus its content; an unseen item still gets its own
  weights from its content); ``m`` (PROMO-M) one shared network; ``t`` (PROMO-T) none: the
  pooled user embeddings go in as plain features.
- Losses: the per-sample pinnacle-feedback prompt-enhanced loss (Eq. 8-9, L1 distance between
  each pinnacle and each negative user's prompt output, mean over pairs) and the intra-batch
  popularity-aware loss (Eq. 11-12: cold items' positives against popular items' negatives).

Deviation from the paper, on purpose: one-stage joint training (the paper freezes a pre-trained
backbone); our ranker is retrained from scratch on a daily window anyway.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

VARIANTS = ("promo", "m", "t")
VISIBLE_IR = ("like", "comment", "follow", "share", "profile_enter")


# ---------------------------------------------------------------------- pinnacle selection
def feedback_value(cr: np.ndarray, ir: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """v_ui = alpha * CR + beta * IR (Eq. 4)."""
    return alpha * np.asarray(cr, np.float64) + beta * np.asarray(ir, np.float64)


def completion_rate(play_time_ms: np.ndarray, duration_ms: np.ndarray) -> np.ndarray:
    """CR: share of the item watched, in [0, 1] (0 for an unknown or zero duration)."""
    d = np.asarray(duration_ms, np.float64)
    p = np.nan_to_num(np.asarray(play_time_ms, np.float64))
    return np.where(d > 0, np.clip(p / np.where(d > 0, d, 1.0), 0.0, 1.0), 0.0)


@dataclass
class PinnacleLists:
    """Per query (item, cutoff): pinnacle users [n, k], negative users [n, n_neg] (-1 = none),
    pseudo-pinnacle users [n, k] (from S^I, filled only where ``pos`` is empty) and the count of
    positive users so far (``n_pos``, what decides cold vs popular)."""

    pos: np.ndarray
    neg: np.ndarray
    pseudo: np.ndarray
    n_pos: np.ndarray

    def take(self, idx: np.ndarray) -> "PinnacleLists":
        return PinnacleLists(self.pos[idx], self.neg[idx], self.pseudo[idx], self.n_pos[idx])

    @staticmethod
    def concat(parts: list["PinnacleLists"]) -> "PinnacleLists":
        return PinnacleLists(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("pos", "neg", "pseudo", "n_pos")))

    def fresh(self, rows: np.ndarray) -> "PinnacleLists":
        """Copy where ``rows`` read as a brand-new item (no own feedback): pseudo users only, no negatives."""
        out = PinnacleLists(self.pos.copy(), self.neg.copy(), self.pseudo.copy(), self.n_pos.copy())
        out.pos[rows] = -1
        out.neg[rows] = -1
        out.n_pos[rows] = 0
        return out


def _sort_key(item: np.ndarray, ts: np.ndarray) -> np.ndarray:
    return np.lexsort((ts, item))


def pinnacle_users(ev_item: np.ndarray, ev_user: np.ndarray, ev_ts: np.ndarray, ev_value: np.ndarray,
                   q_item: np.ndarray, q_cutoff: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` users by value among each query's positive events with ts < cutoff.

    Events are positive feedback only (v > 0 or another positive flag). One pass per item over
    events and queries in time order with a size-k heap: O((E + Q) log k), exact. Returns
    (users [Q, k] int64 padded with -1, ordered by value desc then earlier ts; n_pos [Q] int64:
    positive events before the cutoff). A user with several positive exposures counts once (its best).
    """
    nq = len(q_item)
    out = np.full((nq, k), -1, np.int64)
    npos = np.zeros(nq, np.int64)
    if nq == 0 or len(ev_item) == 0:
        return out, npos
    eo = _sort_key(np.asarray(ev_item), np.asarray(ev_ts))
    e_item, e_user, e_ts, e_v = (np.asarray(a)[eo] for a in (ev_item, ev_user, ev_ts, ev_value))
    qo = _sort_key(np.asarray(q_item), np.asarray(q_cutoff))
    qi, qc = np.asarray(q_item)[qo], np.asarray(q_cutoff)[qo]
    # per item: the slice of its events
    starts = np.searchsorted(e_item, qi, "left")
    ends = np.searchsorted(e_item, qi, "right")
    cur_item, j, heap, seen, best = None, 0, [], set(), {}
    e_item_l, e_user_l, e_ts_l, e_v_l = e_item.tolist(), e_user.tolist(), e_ts.tolist(), e_v.tolist()
    for r in range(nq):
        it, cut = qi[r], qc[r]
        if it != cur_item:
            cur_item, j, heap, seen, best = it, int(starts[r]), [], set(), {}
        end = int(ends[r])
        while j < end and e_ts_l[j] < cut:
            u, v, t = e_user_l[j], e_v_l[j], e_ts_l[j]
            seen.add(u)
            # heap of (v, -ts, -user): the root is the weakest of the kept k; a user keeps its best event only
            if u in best:
                if v > best[u][0]:
                    heap = [h for h in heap if -h[2] != u]
                    heapq.heapify(heap)
                    best.pop(u)
                else:
                    j += 1
                    continue
            entry = (v, -t, -u)
            if len(heap) < k:
                heapq.heappush(heap, entry)
                best[u] = entry
            elif entry > heap[0]:
                old = heapq.heapreplace(heap, entry)
                best.pop(-old[2], None)
                best[u] = entry
            j += 1
        npos[qo[r]] = len(seen)
        top = sorted(heap, reverse=True)
        out[qo[r], : len(top)] = [-h[2] for h in top]
    return out, npos


def latest_negatives(ev_item: np.ndarray, ev_user: np.ndarray, ev_ts: np.ndarray, q_item: np.ndarray,
                     q_cutoff: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` latest negative-feedback users of each query's item before its cutoff ([Q, n], -1 pad).

    Vectorised: events sorted by (item, ts); each query's prefix end by ``searchsorted`` on
    (item rank, ts)."""
    nq = len(q_item)
    out = np.full((nq, n), -1, np.int64)
    if nq == 0 or n == 0 or len(ev_item) == 0:
        return out
    eo = _sort_key(np.asarray(ev_item), np.asarray(ev_ts))
    e_item, e_user, e_ts = (np.asarray(a, np.int64)[eo] for a in (ev_item, ev_user, ev_ts))
    q_item, q_cutoff = np.asarray(q_item, np.int64), np.asarray(q_cutoff, np.int64)
    uni = np.unique(e_item)
    e_rank = np.searchsorted(uni, e_item)
    q_rank = np.searchsorted(uni, q_item)
    q_in = (q_rank < len(uni)) & (uni[np.minimum(q_rank, len(uni) - 1)] == q_item)
    t0 = int(min(e_ts.min(), q_cutoff.min()))
    span = int(max(e_ts.max(), q_cutoff.max())) - t0 + 1
    if span * (len(uni) + 1) >= (1 << 62):
        raise ValueError(f"latest_negatives: {len(uni)} items over a {span} us span overflow the int64 search key")
    key = e_rank * span + (e_ts - t0)  # sorted: events are in (item, ts) order
    end = np.searchsorted(key, q_rank * span + (q_cutoff - t0), "left")
    lo = np.searchsorted(e_rank, q_rank, "left")
    for c in range(n):
        pos = end - 1 - c
        ok = q_in & (pos >= lo)
        out[ok, c] = e_user[pos[ok]]
    return out


def pseudo_pinnacle(pos: np.ndarray, q_item: np.ndarray, q_cutoff: np.ndarray, sim_item: np.ndarray,
                    sim_other: np.ndarray, sim_value: np.ndarray, lookup, max_neighbours: int) -> np.ndarray:
    """Pseudo-pinnacle users [Q, k] for the queries whose own list is empty (others stay -1).

    ``sim_*``: S^I rows (item, similar item, sim). ``lookup(items, cutoffs) -> [m, k]`` gives the
    pinnacle users of other items at the same cutoffs (point-in-time as well). The neighbours are
    tried in descending sim (ties: smaller ID); the first with any pinnacle user wins."""
    k = pos.shape[1]
    out = np.full_like(pos, -1)
    empty = np.flatnonzero((pos < 0).all(1))
    if len(empty) == 0 or len(sim_item) == 0:
        return out
    o = np.lexsort((sim_other, -np.asarray(sim_value, np.float64), sim_item))
    si, so = np.asarray(sim_item)[o], np.asarray(sim_other)[o]
    keep = si != so
    si, so = si[keep], so[keep]
    lo = np.searchsorted(si, q_item[empty], "left")
    hi = np.searchsorted(si, q_item[empty], "right")
    todo = np.ones(len(empty), bool)
    for r in range(max_neighbours):
        have = todo & (lo + r < hi)
        if not have.any():
            break
        rows = np.flatnonzero(have)
        cand = lookup(so[lo[rows] + r], q_cutoff[empty[rows]])
        got = (cand >= 0).any(1)
        out[empty[rows[got]]] = cand[got][:, :k]
        todo[rows[got]] = False
    return out


def pinnacle_lists(ev_item, ev_user, ev_ts, ev_value, ev_positive, q_item, q_cutoff, cfg,
                   sim: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> PinnacleLists:
    """Pinnacle, negative and pseudo-pinnacle users of each (item, cutoff) query (all point-in-time:
    only events with ts < cutoff). ``cfg``: the ``rank.promo`` section (k, negatives, pseudo_neighbours)."""
    ev_item, ev_user, ev_ts = (np.asarray(a, np.int64) for a in (ev_item, ev_user, ev_ts))
    ev_value, ev_positive = np.asarray(ev_value, np.float64), np.asarray(ev_positive, bool)
    q_item, q_cutoff = np.asarray(q_item, np.int64), np.asarray(q_cutoff, np.int64)
    p = ev_positive
    args = (ev_item[p], ev_user[p], ev_ts[p], ev_value[p])

    def lookup(items, cutoffs):
        return pinnacle_users(*args, items, cutoffs, cfg.k)[0]

    pos, npos = pinnacle_users(*args, q_item, q_cutoff, cfg.k)
    n = ~p
    neg = latest_negatives(ev_item[n], ev_user[n], ev_ts[n], q_item, q_cutoff, cfg.negatives)
    pseudo = np.full_like(pos, -1)
    if sim is not None:
        pseudo = pseudo_pinnacle(pos, q_item, q_cutoff, *sim, lookup, cfg.pseudo_neighbours)
    return PinnacleLists(pos, neg, pseudo, npos)


def batch_start_us(ts_us: np.ndarray, batches_per_day: int) -> np.ndarray:
    """Start (µs, UTC) of the dispatch batch containing each timestamp: a training exposure's pinnacle
    cutoff, on the same grid as the scoring cutoffs (batch ends, :func:`batch_end_us`)."""
    ts = np.asarray(ts_us, np.int64)
    day0 = ts - np.mod(ts, 86_400_000_000)
    w = 86_400_000_000 / batches_per_day
    b = np.floor((ts - day0) / w)
    return day0 + np.round(b * w).astype(np.int64)


def batch_end_us(day_start_us: int, batch: np.ndarray, batches_per_day: int) -> np.ndarray:
    """Exclusive cutoff (µs) of batch ``batch`` of the day starting at ``day_start_us`` (dualrec.batches' rule)."""
    w = 86_400_000_000 / batches_per_day
    return int(day_start_us) + np.round((np.asarray(batch, np.int64) + 1) * w).astype(np.int64)


# ---------------------------------------------------------------------- network
class PromptNet(nn.Module):
    """Encodes a set of user embeddings [B, S, d] into per-user prompt outputs [B, S, d].

    ``promo``: item-wise weights W_i = W + G(z_i) (z_i: item prompt-ID embedding + content), a
    two-layer network per item (Eq. 6-7); ``m``: the shared W alone; ``t``: identity (no network).
    """

    def __init__(self, variant: str, d: int, item_in: int, hidden: int | None = None):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown PROMO variant {variant!r} (one of {VARIANTS})")
        self.variant, self.d, self.h = variant, d, hidden or d
        if variant == "t":
            return
        d, h = self.d, self.h
        self.sizes = (d * h, h, h * d, d)
        self.base = nn.Parameter(torch.cat([nn.init.xavier_uniform_(torch.empty(d, h)).reshape(-1), torch.zeros(h),
                                            nn.init.xavier_uniform_(torch.empty(h, d)).reshape(-1), torch.zeros(d)]))
        if variant == "promo":
            self.gen = nn.Linear(item_in, sum(self.sizes))
            nn.init.normal_(self.gen.weight, std=0.01)
            nn.init.zeros_(self.gen.bias)

    def forward(self, users: torch.Tensor, item_z: torch.Tensor | None) -> torch.Tensor:
        if self.variant == "t":
            return users
        B = users.shape[0]
        w = self.base.expand(B, -1)
        if self.variant == "promo":
            w = w + self.gen(item_z)
        w1, b1, w2, b2 = torch.split(w, self.sizes, dim=1)
        x = torch.baddbmm(b1[:, None, :], users, w1.reshape(B, self.d, self.h)).relu()
        return torch.baddbmm(b2[:, None, :], x, w2.reshape(B, self.h, self.d))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the set dimension of [B, S, d] where mask [B, S] is set (0 for an empty set)."""
    m = mask.to(x.dtype)[..., None]
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def pinnacle_loss(h_pos: torch.Tensor, pos_mask: torch.Tensor, h_neg: torch.Tensor, neg_mask: torch.Tensor) -> torch.Tensor:
    """Eq. 8-9 per sample: log(1 + exp(-Delta_i)), Delta_i the mean L1 distance between each pinnacle
    and each negative user's prompt output; rows without both sets do not count (0 if none has)."""
    dist = (h_pos[:, :, None, :] - h_neg[:, None, :, :]).abs().sum(-1)  # [B, P, N]
    pair = pos_mask[:, :, None] & neg_mask[:, None, :]
    n_pair = pair.sum((1, 2))
    ok = n_pair > 0
    if not bool(ok.any()):
        return h_pos.sum() * 0.0
    delta = (dist * pair).sum((1, 2))[ok] / n_pair[ok]
    return F.softplus(-delta).mean()


def popularity_loss(logits: torch.Tensor, labels: torch.Tensor, cold: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Eq. 11-12 per task within the batch: log(1 + exp(-Delta)), Delta the mean over (cold positive,
    popular negative) pairs of y_hat_cold_pos - y_hat_pop_neg; tasks lacking either set do not count."""
    p = torch.sigmoid(logits)
    cp = (labels > 0.5) & cold[:, None]
    hn = (labels < 0.5) & ~cold[:, None]
    n_cp, n_hn = cp.sum(0), hn.sum(0)
    ok = (n_cp > 0) & (n_hn > 0) & (active > 0)
    if not bool(ok.any()):
        return logits.sum() * 0.0
    mean_cp = (p * cp).sum(0) / n_cp.clamp(min=1)
    mean_hn = (p * hn).sum(0) / n_hn.clamp(min=1)
    return F.softplus(-(mean_cp - mean_hn))[ok].mean()


__all__ = [
    "VARIANTS", "feedback_value", "completion_rate", "PinnacleLists", "pinnacle_users", "latest_negatives",
    "pseudo_pinnacle", "pinnacle_lists", "batch_start_us", "batch_end_us", "PromptNet", "masked_mean", "pinnacle_loss", "popularity_loss",
]
