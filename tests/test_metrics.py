"""Evaluation (SPEC section 6): pure figures on hand-made arrays, evaluate() on a hand-made lake."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.metrics import roc_auc_score

from dualrec.config import DualRecConfig
from dualrec.evaluation import baselines as B
from dualrec.evaluation import day as M
from dualrec.evaluation import figures as FG
from dualrec.lake import Lake
from dualrec.stats import roc_auc
from schemas.tables import RANK_TASKS

DAY = dt.date(2026, 1, 3)
NXT = DAY + dt.timedelta(days=1)

# The SPEC section 6 list, written out independently of dualrec.evaluation.REQUIRED_PATHS.
SPEC_PATHS = """activity.auc activity.auc_baseline_last_day activity.hit_rate activity.hit_rate_all_users
dispatch.items dispatch.items_covered dispatch.items_full dispatch.max_du dispatch.q dispatch.l
dispatch.users_matched dispatch.channel_share quality.feedback_per_pair quality.feedback_per_pair_random
quality.feedback_per_pair_popular quality.recall_at_l quality.recall_at_l_random
quality.recall_at_l_popular index.recall_at_k retrieval.truth_recall ranking.auc cost.stage_seconds
quality.expected_feedback quality.expected_feedback_random quality.expected_feedback_popular
quality.expected_feedback_arrival quality.expected_feedback_optimum quality.optimum_pool_users
quality.expected_feedback_optimum_all_users quality.optimum_ratio dispatch.coverage dispatch.fair_share
dispatch.fair_served dispatch.users_per_item_gini quality.items_reaching_feedback""".split()
OBJECT_PATHS = {"dispatch.channel_share", "retrieval.truth_recall", "ranking.auc", "cost.stage_seconds"}


def _ts(day: dt.date, hour: int) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, tzinfo=dt.timezone.utc)


def _cfg() -> DualRecConfig:
    return DualRecConfig().with_override("dispatch.L", 3).with_override("dispatch.Q", 2)


# match_sets of the hand-made day: (item, user, channels)
MATCH = [
    (100, 1, ["two_tower"]),
    (100, 2, ["two_tower", "i2i2u"]),
    (100, 3, ["i2i2u"]),
    (101, 2, ["two_tower"]),
    (101, 3, ["two_tower"]),
    (101, 5, ["i2u2u"]),
    (102, 6, ["two_tower", "i2i2u"]),
]
# ranked/candidates: the matched pairs plus (100, 4) which lost to capacity
RANKED = [*[(i, u, c) for i, u, c in MATCH], (100, 4, ["two_tower"])]
G = {(100, 1): 0.9, (100, 2): 0.8, (100, 3): 0.5, (100, 4): 0.7, (101, 2): 0.9, (101, 3): 0.6, (101, 5): 0.4, (102, 6): 0.3}
P_ACTIVE = np.linspace(0.05, 0.95, 10)  # users 1..10, increasing
ACTIVE_D = [1, 2, 3, 4, 5]
ACTIVE_N = [1, 2, 3, 4, 9]
# D+1 interactions: (item, user, flag)
INTER = [(100, 4, "is_like"), (100, 1, "is_comment"), (101, 5, "is_follow"), (102, 7, "is_share"), (101, 2, "is_click")]


def _write_day(lake: Lake, with_next: bool = True) -> None:
    users = list(range(1, 11))
    lake.write_table(
        "users",
        DAY,
        pa.table({"user_id": users, "register_dt": [dt.date(2025, 1, 1)] * 10, "age_bucket": [1] * 10, "gender": [0] * 10,
                  "region": [2] * 10, "device": [1] * 10, "follower_count": [0] * 10}),
    )
    lake.write_table(
        "items",
        DAY,
        pa.table({"item_id": [100, 101, 102], "creator_id": [7, 8, 9], "upload_ts": [_ts(DAY, 10), _ts(DAY, 11), _ts(DAY, 12)],
                  "category": [1, 2, 3], "duration_ms": [1000] * 3, "content_emb": [[0.1, 0.2, 0.3, 0.4]] * 3}),
    )
    lake.write_table("activity_scores", DAY, pa.table({"user_id": users, "p_active": P_ACTIVE, "available": [u <= 8 for u in users]}))
    lake.write_table("visits", DAY, pa.table({"user_id": ACTIVE_D, "sessions": [1] * 5, "watch_ms": [10] * 5}))
    cand = {
        "batch": [10 + i - 100 for i, _, _ in RANKED],
        "item_id": [i for i, _, _ in RANKED],
        "user_id": [u for _, u, _ in RANKED],
        "score_two_tower": [1.0 if "two_tower" in c else None for *_, c in RANKED],
        "score_i2i2u": [1.0 if "i2i2u" in c else None for *_, c in RANKED],
        "score_i2u2u": [1.0 if "i2u2u" in c else None for *_, c in RANKED],
        "channels": [c for *_, c in RANKED],
    }
    lake.write_table("candidates", DAY, pa.table(cand))
    ranked = {k: cand[k] for k in ("batch", "item_id", "user_id", "channels")}
    for j, t in enumerate(RANK_TASKS):
        ranked[f"s_{t}"] = [((u * 7 + i + j) % 10) / 10 for i, u, _ in RANKED]
    ranked["theta"] = [1.0] * len(RANKED)
    ranked["g"] = [G[(i, u)] for i, u, _ in RANKED]
    lake.write_table("ranked", DAY, pa.table(ranked))
    match = {
        "batch": [10 + i - 100 for i, _, _ in MATCH],
        "user_id": [u for _, u, _ in MATCH],
        "item_id": [i for i, _, _ in MATCH],
        "g": [G[(i, u)] for i, u, _ in MATCH],
        "rank_in_item": [1] * len(MATCH),
        "channels": [c for *_, c in MATCH],
    }
    lake.write_table("match_sets", DAY, pa.table(match))
    with lake.publish_dir(Lake.model_rel("user_index", DAY)) as st:
        lake.write_text(f"{st}/manifest.json", json.dumps({"kind": "flat_ip", "recall_at_k": 0.97, "k": 10}))
    lake.fs.create_dir(lake.fs_path(f"_runs/dt={DAY}"), recursive=True)
    lake.write_text(f"_runs/dt={DAY}/stages.json", json.dumps({"activity": 2.0, "dispatch": 0.5}))
    if with_next:
        lake.write_table("visits", NXT, pa.table({"user_id": ACTIVE_N, "sessions": [1] * 5, "watch_ms": [10] * 5}))
        flags = ["is_click", "is_like", "is_comment", "is_follow", "is_share", "is_profile_enter", "is_long_view"]
        inter = {"user_id": [u for _, u, _ in INTER], "item_id": [i for i, _, _ in INTER],
                 "ts": [_ts(NXT, 9)] * len(INTER), "play_time_ms": [100] * len(INTER)}
        for f in flags:
            inter[f] = [int(f == fl or f == "is_click") for *_, fl in INTER]
        lake.write_table("interactions", NXT, pa.table(inter))


@pytest.fixture()
def lake(tmp_path):
    lk = Lake(str(tmp_path / "lake"))
    lk.write_meta({"emb_dim": 4})
    _write_day(lk)
    return lk


def _assert_all_paths(m: dict) -> None:
    for p in SPEC_PATHS:
        v = M.get_path(m, p)  # KeyError = omitted path
        if p in OBJECT_PATHS:
            assert isinstance(v, dict), p
    assert set(SPEC_PATHS) <= set(M.REQUIRED_PATHS)
    json.dumps(m, allow_nan=False)  # strict JSON: null, never NaN


# ====================================================================== evaluate on the hand-made day
def test_evaluate_hand_made_day(lake, spark):
    m = M.evaluate(lake, DAY, _cfg(), spark=spark)
    _assert_all_paths(m)
    d = m["dispatch"]
    assert (d["items"], d["items_covered"], d["items_full"], d["max_du"], d["q"], d["l"]) == (3, 3, 2, 2, 2, 3)
    assert d["users_matched"] == 5 and d["pairs"] == 7 and d["available_users"] == 8
    assert d["share_available_used"] == pytest.approx(5 / 8)
    assert d["du_hist"] == [3, 3, 2]  # users 4,7,8 available but unmatched; 1,5,6 once; 2,3 twice
    assert d["du_violations"] == 0
    assert d["channel_share"] == pytest.approx({"two_tower": 4 / 7, "i2i2u": 2 / 7, "i2u2u": 1 / 7})
    assert d["channel_share_any"] == pytest.approx({"two_tower": 5 / 7, "i2i2u": 3 / 7, "i2u2u": 1 / 7})
    # no store: item 100 takes users 1,2,4 (top-3 g) -> user 2 has 2 items, 1,3,4,5,6 one
    assert d["du_hist_no_store"] == [0, 5, 1]
    # creator side: users per item 3, 3, 1; m = min(L=3, Q*8 // 3) = 3; >= 1.5 users: items 100, 101
    assert d["coverage"] == 1.0 and d["fair_share"] == 3 and d["fair_served"] == pytest.approx(2 / 3)
    assert d["users_per_item_gini"] == pytest.approx(4 / 21)
    assert d["coverage_by_hour"] == [None] * 10 + [1.0, 1.0, 1.0] + [None] * 11

    a = m["activity"]
    y = np.isin(np.arange(1, 11), ACTIVE_N)
    assert a["auc"] == pytest.approx(roc_auc_score(y, P_ACTIVE))
    assert a["auc_baseline_last_day"] == pytest.approx(roc_auc_score(y, np.isin(np.arange(1, 11), ACTIVE_D)))
    assert a["hit_rate"] == pytest.approx(3 / 5)  # dispatched {1,2,3,5,6}, active D+1 {1,2,3,4,9}
    assert a["hit_rate_all_users"] == pytest.approx(5 / 10)
    assert sum(b["n"] for b in a["calibration"]) == 10

    q = m["quality"]
    assert q["recall_at_l"] == pytest.approx(2 / 4)  # positives (100,4)x (100,1)v (101,5)v (102,7)x
    assert 0 <= q["recall_at_l_random"] <= 1 and 0 <= q["recall_at_l_popular"] <= 1
    # popular = users 8,7,6 for items 100 and 101, then 5,4,3 for 102: none of the positives
    assert q["recall_at_l_popular"] == 0.0
    # Algorithm 1 on the ranked scores: 100 takes 1,2,4 (g .9 .8 .7), 101 takes 2,3,5, 102 takes 6
    assert q["pairs_arrival"] == 7 and q["recall_at_l_arrival"] == pytest.approx(3 / 4)
    assert q["feedback_per_pair"] is None and q["expected_feedback_optimum"] is None  # no _truth
    assert q["optimum_ratio"] is None and q["truth_available"] is False
    assert m["retrieval"]["truth_recall"] == {"two_tower": None, "i2i2u": None, "i2u2u": None, "merged": None}

    assert m["index"]["recall_at_k"] == 0.97 and m["index"]["k"] == 10
    assert m["cost"]["stage_seconds"] == {"activity": 2.0, "dispatch": 0.5}
    assert m["cost"]["rows_per_second"]["dispatch"] == pytest.approx(7 / 0.5)
    assert set(m["ranking"]["auc"]) >= set(RANK_TASKS)
    # logged ranking AUC on the D+1 exposures that were ranked: (100,4) (100,1) (101,5) (101,2)
    pairs = [(100, 4), (100, 1), (101, 5), (101, 2)]
    s_like = [((u * 7 + i + 0) % 10) / 10 for i, u in pairs]
    assert m["ranking"]["auc_logged"]["like"] == pytest.approx(roc_auc_score([1, 0, 0, 0], s_like))
    assert m["ranking"]["auc_logged"]["share"] is None  # no positive among the ranked exposures


def test_evaluate_nulls_without_next_day_or_inputs(tmp_path, spark):
    lk = Lake(str(tmp_path / "lake"))
    lk.write_meta({"emb_dim": 4})
    empty = M.evaluate(lk, DAY, _cfg(), spark=spark)
    _assert_all_paths(empty)
    for p in ("activity.auc", "activity.hit_rate", "dispatch.items", "dispatch.items_covered", "dispatch.max_du",
              "dispatch.users_matched", "quality.recall_at_l", "quality.recall_at_l_random", "index.recall_at_k"):
        assert M.get_path(empty, p) is None, p
    assert empty["cost"]["stage_seconds"] == {}
    assert empty["dispatch"]["q"] == 2

    _write_day(lk, with_next=False)  # last day of a lake: D+1 logs do not exist yet
    m = M.evaluate(lk, DAY, _cfg(), spark=spark)
    _assert_all_paths(m)
    assert m["activity"]["hit_rate"] is None and m["activity"]["auc"] is None
    assert m["quality"]["recall_at_l"] is None and m["quality"]["recall_at_l_popular"] is None
    assert m["dispatch"]["items_full"] == 2  # D's own figures are still there


def test_metrics_job_writes_table_and_report(lake, spark):
    from dualrec.stages.base import StageContext
    from dualrec.stages.metrics import run

    stats = run(StageContext(lake=lake, day=DAY, cfg=_cfg(), _spark=spark))
    assert stats["max_du"] == 2
    rows = lake.read_table("metrics", DAY).to_pylist()
    back = M.unflatten(rows)
    assert back["dispatch"]["items_full"] == 2.0
    assert back["cost"]["stage_seconds"]["activity"] == 2.0
    assert back["dispatch"]["du_hist"] == [3, 3, 2]
    assert lake.exists(f"_reports/dt={DAY}/index.html") and lake.exists("_reports/index.html")


# ====================================================================== pure figures
def test_roc_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 300).astype(float)
    y = rng.random(300) < 0.3 + 0.1 * s
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert roc_auc(np.zeros(300, bool), s) is None


def test_reliability_curve_bins():
    p = np.array([0.05, 0.05, 0.95, 0.95, 0.55])
    y = np.array([0, 1, 1, 1, 0])
    cal = FG.reliability_curve(p, y, bins=10)
    assert [(c["n"], c["rate"]) for c in cal] == [(2, 0.5), (1, 0.0), (2, 1.0)]


def test_flatten_roundtrip():
    m = {"a": {"x": 1, "y": None, "h": [1, 2], "e": {}, "b": True, "s": "src"}, "c": 0.5}
    assert M.unflatten(M.flatten(m)) == {"a": {"x": 1.0, "y": None, "h": [1, 2], "e": {}, "b": True, "s": "src"}, "c": 0.5}
    t = M.metrics_table(m)
    assert t.num_rows == 7 and t.column("metric").null_count == 0


def test_popular_assign_respects_caps_and_order():
    it, us = B.popular_assign(n_items=5, n_users=7, L=3, Q=2)
    df = pd.DataFrame({"i": it, "u": us})
    assert df.groupby("i").size().max() <= 3 and df.groupby("u").size().max() <= 2
    assert list(df[df.i == 0].u) == [0, 1, 2] and list(df[df.i == 2].u) == [3, 4, 5]
    assert list(df[df.i == 4].u) == [6]  # only user 6 has capacity left
    assert not df.duplicated().any()


def _affinity(u: np.ndarray, i: np.ndarray) -> np.ndarray:
    """Hand-made truth: user u likes items whose id is close to u (mod 20); no ties."""
    return np.exp(-(((u - i) % 20) / 2.0)) * (1 - 1e-3 * (u // 20))


def test_quality_figures_baselines_and_truth_recall():
    rng = np.random.default_rng(1)
    L, Q = 5, 2
    items = np.arange(1000, 1010, dtype=np.int64)
    available = np.arange(1, 201, dtype=np.int64)
    popularity = -available.astype(float)  # user 1 most popular
    # ours: each item's 5 truly best users (feasible: they are distinct per item here)
    best = {i: available[np.argsort(-_affinity(available, np.full(200, i)))[:L]] for i in items}
    dispatched = pd.DataFrame([(i, u) for i in items for u in best[i]], columns=["item_id", "user_id"])
    # candidates: two_tower found the true best, i2i2u found random users
    cand = pd.concat([
        dispatched.assign(channel="two_tower"),
        pd.DataFrame([(i, u) for i in items for u in rng.choice(available, L, replace=False)], columns=["item_id", "user_id"]).assign(channel="i2i2u"),
    ])
    positives = dispatched.iloc[::2].copy()  # half of our pairs are logged positives
    q, r = M.quality_figures(_affinity, items, dispatched, available, popularity, available, positives, cand, None,
                             ["two_tower", "i2i2u", "i2u2u"], L, Q, rng, M.OptimumParams(max_pairs=10_000))
    # ours is each item's true top-L and those sets are disjoint: it is the optimum
    assert q["optimum_exact"] is True and q["optimum_pool_users"] == 200
    assert q["expected_feedback_optimum"] == pytest.approx(q["expected_feedback"], rel=1e-6)
    assert q["optimum_ratio"] == pytest.approx(1.0, rel=1e-6)
    assert q["expected_feedback_optimum_all_users"] >= q["expected_feedback_optimum"] - 1e-9
    assert q["expected_feedback"] > q["expected_feedback_random"] and q["expected_feedback"] > q["expected_feedback_popular"]
    assert q["feedback_per_pair"] > q["feedback_per_pair_random"]
    assert q["expected_feedback_arrival"] is None  # no ranked table given
    assert q["pairs_random"] == q["pairs_popular"] == len(items) * L
    assert q["recall_at_l"] == 1.0 and q["recall_at_l_random"] < 1.0
    assert r["truth_recall"]["two_tower"] == 1.0 and r["truth_recall"]["merged"] == 1.0
    assert r["truth_recall"]["i2i2u"] < 0.5 and r["truth_recall"]["i2u2u"] == 0.0
    assert q["truth_recall_dispatched"] == 1.0


def test_quality_figures_screened_users_keep_the_bound_a_bound():
    """Beyond optimum_max_pairs only some users are scored; the others are priced at their upper
    bound, so the upper bound still holds (the old random pool gave ratios above 1)."""
    rng = np.random.default_rng(2)
    items = np.arange(1000, 1004, dtype=np.int64)
    available = np.arange(1, 401, dtype=np.int64)
    ours = pd.DataFrame({"item_id": [1000, 1001], "user_id": [1, 1]})
    q, r = M.quality_figures(_affinity, items, ours, available, np.ones(400), available, None, None, None,
                             ["two_tower"], 20, 3, rng, M.OptimumParams(max_pairs=400))
    _, _, exact = B.optimum_assign(B.truth_grid(_affinity, items, available), 20, 3)
    assert q["optimum_pool_users"] == 100 and q["optimum_screened_users"] == 300
    assert q["optimum_lower_bound"] <= exact + 1e-9 <= q["optimum_upper_bound"] + 2e-9
    assert q["optimum_exact"] is (q["optimum_gap"] <= 1e-4)
    assert q["expected_feedback_optimum"] is None or q["optimum_exact"]
    assert 0 < q["optimum_ratio"] <= q["optimum_ratio_at_most"]
    assert r["truth_best_users_per_item"] == 20
    assert q["recall_at_l"] is None  # no logged positives given
    assert r["truth_recall"]["two_tower"] is None  # no candidates given


def test_channel_shares_sum_to_one():
    share, anyc = FG.channel_shares(pa.array([["a"], ["a", "b"], ["b", "c", "a"], []], pa.list_(pa.string())))
    assert sum(share.values()) == pytest.approx(3 / 4)  # the pair without provenance counts for nobody
    assert share["a"] == pytest.approx((1 + 0.5 + 1 / 3) / 4)
    assert anyc == pytest.approx({"a": 0.75, "b": 0.5, "c": 0.25})


# ====================================================================== synthetic truth (tiny world)
def test_evaluate_with_synthetic_truth(tiny_world, tmp_path, spark):
    """Derived tables hand-built on a copy of the tiny world: a truth-driven dispatch must beat
    random and popular users on expected visible feedback, and its candidates hold the true best."""
    import shutil

    from dualrec.dispatch import assign_arrays
    from dualrec.synth.truth import Truth

    root = str(tmp_path / "w")
    shutil.copytree(tiny_world, root)
    lk = Lake(root)
    day = dt.date(2026, 1, 10)
    nxt = day + dt.timedelta(days=1)
    truth = Truth.load(root)
    cfg = DualRecConfig().with_override("dispatch.L", 20).with_override("dispatch.Q", 5)
    users = lk.read_table("users", day, ["user_id"]).column("user_id").to_numpy()
    items_t = lk.read_table("items", day, ["item_id", "upload_ts"])
    items = items_t.column("item_id").to_numpy()[np.argsort(items_t.column("upload_ts").cast(pa.int64()).to_numpy(), kind="stable")]
    p = truth.activity_prob(users, nxt)
    avail = users[np.argsort(-p, kind="stable")[: len(users) // 2]]
    lk.write_table("activity_scores", day, pa.table({"user_id": users, "p_active": p, "available": np.isin(users, avail)}))
    # candidates: every available user for every item, scored by truth; channel two_tower for the
    # true top 60, i2i2u for a random 60
    ii = np.repeat(items, avail.size)
    uu = np.tile(avail, items.size)
    g = truth.expected_visible_feedback(uu, ii, nxt)
    rank = pd.Series(-g).groupby(ii).rank(method="first").to_numpy()
    rnd = np.random.default_rng(0).random(g.size) < 60 / avail.size
    keep = (rank <= 60) | rnd
    chans = [["two_tower", "i2i2u"] if a and b else ["two_tower"] if a else ["i2i2u"] for a, b in zip(rank[keep] <= 60, rnd[keep])]
    lk.write_table("candidates", day, pa.table({
        "batch": np.zeros(keep.sum(), np.int32), "item_id": ii[keep], "user_id": uu[keep],
        "score_two_tower": g[keep], "score_i2i2u": g[keep], "score_i2u2u": np.full(keep.sum(), np.nan),
        "channels": chans}))
    pos = {int(i): k for k, i in enumerate(items)}
    ip = np.array([pos[int(i)] for i in ii[keep]])
    mask = assign_arrays(ii[keep], uu[keep], g[keep], ip, 5, 20, "arrival")
    lk.write_table("match_sets", day, pa.table({
        "batch": np.zeros(mask.sum(), np.int32), "user_id": uu[keep][mask], "item_id": ii[keep][mask],
        "g": g[keep][mask], "rank_in_item": np.ones(mask.sum(), np.int32),
        "channels": [c for c, k in zip(chans, mask) if k]}))

    m = M.evaluate(lk, day, cfg, spark=spark)
    _assert_all_paths(m)
    q, r, a = m["quality"], m["retrieval"]["truth_recall"], m["activity"]
    assert q["truth_available"] is True
    assert q["feedback_per_pair"] > 1.2 * q["feedback_per_pair_random"]
    assert q["feedback_per_pair"] > q["feedback_per_pair_popular"]
    # the optimum over every (item, available user) pair: certified, and its bound is above every assignment
    assert q["optimum_exact"] is True, {k: v for k, v in q.items() if "optimum" in k}
    assert q["optimum_gap"] <= 1e-4 and q["optimum_screened_users"] == 0
    for k in ("", "_random", "_popular", "_arrival"):
        if q[f"expected_feedback{k}"] is not None:
            assert q["optimum_upper_bound"] >= q[f"expected_feedback{k}"], k
    assert q["optimum_all_users_upper_bound"] >= q["optimum_lower_bound"]
    assert 0 < q["optimum_ratio"] <= q["optimum_ratio_at_most"] <= 1 + 1e-4
    assert 0.0 <= q["items_reaching_feedback"] <= q["items_reaching_feedback_optimum"] + 1.0
    assert r["merged"] == pytest.approx(1.0) and r["two_tower"] > 0.9 > r["i2i2u"]
    assert r["i2u2u"] is None or r["i2u2u"] == 0.0
    assert m["dispatch"]["max_du"] <= 5 and m["dispatch"]["items"] == items.size
    assert a["hit_rate"] > a["hit_rate_all_users"]
    for k in ("recall_at_l", "recall_at_l_random", "recall_at_l_popular"):
        assert q[k] is None or 0.0 <= q[k] <= 1.0
    assert q["recall_at_l"] is not None


def test_optimum_equals_the_lp_and_bounds_algorithm1():
    """The min-cost-flow optimum equals the b-matching LP (integral: the constraint matrix is
    totally unimodular) solved independently by scipy's HiGHS, and bounds Algorithm 1."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    rng = np.random.default_rng(5)
    values = rng.random((8, 11)) * (rng.random((8, 11)) < 0.7)
    L, Q = 3, 2
    it, us, total = B.optimum_assign(values, L, Q)
    df = pd.DataFrame({"i": it, "u": us})
    assert df.groupby("i").size().max() <= L and df.groupby("u").size().max() <= Q
    assert total == pytest.approx(values[it, us].sum())
    n_i, n_u = values.shape
    rows = np.r_[np.repeat(np.arange(n_i), n_u), n_i + np.tile(np.arange(n_u), n_i)]
    cols = np.r_[np.arange(n_i * n_u), np.arange(n_i * n_u)]
    A = coo_matrix((np.ones(rows.size), (rows, cols)), shape=(n_i + n_u, n_i * n_u))
    lp = linprog(-values.ravel(), A_ub=A, b_ub=np.r_[np.full(n_i, L), np.full(n_u, Q)], bounds=(0, 1), method="highs")
    assert total == pytest.approx(-lp.fun, rel=1e-6)
    ip, ui = np.repeat(np.arange(n_i), n_u), np.tile(np.arange(n_u), n_i)
    a_it, a_us = B.assign_capped(ip, ui, values.ravel(), L, Q)
    assert values[a_it, a_us].sum() <= total + 1e-9


