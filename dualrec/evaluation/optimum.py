"""The optimum of a day as a certified interval [lower, upper], at any scale (issue 15).

The problem. Maximise ``sum w[i, u] x[i, u]`` over items i and users u with ``sum_u x[i, u] <= L``,
``sum_i x[i, u] <= Q``, ``0 <= x <= 1`` and ``w >= 0`` (the truth's expected visible feedback). It is
a bipartite b-matching / transportation LP; its matrix is totally unimodular, so the LP optimum
is the integral optimum OPT.

Upper bound (Lagrangian duality over user prices). For ANY ``beta >= 0`` (one price per user)::

    UB(beta) = Q * sum_u beta[u] + sum_i (sum of the L largest values of (w[i, u] - beta[u])^+ over u)

is >= OPT: relaxing the user caps with multipliers beta leaves a problem that separates by item,
and each item's best is its L largest net values. ``min_beta UB(beta) = OPT`` (LP duality).
Users left out of the scored set (``screened``) get ``beta[u] = w_max[u]``, an upper bound of
their w over every item: their net values are all 0, so they only add ``Q * w_max[u]`` (the
``slack``), and the bound stays valid without scoring them.

Lower bound (a feasible assignment). The exact min-cost flow (OR-tools) over a sparse edge set E
(each item's ``top_m`` users by w, plus the edges the pricing step adds) is a feasible assignment
of the full problem, so its value is <= OPT.

Prices. The flow's node potentials (shortest-path distances in its residual graph, by a
vectorised Bellman-Ford on the integer costs the flow solved) give the LP duals of the problem
on E; ``beta[u] = max(0, d_t - d_u)``. One full pass then evaluates ``UB(beta)`` exactly over
every pair; pairs outside E that enter an item's top L at these prices are added to E and the
flow is solved again (column generation), at most ``rounds`` times. When E holds every pair that
matters, ``UB(beta)`` equals the flow's value: the optimum is certified (``exact``: relative gap
<= ``tol``).

Floating point. Grid values come in float32: the scorer states a relative error, values are
inflated by it for the bound, and the float32 subtraction ``w - beta`` gets an explicit margin; the
lower bound is rescored in float64. Both bounds are therefore safe to rounding, and ``exact``
means "within ``tol``".
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from ortools.graph.python import min_cost_flow

log = logging.getLogger(__name__)

_COST_UNITS = 1_000_000_000
"""The largest w is this many integer cost units in the flow (costs are integers)."""
_F32_ULP = 2.0**-23


@contextlib.contextmanager
def _one_thread():
    """torch on one intra-op thread: these element-wise ops on cache-sized blocks lose far more
    to thread hand-offs than they gain on a shared 2-core box (measured 40x slower at load 16)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class GridScorer(Protocol):
    """Values of a set of items against a set of users, in blocks."""

    n_items: int
    n_users: int
    rel_error: float  # |block value - true value| <= rel_error * true value

    def block(self, item_pos: np.ndarray) -> torch.Tensor:
        """float32 tensor (len(item_pos), n_users)."""

    def pairs(self, item_pos: np.ndarray, user_idx: np.ndarray) -> np.ndarray:
        """float64 values of explicit pairs."""

    def restrict(self, user_idx: np.ndarray) -> "GridScorer":
        """The same items against a subset of the users."""


class DenseScorer:
    """A scorer over an in-memory (items, users) matrix (tests, small problems)."""

    rel_error = 0.0

    def __init__(self, values: np.ndarray):
        self.values = np.asarray(values, dtype=np.float64)
        self.n_items, self.n_users = self.values.shape
        v32 = self.values.astype(np.float32)
        v32 = np.where(v32 < self.values, np.nextafter(v32, np.float32(np.inf)), v32)  # rounded up: a bound
        self._v32 = torch.from_numpy(v32)

    def block(self, item_pos: np.ndarray) -> torch.Tensor:
        return self._v32[torch.from_numpy(np.asarray(item_pos, dtype=np.int64))]

    def pairs(self, item_pos: np.ndarray, user_idx: np.ndarray) -> np.ndarray:
        return self.values[item_pos, user_idx]

    def restrict(self, user_idx: np.ndarray) -> "DenseScorer":
        return DenseScorer(self.values[:, user_idx])

    def user_upper(self) -> np.ndarray:
        return self.values.max(axis=0) if self.n_items else np.zeros(self.n_users)


