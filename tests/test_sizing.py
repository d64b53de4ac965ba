"""Sizing the available set for value (issue 15 item 3): activity.policy = value, and the N curve."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from dualrec import activity as A
from dualrec.config import ActivityConfig, DualRecConfig


# ---------------------------------------------------------------------- the sizing function
def test_value_curve_is_the_model_on_ten_rows():
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    v, V = A.value_curve(p, n_items=2, L=5, Q=2)  # S = 10 slots, Q = 2: 5 users fill them
    np.testing.assert_allclose(v, p)
    n = np.arange(1, 11)
    np.testing.assert_allclose(V, np.minimum(2, 10 / n) * np.cumsum(p))
    assert A.value_sized_n(p, 2, 5, 2) == 5
    m = A.value_marginals(V)
    np.testing.assert_allclose(m.cumsum(), V)
    assert (m[:5] > 0).all() and (m[5:] < 0).all()  # past S/Q a user takes slots from better ones


def test_value_n_rises_with_demand_and_is_capped_by_eligible_users():
    rng = np.random.default_rng(3)
    p = rng.random(10)
    ns = [A.value_sized_n(p, k, L=3, Q=2) for k in range(12)]
    assert ns[0] == 0  # nothing uploaded: nobody needed
    assert all(a <= b for a, b in zip(ns, ns[1:]))  # monotonic in the demand
    assert max(ns) == 10  # never more users than there are
    p0 = np.array([0.5, 0.4, 0.0, 0.0, 0.3])  # p = 0 is never eligible
    assert A.value_sized_n(p0, 100, 200, 10) == 3
    assert A.value_sized_n(p0, 100, 200, 10, min_p=0.35) == 2  # nor below min_p
    assert A.value_sized_n(p0, 100, 200, 10, min_available=50) == 3  # min_available cannot invent users


def test_value_n_ignores_order_and_equal_p_gives_demand_over_q():
    p = np.full(10, 0.3)
    assert A.value_sized_n(p, 1, 6, 2) == 3  # S / Q = 3 exactly
    rng = np.random.default_rng(0)
    q = rng.random(10)
    assert A.value_sized_n(q, 3, 4, 3) == A.value_sized_n(q[rng.permutation(10)], 3, 4, 3)


def test_sparse_logs_pick_more_users_than_the_sum_p_cap():
    # MovieLens-like: 10 users, sum p = 0.9, 5 uploads x L 200 / Q 10 = 100 users wanted
    p = np.array([0.3, 0.2, 0.1, 0.1, 0.05, 0.05, 0.04, 0.03, 0.02, 0.01])
    capped = A.demand_top_n(5, 200, 10, 3.0, expected_active=float(p.sum()), expected_active_cap=1.0)
    n = A.value_sized_n(p, 5, 200, 10)
    assert capped == 1 and n == 10 > capped
    _, V = A.value_curve(p, 5, 200, 10)
    assert V[n - 1] > V[capped - 1]


def test_slot_value_reorders_users():
    p = np.array([0.5, 0.4, 0.3])
    v, V = A.value_curve(p, 1, 1, 1, slot_value=np.array([1.0, 1.0, 3.0]))  # S = 1: one user needed
    assert v[0] == pytest.approx(0.9) and V[0] == pytest.approx(0.9)
    with pytest.raises(ValueError):
        A.value_curve(p, 1, 1, 1, slot_value=np.ones(2))
    with pytest.raises(ValueError):
        A.value_curve(p, -1, 1, 1)


def test_value_policy_in_spark(spark):
    p = [0.02, 0.01, 0.05, 0.03, 0.0, 0.04]
    scores = spark.createDataFrame([(i + 1, v) for i, v in enumerate(p)], "user_id long, p_active double")
    out, n = A.apply_policy(scores, ActivityConfig(policy="top_n"), n_items=1, L=20, Q=10)
    assert n == 1  # the sum-p cap: ceil(0.15)
    out, n = A.apply_policy(scores, ActivityConfig(policy="value"), n_items=1, L=20, Q=10)
    assert n == 2 and sorted(r["user_id"] for r in out.collect() if r["available"]) == [3, 6]
    out, n = A.apply_policy(scores, ActivityConfig(policy="value"), n_items=5, L=20, Q=10)
    assert n == 5 and sorted(r["user_id"] for r in out.collect() if r["available"]) == [1, 2, 3, 4, 6]


# ---------------------------------------------------------------------- config
def test_config_accepts_value_and_refuses_bad_knobs():
    assert DualRecConfig().activity.policy == "top_n"  # the default is unchanged
    assert DualRecConfig.model_validate({"activity": {"policy": "value", "value_min_p": 0.1}}).activity.value_min_p == 0.1
    for bad in ({"policy": "values"}, {"value_min_p": -0.1}, {"value_min_p": 1.5}, {"value_min_p": float("nan")}):
        with pytest.raises(ValidationError):
            DualRecConfig.model_validate({"activity": bad})
    assert DualRecConfig.model_validate({"metrics": {"size_curve_fractions": []}}).metrics.size_curve_fractions == []
    for bad in ([0.0], [-1.0], [float("inf")], ["half"]):
        with pytest.raises(ValidationError):
            DualRecConfig.model_validate({"metrics": {"size_curve_fractions": bad}})


# ---------------------------------------------------------------------- the curve in evaluate
def _edges(rng, n_items=4, n_users=12):
    from dualrec.evaluation.experiment import DayEdges

    it = np.repeat(np.arange(n_items, dtype=np.int64) + 100, n_users)
    us = np.tile(np.arange(n_users, dtype=np.int64) + 1, n_items)
    g = rng.random(it.size)
    return DayEdges(batch=it - 100, item_id=it, user_id=us, g=g, item_rank=it - 100, p_active=np.full(it.size, 0.5),
                    items=np.arange(n_items, dtype=np.int64) + 100, creators=np.arange(n_items, dtype=np.int64),
                    available=np.arange(n_users, dtype=np.int64) + 1)


def test_curve_points_rerun_dispatch_and_null_beyond_the_ranked_users():
    from dualrec.dispatch import dispatch_day_arrays
    from dualrec.evaluation.sizing import POINT_KEYS, curve_points, size_grid

    rng = np.random.default_rng(1)
    e = _edges(rng)
    cfg = DualRecConfig().with_override("dispatch.L", 3).with_override("dispatch.Q", 1).with_override("dispatch.policy", "arrival")
    order = np.arange(12, dtype=np.int64)[::-1] + 1  # users 12, 11, ... by p desc
    grid = size_grid(12, 20, [0.25, 1.0, 1.5])
    assert grid == [3, 12, 18]
    pts = curve_points(e, order, grid, cfg, active_next=np.array([12, 11, 1]), score_fn=lambda u, i: u / 10.0)
    assert [set(p) for p in pts] == [set(POINT_KEYS)] * 3
    p3, p12, p18 = pts
    assert p18["computable"] is False and p18["hit_rate"] is None and p18["expected_feedback"] is None
    assert p3["users_matched"] == 3 and p3["pairs"] == 3  # Q = 1: three users, three slots
    assert p3["hit_rate"] == pytest.approx(2 / 3)  # users 12, 11 active, 10 not
    assert p3["expected_feedback"] == pytest.approx((12 + 11 + 10) / 10)
    mask, _ = dispatch_day_arrays(e.batch, e.item_id, e.user_id, e.g, e.item_rank, e.available, 3, 1, "arrival")
    assert p12["pairs"] == int(mask.sum()) == 12 and p12["coverage"] == 1.0
    assert p12["expected_feedback"] == pytest.approx(float((e.user_id[mask] / 10.0).sum()))


def test_size_curve_in_evaluate_json(spark, tmp_path):
    from test_metrics import DAY, _cfg, _write_day

    from dualrec.evaluation import day as M
    from dualrec.evaluation.sizing import POINT_KEYS
    from dualrec.lake import Lake

    lk = Lake(str(tmp_path / "lake"))
    lk.write_meta({"emb_dim": 4})
    empty = M.evaluate(lk, DAY, _cfg(), spark=spark)
    sc = M.get_path(empty, "activity.size_curve")
    assert sc["points"] == [] and sc["n_available"] is None and sc["n_value"] is None  # null, not omitted
    _write_day(lk)
    m = M.evaluate(lk, DAY, _cfg(), spark=spark)
    sc = m["activity"]["size_curve"]
    assert (sc["n_available"], sc["n_users"], sc["n_top_n"], sc["n_value"]) == (8, 10, 5, 5)
    assert sc["fractions"] == DualRecConfig().metrics.size_curve_fractions
    assert [p["n"] for p in sc["points"]] == [1, 2, 4, 5, 6, 8]  # 0.1 .. 1.0 x 8, and 5; 12 and 16 > 10 users
    for p in sc["points"]:
        assert set(p) >= set(POINT_KEYS) and p["computable"] and p["users_matched"] <= p["n"]
        assert p["expected_feedback"] is None  # no _truth
    assert sc["points"][-1]["model_value"] is not None
    assert M.unflatten(M.flatten(m))["activity"]["size_curve"]["points"][0]["n"] == 1  # survives the metrics table


def _curve_points_by_isin(edges, ranked_users, grid, cfg, score_fn):
    """The curve as it was computed before the edges were pre-sorted: np.isin per point, edges in their order."""
    from dualrec.dispatch import PolicyParams, dispatch_day_arrays

    d = cfg.dispatch
    out = []
    for n in grid:
        top = np.sort(ranked_users[:n])
        keep = np.isin(edges.user_id, top)
        mask, _ = dispatch_day_arrays(edges.batch[keep], edges.item_id[keep], edges.user_id[keep], edges.g[keep],
                                      edges.item_rank[keep], top, d.L, d.Q, d.policy, batches_per_day=d.batches_per_day,
                                      n_items=edges.items.size, params=PolicyParams.from_config(d), p_active=edges.p_active[keep])
        it, us = edges.item_id[keep][mask], edges.user_id[keep][mask]
        out.append((it.tolist(), us.tolist(), float(score_fn(us, it).sum())))
    return out


@pytest.mark.parametrize("policy", ["arrival", "matching", "paced", "optimal"])
def test_curve_points_equal_the_per_point_isin_rerun_in_any_edge_order(policy):
    """Pre-sorting the day's edges and selecting a point's users by position changes nothing: the
    same pairs, in the same order, hence the same sums, for every policy and a shuffled edge table."""
    import dataclasses

    from dualrec.evaluation.sizing import curve_points

    rng = np.random.default_rng(5)
    n_items, n_users = 9, 30
    e = _edges(rng, n_items, n_users)
    keep = rng.random(e.item_id.size) < 0.6  # sparse candidates
    shuffle = rng.permutation(int(keep.sum()))
    e = dataclasses.replace(e, batch=(e.item_rank[keep] * 3 // n_items)[shuffle], item_id=e.item_id[keep][shuffle],
                            user_id=e.user_id[keep][shuffle], g=e.g[keep][shuffle], item_rank=e.item_rank[keep][shuffle],
                            p_active=rng.random(int(keep.sum())))
    cfg = (DualRecConfig().with_override("dispatch.L", 4).with_override("dispatch.Q", 2)
           .with_override("dispatch.policy", policy).with_override("dispatch.batches_per_day", 3))
    ranked = rng.permutation(np.arange(n_users, dtype=np.int64) + 1)
    grid = [3, 10, 17, 30]
    score = lambda u, i: (u * 7 + i) % 11 / 10.0  # noqa: E731
    want = _curve_points_by_isin(e, ranked, grid, cfg, score)
    got = curve_points(e, ranked, grid, cfg, active_next=None, score_fn=score)
    for (it, us, total), p in zip(want, got):
        assert p["pairs"] == len(it) and p["users_matched"] == len(set(us))
        assert p["expected_feedback"] == total  # exactly: the same pairs in the same order


def test_sorted_codes_and_canonical_order_equal_unique_and_lexsort():
    from dualrec.dispatch.kernels import canonical_order, sorted_codes

    rng = np.random.default_rng(9)
    for n in (0, 1, 50, 3000):
        items = rng.integers(0, 40, n) * 13 - 7
        users = rng.integers(0, 300, n) * 101 + 5
        rank = rng.integers(-3, 25, n)
        ui, ii = sorted_codes(items)
        uu, iu = sorted_codes(users)
        u_ref, inv_ref = np.unique(items, return_inverse=True)
        np.testing.assert_array_equal(ui, u_ref)
        np.testing.assert_array_equal(ii, inv_ref)
        np.testing.assert_array_equal(canonical_order(rank, ii, ui.size, iu, uu.size), np.lexsort((users, items, rank)))
    big = np.array([0, 2**40, 5], dtype=np.int64)  # a combined key that would overflow: the lexsort path
    iu = np.array([2, 0, 1])
    np.testing.assert_array_equal(canonical_order(big, np.zeros(3, np.int64), 1, iu, 2**30), np.lexsort((iu, np.zeros(3), big)))