def test_coverage_by_hour_follows_the_given_item_order():
    match = pd.DataFrame({"item_id": [7], "user_id": [1]})
    d = FG.dispatch_figures(match, np.array([9, 7]), np.array([1, 2]), L=2, Q=1, upload_hour=np.array([3, 20]))
    assert d["coverage_by_hour"][3] == 0.0 and d["coverage_by_hour"][20] == 1.0 and d["coverage"] == 0.5


def test_creator_figures_and_feedback_figures():
    per_item = np.array([0, 1, 4, 5])
    f = FG.creator_figures(per_item, n_available=3, L=5, Q=4)  # m = min(5, 12 // 4) = 3
    assert f["coverage"] == 0.75 and f["fair_share"] == 3 and f["fair_served"] == 0.5
    assert FG.gini(np.array([2, 2, 2])) == 0.0 and FG.gini(np.array([0, 0, 9])) == pytest.approx(2 / 3)
    ff = FG.feedback_figures(np.array([1, 1, 2]), np.array([1, 2, 3]), np.array([0.6, 0.5, 0.2]))
    assert ff["expected_feedback"] == pytest.approx(1.3) and ff["feedback_per_pair"] == pytest.approx(1.3 / 3)
    assert ff["items_reaching_feedback"] == pytest.approx(1 / 3)  # item 1 only (1.1); item 3 got nobody