class FactorScorer:
    """``w[i, u] = act[u] * sum_t sigmoid(slope[t] * <U[u], V[i]> + uoff[t, u] + ioff[t, i])`` (the
    synthetic truth's visible feedback, :class:`dualrec.synth.truth.VisibleFactors`) in float32
    torch blocks: one matrix product and T sigmoids per pair."""

    rel_error = 1e-5  # float32 sigmoid/product/sum of <= 8 terms: a few ulps (~1e-6); 10x margin
    _SUB = 16  # items per inner block: keeps the working set in cache (2x faster than 256)

    def __init__(self, factors):
        self.f = factors
        self.n_items = int(factors.item_vec.shape[0])
        self.n_users = int(factors.user_vec.shape[0])
        self._U = torch.from_numpy(np.ascontiguousarray(factors.user_vec.T, dtype=np.float32))
        self._V = torch.from_numpy(np.ascontiguousarray(factors.item_vec, dtype=np.float32))
        self._uo = torch.from_numpy(np.ascontiguousarray(factors.user_offset, dtype=np.float32))
        self._io = torch.from_numpy(np.ascontiguousarray(factors.item_offset, dtype=np.float32))
        self._act = torch.from_numpy(np.ascontiguousarray(factors.activity, dtype=np.float32))
        self._slope = [float(s) for s in factors.slope]

    def block(self, item_pos: np.ndarray) -> torch.Tensor:
        item_pos = torch.from_numpy(np.asarray(item_pos, dtype=np.int64))
        out = torch.empty((len(item_pos), self.n_users), dtype=torch.float32)
        with torch.inference_mode(), _one_thread():
            for s in range(0, len(item_pos), self._SUB):
                ip = item_pos[s : s + self._SUB]
                aff = self._V[ip] @ self._U
                acc = out[s : s + len(ip)]
                acc.zero_()
                x = torch.empty_like(aff)
                for t, b in enumerate(self._slope):
                    torch.mul(aff, b, out=x)
                    x.add_(self._uo[t]).add_(self._io[t, ip][:, None])
                    acc.add_(torch.sigmoid_(x))
                acc.mul_(self._act)
        return out

    def pairs(self, item_pos: np.ndarray, user_idx: np.ndarray) -> np.ndarray:
        f = self.f
        aff = np.einsum("nd,nd->n", f.user_vec[user_idx], f.item_vec[item_pos])
        z = f.slope[:, None] * aff + f.user_offset[:, user_idx] + f.item_offset[:, item_pos]
        return f.activity[user_idx] * (1.0 / (1.0 + np.exp(-z))).sum(axis=0)

    def restrict(self, user_idx: np.ndarray) -> "FactorScorer":
        f = self.f
        sub = type(f)(user_vec=f.user_vec[user_idx], item_vec=f.item_vec, slope=f.slope,
                      user_offset=f.user_offset[:, user_idx], item_offset=f.item_offset, activity=f.activity[user_idx])
        return FactorScorer(sub)

    def user_upper(self) -> np.ndarray:
        """An upper bound of each user's w over every item: the user's largest slope * affinity over
        the items (exact, by matrix products only: no sigmoid per pair) with each item offset at its max."""
        f = self.f
        if self.n_items == 0:
            return np.zeros(self.n_users)
        hi = np.full(self.n_users, -np.inf)
        lo = np.full(self.n_users, np.inf)
        with torch.inference_mode(), _one_thread():
            step = max(1, 4_000_000 // max(self.n_users, 1))
            for a in range(0, self.n_items, step):
                aff = (self._V[a : a + step] @ self._U).double().numpy()
                hi = np.maximum(hi, aff.max(axis=0))
                lo = np.minimum(lo, aff.min(axis=0))
        slack = 1e-5 * (np.abs(hi) + np.abs(lo)) + 1e-6  # float32 product: a few ulps of |U||V| <= ~1
        best = np.where(f.slope[:, None] >= 0, f.slope[:, None] * (hi + slack), f.slope[:, None] * (lo - slack))
        z = best + f.user_offset + f.item_offset.max(axis=1)[:, None]
        return f.activity * (1.0 / (1.0 + np.exp(-z))).sum(axis=0) * (1 + 1e-9)


@dataclass
class OptimumResult:
    """A certified interval for OPT and the assignment that reaches the lower end."""

    lower: float  # value of a feasible assignment (<= OPT)
    upper: float  # a bound (>= OPT)
    exact: bool  # upper - lower <= tol * upper
    items: np.ndarray  # item positions of the feasible assignment
    users: np.ndarray  # user indices (into the scorer's users) of the feasible assignment
    scored_users: int  # users scored pair by pair (all of them unless screened)
    screened_users: int  # users bounded by w_max only
    slack: float  # Q * sum of w_max over screened users (part of ``upper``)
    upper_at_zero_prices: float
    rounds: int
    edges: int  # |E| of the last flow
    seconds: float
    cpu_seconds: float = 0.0  # this process's CPU time (threads included): the fair figure on a shared machine
    best_users: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0), np.int64))
    """(items, min(L, scored)) each item's best users by w (indices into the scorer's users), desc."""

    @property
    def gap(self) -> float:
        return (self.upper - self.lower) / self.upper if self.upper > 0 else 0.0


