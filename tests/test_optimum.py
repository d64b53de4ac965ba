"""The optimum's certified interval (dualrec.evaluation.optimum): the upper bound is a bound for
every price vector, the flow's assignment is feasible, and where the certificate says exact the
two meet the LP optimum (solved independently by scipy's HiGHS)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

from dualrec.dispatch import POLICIES, dispatch_day_arrays
from dualrec.evaluation import optimum as O


def _lp(values: np.ndarray, L: int, Q: int) -> float:
    """The b-matching LP (integral: totally unimodular) by HiGHS."""
    n_i, n_u = values.shape
    rows = np.r_[np.repeat(np.arange(n_i), n_u), n_i + np.tile(np.arange(n_u), n_i)]
    cols = np.r_[np.arange(n_i * n_u), np.arange(n_i * n_u)]
    A = coo_matrix((np.ones(rows.size), (rows, cols)), shape=(n_i + n_u, n_i * n_u))
    res = linprog(-values.ravel(), A_ub=A, b_ub=np.r_[np.full(n_i, L), np.full(n_u, Q)], bounds=(0, 1), method="highs")
    return -res.fun


def _instance(rng):
    n_i, n_u = int(rng.integers(1, 14)), int(rng.integers(1, 22))
    L, Q = int(rng.integers(1, 6)), int(rng.integers(1, 4))
    w = rng.random((n_i, n_u)) ** 3 * (rng.random((n_i, n_u)) < 0.8) * rng.random((1, n_u))
    return w, L, Q


@pytest.mark.parametrize("seed", range(40))
def test_interval_contains_the_lp_optimum_and_is_tight_when_certified(seed):
    rng = np.random.default_rng(seed)
    w, L, Q = _instance(rng)
    opt = _lp(w, L, Q)
    for top_m, top_k in ((None, None), (1, 1)):  # default edge set, and a starved one column generation must fix
        r = O.certified_optimum(O.DenseScorer(w), L, Q, top_m=top_m, top_k=top_k, rounds=6)
        assert r.lower <= opt + 1e-9 <= r.upper + 2e-9
        # the lower end is a real assignment under the caps
        assert np.unique(r.items * w.shape[1] + r.users).size == r.items.size
        assert (np.bincount(r.items, minlength=w.shape[0]) <= L).all() and (np.bincount(r.users, minlength=w.shape[1]) <= Q).all()
        assert r.lower == pytest.approx(w[r.items, r.users].sum())
        if r.exact:
            assert r.upper == pytest.approx(opt, rel=2e-4, abs=1e-9) and r.lower == pytest.approx(opt, rel=2e-4, abs=1e-9)
    assert O.certified_optimum(O.DenseScorer(w), L, Q, rounds=8).exact  # column generation certifies these


@pytest.mark.parametrize("seed", range(10))
def test_any_price_vector_gives_a_bound(seed):
    rng = np.random.default_rng(100 + seed)
    w, L, Q = _instance(rng)
    opt = _lp(w, L, Q)
    for beta in (np.zeros(w.shape[1]), rng.random(w.shape[1]), rng.random(w.shape[1]) * w.max(initial=0), np.full(w.shape[1], 9.0)):
        assert O.dual_bound(w, beta, L, Q) >= opt - 1e-9
    with pytest.raises(ValueError):
        O.dual_bound(w, -np.ones(w.shape[1]), L, Q)


@pytest.mark.parametrize("seed", range(15))
def test_the_bound_is_above_every_dispatch_policy(seed):
    """Every policy's true total (arrival, matching, paced, optimal on noisy scores) is <= the bound."""
    rng = np.random.default_rng(200 + seed)
    n_i, n_u = int(rng.integers(2, 12)), int(rng.integers(3, 20))
    L, Q = int(rng.integers(1, 5)), int(rng.integers(1, 4))
    w = rng.random((n_i, n_u)) ** 2
    ii, uu = np.repeat(np.arange(n_i), n_u), np.tile(np.arange(n_u), n_i)
    edge = rng.random(ii.size) < 0.7
    ii, uu = ii[edge], uu[edge]
    g = w[ii, uu] * rng.lognormal(0, 0.5, ii.size)  # the ranker's noisy view of the truth
    batch = (ii * 4) // n_i
    r = O.certified_optimum(O.DenseScorer(w), L, Q)
    for policy in POLICIES:
        mask, _ = dispatch_day_arrays(batch, ii + 100, uu + 1000, g, ii, 1000 + np.arange(n_u), L, Q, policy, batches_per_day=4)
        assert w[ii[mask], uu[mask]].sum() <= r.upper + 1e-9, policy
    random_pick = rng.permutation(ii.size)[: min(ii.size, Q)]  # any feasible set: here at most Q pairs
    assert w[ii[random_pick], uu[random_pick]].sum() <= r.upper + 1e-9