@pytest.mark.parametrize("L", [1, 2, 3])
def test_no_store_histogram_is_the_same_from_spark_numpy_and_the_edges_in_memory(lake, spark, L):
    """evaluate passes the ranked pairs it already read; the histogram must not depend on the path
    (at scale the old path was a Spark window)."""
    from dualrec.evaluation.experiment import day_edges

    want = M.no_store_hist(lake, DAY, L)  # NumPy on a fresh read
    assert M.no_store_hist(lake, DAY, L, spark, spark_rows=0) == want  # the Spark window
    assert M.no_store_hist(lake, DAY, L, edges=day_edges(lake, DAY)) == want
    assert sum(i * c for i, c in enumerate(want)) == min(L, 4) + min(L, 3) + min(L, 1)  # pairs: each item's top L


def test_arrival_baseline_from_the_edges_in_memory_equals_the_filtered_read(lake):
    from dualrec.evaluation.experiment import day_edges

    for sample in (np.array([100, 101, 102]), np.array([102, 100])):
        avail = np.arange(1, 9, dtype=np.int64)
        read = M._arrival_baseline(lake, DAY, sample, avail, 3, 2)
        mem = M._arrival_baseline(lake, DAY, sample, avail, 3, 2, day_edges(lake, DAY))
        assert len(read) > 0
        pd.testing.assert_frame_equal(read.reset_index(drop=True), mem.reset_index(drop=True))