def dual_bound(values: np.ndarray, beta: np.ndarray, L: int, Q: int) -> float:
    """``UB(beta)`` of the module docstring on a dense (items, users) matrix: >= the optimum for
    every ``beta >= 0`` (the definition, for tests and small problems)."""
    values = np.asarray(values, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    if (beta < 0).any():
        raise ValueError("prices must be >= 0")
    net = np.maximum(values - beta[None, :], 0.0)
    k = min(L, net.shape[1])
    top = -np.sort(-net, axis=1)[:, :k]
    return float(Q * beta.sum() + top.sum())


def _flow(iidx: np.ndarray, uidx: np.ndarray, cost: np.ndarray, n_items: int, n_users: int, L: int, Q: int):
    """Max sum of integer ``cost`` under the caps; returns (chosen mask, node potentials d, node layout).

    Nodes: 0 source, 1 sink, 2.. items, 2 + n_items.. users. ``d`` are shortest-path distances
    from a virtual root (0 to every node) in the optimal flow's residual graph.
    """
    n = len(cost)
    cap_i = np.minimum(L, np.bincount(iidx, minlength=n_items)).astype(np.int64)
    supply = int(cap_i.sum())
    item_node = 2 + np.arange(n_items, dtype=np.int64)
    user_node = 2 + n_items + np.arange(n_users, dtype=np.int64)
    tails = np.concatenate([np.zeros(n_items, np.int64), item_node[iidx], user_node, [0]])
    heads = np.concatenate([item_node, user_node[uidx], np.ones(n_users, np.int64), [1]])
    caps = np.concatenate([cap_i, np.ones(n, np.int64), np.full(n_users, Q, np.int64), [supply]])
    costs = np.concatenate([np.zeros(n_items, np.int64), -cost, np.zeros(n_users, np.int64), [0]])
    mcf = min_cost_flow.SimpleMinCostFlow()
    mcf.add_arcs_with_capacity_and_unit_cost(tails, heads, caps, costs)
    mcf.set_nodes_supplies(np.array([0, 1]), np.array([supply, -supply]))
    status = mcf.solve()
    if status != mcf.OPTIMAL:
        raise RuntimeError(f"min-cost flow did not solve to optimality (status {status})")
    flows = mcf.flows(np.arange(len(tails)))
    chosen = flows[n_items : n_items + n] > 0
    # residual graph: forward arcs with room, backward arcs with flow
    fwd = flows < caps
    bwd = flows > 0
    rt = np.concatenate([tails[fwd], heads[bwd]])
    rh = np.concatenate([heads[fwd], tails[bwd]])
    rc = np.concatenate([costs[fwd], -costs[bwd]])
    d = _bellman_ford(rt, rh, rc, 2 + n_items + n_users)
    return chosen, d


def _bellman_ford(tail: np.ndarray, head: np.ndarray, cost: np.ndarray, n_nodes: int, max_rounds: int = 100_000) -> np.ndarray:
    """Shortest distances from a virtual root joined to every node at cost 0 (so d <= 0), by
    vectorised Bellman-Ford rounds. The residual graph of an optimal flow has no negative cycle, so
    it terminates; any d it stops at still yields valid (if looser) prices.

    Each round relaxes only the arcs out of the nodes whose distance fell in the round before (an
    arc out of an unchanged node cannot improve its head again), so late rounds touch a few arcs,
    not all of them. The distances are the unique shortest-path fixpoint: the same as relaxing
    every arc in every round."""
    order = np.argsort(tail, kind="stable")
    tail, head, cost = tail[order], head[order], cost[order]
    start = np.searchsorted(tail, np.arange(n_nodes + 1))
    deg = np.diff(start)
    d = np.zeros(n_nodes, dtype=np.int64)
    arcs = np.arange(len(tail))  # round 1: every node's distance is new (0 from the root)
    for r in range(max_rounds):
        if not len(arcs):
            log.debug("bellman-ford: %d rounds", r)
            return d
        cand = d[tail[arcs]] + cost[arcs]
        h = head[arcs]
        old = d.copy()
        np.minimum.at(d, h, cand)
        changed = np.flatnonzero(d < old)
        counts = deg[changed]
        total = int(counts.sum())
        # the arcs of the changed nodes: ranges [start, start + deg) concatenated
        offs = np.repeat(start[changed] - np.cumsum(counts) + counts, counts)
        arcs = offs + np.arange(total)
    log.warning("bellman-ford did not converge in %d rounds; prices are approximate (the bound stays valid)", max_rounds)
    return d


class _Grid:
    """Full passes over a scorer's (items, users) grid in item blocks, cached when small."""

    def __init__(self, scorer: GridScorer, block_pairs: int, cache_pairs: int):
        self.s = scorer
        self.step = max(1, block_pairs // max(scorer.n_users, 1))
        self.cache: list[torch.Tensor] | None = [] if scorer.n_items * scorer.n_users <= cache_pairs else None
        self.scored = 0.0

    def blocks(self):
        s = self.s
        for k, a in enumerate(range(0, s.n_items, self.step)):
            pos = np.arange(a, min(a + self.step, s.n_items))
            if self.cache is not None and k < len(self.cache):
                yield pos, self.cache[k]
                continue
            t0 = time.perf_counter()
            w = s.block(pos).mul_(1.0 + s.rel_error)  # an upper bound of the true values
            self.scored += time.perf_counter() - t0
            if self.cache is not None:
                self.cache.append(w)
            yield pos, w


def certified_optimum(
    scorer: GridScorer,
    L: int,
    Q: int,
    *,
    max_pairs: int = 250_000_000,
    top_m: int | None = None,
    top_k: int | None = None,
    rounds: int = 3,
    tol: float = 1e-4,
    block_pairs: int = 4_000_000,
    cache_pairs: int = 64_000_000,
    user_upper: np.ndarray | None = None,
) -> OptimumResult:
    """The optimum of the b-matching over every (item, user) pair of ``scorer`` as [lower, upper].

    When items x users exceeds ``max_pairs`` only the users with the largest ``user_upper`` (an
    upper bound of each user's w over all items; required then) are scored; the others add
    ``Q * user_upper`` to the bound (module docstring). ``top_m`` (default L) users per item and
    ``top_k`` (default 4Q) items per user form the first flow's edge set: the users' side decides
    the prices (the small day: exact in one round with L + 4Q, three rounds with 2L + 2Q; the
    medium sample, where slots outnumber demand, is still far from exact after one round with 2L + Q).
    """
    with torch.inference_mode(), _one_thread():
        return _certified_optimum(scorer, L, Q, max_pairs, top_m, top_k, rounds, tol, block_pairs, cache_pairs, user_upper)


def _certified_optimum(scorer, L, Q, max_pairs, top_m, top_k, rounds, tol, block_pairs, cache_pairs, user_upper) -> OptimumResult:
    t0, c0 = time.perf_counter(), time.process_time()
    n_i, n_u = scorer.n_items, scorer.n_users
    empty = np.zeros(0, np.int64)
    if n_i == 0 or n_u == 0 or L <= 0 or Q <= 0:
        return OptimumResult(0.0, 0.0, True, empty, empty, n_u, 0, 0.0, 0.0, 0, 0, 0.0, np.zeros((n_i, 0), np.int64))
    core = np.arange(n_u)
    slack = 0.0
    if n_i * n_u > max_pairs:
        if user_upper is None:
            raise ValueError(f"{n_i} items x {n_u} users > max_pairs {max_pairs}: user_upper is needed to screen users")
        keep = max(1, max_pairs // n_i)
        core = np.sort(np.lexsort((np.arange(n_u), -np.asarray(user_upper, dtype=np.float64)))[:keep])
        rest = np.setdiff1d(np.arange(n_u), core)
        slack = float(Q * np.asarray(user_upper, dtype=np.float64)[rest].sum())
        scorer = scorer.restrict(core)
    n_c = scorer.n_users
    grid = _Grid(scorer, block_pairs, cache_pairs)
    kl, km = min(L, n_c), min(top_m or L, n_c)
    ka = max(kl, km)

    # pass A: each item's top_m users and each user's top_k items (the first edge set), UB(beta = 0)
    kk = min(top_k or 4 * Q, n_i)
    e_item, e_user, e_val, best = [], [], [], []
    u_val = torch.full((n_c, 0), -1.0, dtype=torch.float32)  # (users, <= top_k): rows are contiguous for topk
    u_item = torch.zeros((n_c, 0), dtype=torch.int64)
    ub0 = 0.0
    w_hi = 0.0
    for pos, w in grid.blocks():
        v, ix = torch.topk(w, ka, dim=1, sorted=True)
        w_hi = max(w_hi, float(v[:, 0].max()))
        ub0 += float(v[:, :kl].clamp(min=0).double().sum())
        e_item.append(np.repeat(pos, km)), e_user.append(ix[:, :km].numpy().ravel()), e_val.append(v[:, :km].numpy().ravel())
        best.append(ix[:, :kl].numpy())
        bv, bi = torch.topk(w.T.contiguous(), min(kk, w.shape[0]), dim=1)  # the block's best items per user
        cv = torch.cat([u_val, bv], dim=1)
        ci = torch.cat([u_item, torch.from_numpy(pos)[bi]], dim=1)
        uv, ui = torch.topk(cv, min(kk, cv.shape[1]), dim=1)
        u_val, u_item = uv, torch.gather(ci, 1, ui)
    e_item.append(u_item.numpy().ravel()), e_user.append(np.repeat(np.arange(n_c), u_item.shape[1]))
    e_val.append(u_val.numpy().ravel())
    ei, eu, ev = np.concatenate(e_item), np.concatenate(e_user).astype(np.int64), np.concatenate(e_val).astype(np.float64)
    keep = ev > 0  # a pair worth nothing never raises the total
    ei, eu, ev = ei[keep], eu[keep], ev[keep]
    key = ei * n_c + eu
    o = np.argsort(key, kind="stable")
    first = o[np.r_[True, key[o][1:] != key[o][:-1]]] if len(o) else o  # an edge found from both sides counts once
    ei, eu, ev = ei[first], eu[first], ev[first]
    upper = ub0
    lower, items, users = 0.0, empty, empty
    r = 0
    if w_hi <= 0:  # every pair is worth nothing: OPT = 0
        return OptimumResult(0.0, slack, slack <= 0, empty, empty, n_c, n_u - n_c, slack, ub0 + slack, 0, 0,
                             time.perf_counter() - t0, time.process_time() - c0, core[np.concatenate(best)])
    for r in range(1, rounds + 1):
        scale = _COST_UNITS / max(w_hi, 1e-300)
        order = np.argsort(ei * n_c + eu, kind="stable")  # canonical arc order (by item, then user): reruns give the same flow
        ei, eu, ev = ei[order], eu[order], ev[order]
        chosen, d = _flow(ei, eu, np.rint(ev * scale).astype(np.int64), n_i, n_c, L, Q)
        items, users = ei[chosen], eu[chosen]
        lower = max(lower, float(scorer.pairs(items, users).sum()))
        beta = np.maximum(d[1] - d[2 + n_i :], 0).astype(np.float64) / scale
        beta = beta.astype(np.float32)  # exactly representable: both parts of UB use the same beta
        b_t = torch.from_numpy(beta)
        ub, new_i, new_u, new_v = float(Q * beta.astype(np.float64).sum()), [], [], []
        for pos, w in grid.blocks():
            v, ix = torch.topk(w - b_t, kl, dim=1, sorted=False)
            ub += float(v.clamp(min=0).double().sum())
            pos_r = np.repeat(pos, kl)
            ixn = ix.numpy().ravel().astype(np.int64)
            pos_ok = v.numpy().ravel() > 0
            new_i.append(pos_r[pos_ok]), new_u.append(ixn[pos_ok])
            new_v.append(w[torch.from_numpy(pos_r[pos_ok] - pos[0]), torch.from_numpy(ixn[pos_ok])].numpy())
        # float32 rounding of w - beta: at most half an ulp of max(w, beta) per summed term
        ub += n_i * kl * 0.5 * _F32_ULP * max(w_hi, float(beta.max(initial=0.0)))
        upper = min(upper, ub)
        log.info("optimum round %d: |E| %d, lower %.4f, upper %.4f", r, len(ev), lower, upper + slack)
        if upper - lower <= tol * (upper + slack):
            break  # the scored part is certified (more rounds cannot shrink the screened users' slack)
        ni, nu, nv = np.concatenate(new_i), np.concatenate(new_u), np.concatenate(new_v).astype(np.float64)
        known = ei * n_c + eu  # sorted: E is in canonical order since the flow
        nk = ni * n_c + nu
        have = known[np.minimum(np.searchsorted(known, nk), len(known) - 1)] == nk
        if have.all():
            break  # no pair outside E is priced in: more rounds cannot tighten the bound
        ei, eu, ev = np.concatenate([ei, ni[~have]]), np.concatenate([eu, nu[~have]]), np.concatenate([ev, nv[~have]])
    upper += slack
    return OptimumResult(
        lower=lower, upper=upper, exact=bool(upper - lower <= tol * upper), items=items, users=core[users],
        scored_users=int(n_c), screened_users=int(n_u - n_c), slack=slack, upper_at_zero_prices=ub0 + slack,
        rounds=r, edges=int(len(ev)), seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0,
        best_users=core[np.concatenate(best)],
    )