def test_screened_users_enter_the_bound_at_their_upper_value():
    rng = np.random.default_rng(7)
    w = rng.random((6, 40)) * np.linspace(1, 0.01, 40)[None, :]
    L, Q = 3, 2
    opt = _lp(w, L, Q)
    sc = O.DenseScorer(w)
    r = O.certified_optimum(sc, L, Q, max_pairs=6 * 10, user_upper=sc.user_upper())
    assert r.scored_users == 10 and r.screened_users == 30
    up = w.max(axis=0)
    assert r.slack == pytest.approx(Q * np.sort(up)[:30].sum())  # the 30 users with the smallest upper bound
    assert r.lower <= opt + 1e-9 <= r.upper + 1e-9
    with pytest.raises(ValueError, match="user_upper"):
        O.certified_optimum(sc, L, Q, max_pairs=10)


def test_degenerate_problems():
    assert O.certified_optimum(O.DenseScorer(np.zeros((0, 5))), 3, 2).upper == 0.0
    r = O.certified_optimum(O.DenseScorer(np.zeros((3, 4))), 3, 2)
    assert r.lower == r.upper == 0.0 and r.exact


def test_factor_scorer_matches_the_truth(tiny_world):
    """The matrix form of the truth equals Truth.expected_visible_feedback pair by pair, and its
    per-user upper bound is above every item."""
    from dualrec.synth.truth import Truth

    t = Truth.load(tiny_world)
    day = t.days[5]
    users, items = t.user_ids[::7][:150], t.item_ids[::5][:40]
    sc = O.FactorScorer(t.visible_feedback_factors(users, items, day))
    want = t.expected_visible_feedback(np.tile(users, items.size), np.repeat(items, users.size), day).reshape(items.size, users.size)
    got = sc.block(np.arange(items.size)).double().numpy()
    np.testing.assert_allclose(got, want, rtol=sc.rel_error / 10, atol=1e-12)
    ii, uu = np.repeat(np.arange(items.size), users.size), np.tile(np.arange(users.size), items.size)
    np.testing.assert_allclose(sc.pairs(ii, uu), want.ravel(), rtol=1e-6)  # Truth takes the affinity in float32
    assert (sc.user_upper() >= want.max(axis=0)).all()
    sub = sc.restrict(np.array([3, 1]))
    np.testing.assert_allclose(sub.block(np.arange(items.size)).double().numpy(), want[:, [3, 1]], rtol=1e-5)
    assert isinstance(day, dt.date)


def _bellman_ford_every_arc(tail, head, cost, n):
    """Reference: relax every arc in every round until nothing changes."""
    d = np.zeros(n, dtype=np.int64)
    while True:
        new = d.copy()
        np.minimum.at(new, head, d[tail] + cost)
        if (new == d).all():
            return d
        d = new


@pytest.mark.parametrize("seed", range(30))
def test_bellman_ford_on_changed_nodes_equals_relaxing_every_arc(seed):
    """Relaxing only the arcs out of nodes that changed reaches the same distances (graphs without
    negative cycles: costs are reduced costs of random potentials plus a non-negative part)."""
    rng = np.random.default_rng(300 + seed)
    n, m = int(rng.integers(1, 60)), int(rng.integers(0, 400))
    pot = rng.integers(-1000, 1000, n)
    tail, head = rng.integers(0, n, m), rng.integers(0, n, m)
    cost = pot[head] - pot[tail] + rng.integers(0, 30, m) * (rng.random(m) < 0.7)
    d = O._bellman_ford(tail, head, cost, n)
    np.testing.assert_array_equal(d, _bellman_ford_every_arc(tail, head, cost, n))
    assert (d <= 0).all() and (d[head] <= d[tail] + cost).all()  # a feasible potential: no arc can improve


def test_the_grid_cache_changes_no_figure():
    """A grid too large to cache is scored again in each round: the same interval and assignment."""
    rng = np.random.default_rng(11)
    w = rng.random((30, 50)) ** 3
    runs = [O.certified_optimum(O.DenseScorer(w), 4, 2, top_k=1, rounds=4, block_pairs=100, cache_pairs=c) for c in (0, 10**9)]
    a, b = runs
    assert a.rounds > 1  # the pricing rounds ran (and re-scored the grid in the uncached run)
    assert (a.lower, a.upper, a.exact, a.rounds, a.edges) == (b.lower, b.upper, b.exact, b.rounds, b.edges)
    for f in ("items", "users", "best_users"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
