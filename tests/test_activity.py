"""Activity prediction: features, leakage, policy, model I/O, metrics and the stage."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pytest

from dualrec import activity as A
from dualrec.config import ActivityConfig, DualRecConfig
from dualrec.evaluation.day import activity_section, load_day
from dualrec.lake import Lake, date_range
from dualrec.stages.base import StageContext
from models import activity as M
from schemas.validate import BadInputError

D0 = dt.date(2026, 1, 1)
EMB_DIM = 4


# ---------------------------------------------------------------------- hand-made lakes
def _ts(day: dt.date, hour: int = 12) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, tzinfo=dt.timezone.utc)


def _users(ids, register: dict[int, dt.date] | None = None) -> pa.Table:
    ids = list(ids)
    register = register or {}
    return pa.table(
        {
            "user_id": pa.array(ids, pa.int64()),
            "register_dt": pa.array([register.get(u, D0 - dt.timedelta(days=100)) for u in ids], pa.date32()),
            "age_bucket": pa.array([u % 5 for u in ids], pa.int32()),
            "gender": pa.array([u % 2 for u in ids], pa.int32()),
            "region": pa.array([u % 7 for u in ids], pa.int32()),
            "device": pa.array([u % 3 for u in ids], pa.int32()),
            "follower_count": pa.array([10 * u for u in ids], pa.int64()),
        }
    )


def _visits(ids) -> pa.Table:
    ids = sorted(set(ids))
    return pa.table(
        {
            "user_id": pa.array(ids, pa.int64()),
            "sessions": pa.array([2] * len(ids), pa.int32()),
            "watch_ms": pa.array([1000] * len(ids), pa.int64()),
        }
    )


def _interactions(day: dt.date, rows: list[tuple[int, int, int]]) -> pa.Table:
    """rows: (user_id, item_id, is_like)."""
    n = len(rows)
    zeros = pa.array([0] * n, pa.int8())
    return pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.int64()),
            "item_id": pa.array([r[1] for r in rows], pa.int64()),
            "ts": pa.array([_ts(day)] * n, pa.timestamp("us", tz="UTC")),
            "is_click": pa.array([1] * n, pa.int8()),
            "is_like": pa.array([r[2] for r in rows], pa.int8()),
            "is_comment": zeros,
            "is_follow": zeros,
            "is_share": zeros,
            "is_profile_enter": zeros,
            "is_long_view": zeros,
            "play_time_ms": pa.array([500] * n, pa.int64()),
        }
    )


def _items(day: dt.date, ids) -> pa.Table:
    ids = list(ids)
    return pa.table(
        {
            "item_id": pa.array(ids, pa.int64()),
            "creator_id": pa.array([1] * len(ids), pa.int64()),
            "upload_ts": pa.array([_ts(day)] * len(ids), pa.timestamp("us", tz="UTC")),
            "category": pa.array([0] * len(ids), pa.int32()),
            "duration_ms": pa.array([10_000] * len(ids), pa.int64()),
            "content_emb": pa.array([[0.1] * EMB_DIM] * len(ids), pa.list_(pa.float32())),
        }
    )


@pytest.fixture()
def five_user_lake(tmp_path) -> Lake:
    """Days D0..D0+4. User 1 every day, 2 only on the last day, 3 on days 0 and 2,
    4 never (but registered long ago), 5 registered on the last day with no history."""
    lake = Lake(str(tmp_path / "lake5"))
    lake.write_meta({"emb_dim": EMB_DIM})
    days = date_range(D0, D0 + dt.timedelta(days=4))
    visits = {0: [1, 3], 1: [1], 2: [1, 3], 3: [1], 4: [1, 2]}
    for i, d in enumerate(days):
        ids = [1, 2, 3, 4] + ([5] if i == 4 else [])
        lake.write_table("users", d, _users(ids, {5: days[4]}))
        lake.write_table("visits", d, _visits(visits[i]))
        lake.write_table("interactions", d, _interactions(d, [(u, 100 + i, int(u == 1)) for u in visits[i]]))
        lake.write_table("items", d, _items(d, [1000 + i]))
    return lake


def _world(tmp_path, n_users: int = 400, days: int = 12, seed: int = 3) -> Lake:
    """A small random world where activity follows a per-user propensity plus a streak effect,
    so yesterday's activity and the 30-day history are informative."""
    rng = np.random.default_rng(seed)
    lake = Lake(str(tmp_path / "world"))
    lake.write_meta({"emb_dim": EMB_DIM})
    prop = rng.beta(0.8, 1.2, n_users)
    active = rng.random(n_users) < prop
    ids = np.arange(1, n_users + 1)
    for i, d in enumerate(date_range(D0, D0 + dt.timedelta(days=days - 1))):
        p = np.clip(0.6 * prop + 0.35 * active, 0, 0.98)
        active = rng.random(n_users) < p
        act_ids = ids[active]
        lake.write_table("users", d, _users(ids))
        lake.write_table("visits", d, _visits(act_ids.tolist()))
        rows = [(int(u), int(1000 * i + k), int(rng.random() < 0.2)) for u in act_ids for k in range(2)]
        lake.write_table("interactions", d, _interactions(d, rows))
        lake.write_table("items", d, _items(d, range(10_000 * (i + 1), 10_000 * (i + 1) + 5)))
    return lake


def _cfg(**activity) -> DualRecConfig:
    base = {"n_estimators": 40, "early_stopping_rounds": 5, "train_target_days": 3}
    base.update(activity)
    return DualRecConfig.from_dict({"activity": base})


def _rows(df) -> dict[int, dict]:
    return {r["user_id"]: r.asDict() for r in df.collect()}


def _metrics(lake: Lake, day: dt.date) -> dict:
    """The activity figures of day D as the product computes them (``evaluate``, the metrics stage)."""
    return activity_section(load_day(lake, day), DualRecConfig())


# ---------------------------------------------------------------------- features
def test_features_are_point_in_time_and_well_defined(spark, five_user_lake):
    lake = five_user_lake
    target = D0 + dt.timedelta(days=5)  # predicting the day after the lake's last day
    f = _rows(A.features_for_target(spark, lake, target, D0 + dt.timedelta(days=4)))
    assert sorted(f) == [1, 2, 3, 4, 5]
    # act_dk = visited k days before the target
    assert [f[1][f"act_d{k}"] for k in range(1, 7)] == [1, 1, 1, 1, 1, 0]
    assert [f[2][f"act_d{k}"] for k in range(1, 6)] == [1, 0, 0, 0, 0]
    assert [f[3][f"act_d{k}"] for k in range(1, 6)] == [0, 0, 1, 0, 1]
    assert f[1]["days_since_last_visit"] == 1 and f[3]["days_since_last_visit"] == 3
    assert f[1]["active_days"] == 5 and f[3]["active_days_7"] == 2
    assert f[1]["fb_like"] == 5 and f[3]["fb_like"] == 0 and f[3]["fb_click"] == 2 and f[1]["impressions"] == 5
    assert f[1]["sessions"] == 10 and f[1]["watch_ms"] == 5000
    # users with no history: zeros and the capped recency, never null
    for u in (4, 5):
        assert all(f[u][f"act_d{k}"] == 0 for k in range(1, 31))
        assert f[u]["days_since_last_visit"] == 31
        assert f[u]["impressions"] == 0 and f[u]["fb_like"] == 0
    assert f[5]["tenure_days"] == 1 and f[4]["tenure_days"] == 105
    assert f[1]["dow"] == target.weekday() and f[1]["follower_count"] == 10
    assert all(v is not None for row in f.values() for v in row.values())
    assert list(A.features_for_target(spark, lake, target, target - dt.timedelta(days=1)).columns) == [
        "user_id",
        *A.feature_names(30),
    ]


def test_features_ignore_target_day_and_later_even_from_a_superset_frame(spark, five_user_lake):
    lake = five_user_lake
    target = D0 + dt.timedelta(days=3)
    daily = A.load_daily(spark, lake, date_range(D0, D0 + dt.timedelta(days=4)))  # includes t and t+1
    f = _rows(A.features_for_target(spark, lake, target, target - dt.timedelta(days=1), daily=daily))
    # user 2 visits only on day 4 (> target): invisible; user 1's act_d1 is day 2
    assert f[2]["active_days"] == 0 and f[2]["days_since_last_visit"] == 31
    assert f[1]["active_days"] == 3 and f[1]["fb_like"] == 3
    assert set(f) == {1, 2, 3, 4}  # users snapshot of t-1 (user 5 registers later)


def test_date_with_no_prior_history_is_a_clear_error(spark, five_user_lake):
    with pytest.raises(BadInputError, match=r"visits.*2025-12-02\.\.2025-12-31.*2026-01-01"):
        A.features_for_target(spark, five_user_lake, D0, D0 - dt.timedelta(days=1))
    with pytest.raises(BadInputError, match=r"visits.*2026-01-01"):
        A.training_target_days(five_user_lake, D0, 5)
    with pytest.raises(ValueError, match="point-in-time"):
        A.features_for_target(spark, five_user_lake, D0 + dt.timedelta(days=2), D0 + dt.timedelta(days=2))
    assert A.training_target_days(five_user_lake, D0 + dt.timedelta(days=4), 3) == date_range(
        D0 + dt.timedelta(days=2), D0 + dt.timedelta(days=4)
    )


def test_one_pass_over_several_targets_equals_one_target_at_a_time(spark, tmp_path):
    """The multi-target kernel must give each target exactly its own window's features."""
    lake = _world(tmp_path, n_users=60, days=10)
    targets = [D0 + dt.timedelta(days=k) for k in (3, 6, 9)]
    pairs = [(t, t - dt.timedelta(days=1)) for t in targets]
    together = {(r["user_id"], r["target_dt"]): r.asDict() for r in A.features_for_targets(spark, lake, pairs).collect()}
    assert len(together) == 60 * 3
    for t, ud in pairs:
        alone = _rows(A.features_for_target(spark, lake, t, ud))
        for u, row in alone.items():
            assert {k: v for k, v in together[(u, t)].items() if k != "target_dt"} == row
    # a hand-computed row: user 1, last target
    vis = {d: set(lake.read_table("visits", d, columns=["user_id"]).column("user_id").to_pylist()) for d in date_range(D0, targets[-1])}
    acts = [float(1 in vis.get(targets[-1] - dt.timedelta(days=k), set())) for k in range(1, 31)]
    row = together[(1, targets[-1])]
    assert [row[f"act_d{k}"] for k in range(1, 31)] == acts
    assert row["active_days"] == sum(acts) and row["impressions"] == 2 * sum(acts)
    assert row["days_since_last_visit"] == (acts.index(1.0) + 1 if 1.0 in acts else 31)


def test_training_sample_is_taken_before_features_and_matches_the_full_ranking(spark, tmp_path):
    """Pre-sampling by hash rank must keep exactly the rows a full sort by rank would keep."""
    lake = _world(tmp_path, n_users=300, days=8)
    targets = A.training_target_days(lake, D0 + dt.timedelta(days=7), 3)
    names = A.feature_names(30)
    full_df, counts = A.training_frame(spark, lake, targets, max_rows=None, seed=4)
    assert counts == {False: 600, True: 300}
    small_df, counts2 = A.training_frame(spark, lake, targets, max_rows=100, seed=4)
    assert counts2 == counts and small_df.count() < full_df.count()
    full = A.collect_training(full_df, names, 100, counts)
    small = A.collect_training(small_df, names, 100, counts2)
    assert full["X_train"].shape == (100, len(names)) and full["X_valid"].shape == (100, len(names))
    for k in ("X_train", "y_train", "X_valid", "y_valid"):
        np.testing.assert_array_equal(full[k], small[k])
    assert 0 < small["y_train"].mean() < 1


# ---------------------------------------------------------------------- policy
def test_demand_top_n():
    assert A.demand_top_n(100, 200, 10, 3.0) == 6000
    assert A.demand_top_n(7, 200, 10, 1.0) == 140
    assert A.demand_top_n(1, 3, 10, 1.0) == 1  # ceil
    assert A.demand_top_n(0, 200, 10, 3.0, min_available=50) == 50
    assert A.demand_top_n(100, 200, 10, 3.0, expected_active=1234.2, expected_active_cap=1.0) == 1235
    assert A.demand_top_n(100, 200, 10, 3.0, expected_active=1234.2, expected_active_cap=0.0) == 6000
    assert A.demand_top_n(1, 200, 10, 1.0, expected_active=5000, expected_active_cap=1.0) == 20
    with pytest.raises(ValueError):
        A.demand_top_n(-1, 200, 10, 1.0)


def test_policies(spark):
    p = [0.9, 0.1, 0.5, 0.5, 0.7, 0.3]
    scores = spark.createDataFrame([(i + 1, v) for i, v in enumerate(p)], "user_id long, p_active double")
    out, n = A.apply_policy(scores, ActivityConfig(policy="top_n", slack=1.0, expected_active_cap=0.0), n_items=3, L=4, Q=3)
    assert n == 4
    got = {r["user_id"]: r["available"] for r in out.collect()}
    assert sorted(u for u, a in got.items() if a) == [1, 3, 4, 5]  # ties at 0.5 both in
    out, n = A.apply_policy(scores, ActivityConfig(policy="top_n", slack=1.0, expected_active_cap=0.0), n_items=1, L=3, Q=1)
    assert n == 3
    assert sorted(r["user_id"] for r in out.collect() if r["available"]) == [1, 3, 5]  # tie -> smaller id
    out, n = A.apply_policy(scores, ActivityConfig(policy="top_n", slack=10.0, expected_active_cap=0.0), n_items=5, L=200, Q=10)
    assert out.filter("available").count() == 6  # capped by the user count
    # cap at the expected number of visitors: sum(p) = 3.0
    out, n = A.apply_policy(scores, ActivityConfig(policy="top_n", slack=10.0), n_items=5, L=200, Q=10)
    assert n == 3 and sorted(r["user_id"] for r in out.collect() if r["available"]) == [1, 3, 5]
    out, n = A.apply_policy(scores, ActivityConfig(policy="top_n"), n_items=0, L=200, Q=10)
    assert n == 0 and out.filter("available").count() == 0
    out, n = A.apply_policy(scores, ActivityConfig(policy="probability", probability_threshold=0.5), 10, 200, 10)
    assert n is None and sorted(r["user_id"] for r in out.collect() if r["available"]) == [1, 3, 4, 5]


# ---------------------------------------------------------------------- model
def test_roc_auc_with_ties_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.4
    s = np.round(rng.random(300) + 0.3 * y, 1)  # many ties
    pos, neg = s[y], s[~y]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        pos.size * neg.size
    )
    assert M.roc_auc(y, s) == pytest.approx(pairwise)
    assert M.roc_auc(np.ones(3), np.arange(3)) is None
    assert M.roc_auc(np.array([0, 1]), np.array([0.0, 1.0])) == 1.0


def test_model_train_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.random((600, 3)).astype(np.float32)
    y = (X[:, 0] + 0.2 * rng.random(600) > 0.6).astype(np.float64)
    cfg = ActivityConfig(n_estimators=30, early_stopping_rounds=5)
    m = M.train(X[:400], y[:400], X[400:], y[400:], ["a", "b", "c"], cfg, seed=5)
    assert m.manifest["auc"] > 0.9 and m.manifest["n_train"] == 400
    lake = Lake(str(tmp_path / "lk"))
    M.save(lake, D0, m, {"training_target_days": ["2026-01-01"]})
    m2 = M.load(lake, D0)
    np.testing.assert_allclose(m2.predict(X), m.predict(X))
    man = json.loads(lake.read_text("_models/activity/dt=2026-01-01/manifest.json"))
    for k in ("version", "dt", "training_target_days", "feature_names", "auc", "logloss", "n_train"):
        assert k in man
    assert str(tmp_path) not in json.dumps(man)
    m3 = M.train(X[:400], y[:400], X[400:], y[400:], ["a", "b", "c"], cfg, seed=5)
    assert m3.model_bytes() == m.model_bytes()  # deterministic


def test_spark_prediction_equals_driver_prediction(spark):
    rng = np.random.default_rng(2)
    names = ["a", "b"]
    X = rng.random((200, 2)).astype(np.float32)
    y = (X[:, 1] > 0.5).astype(np.float64)
    m = M.train(X, y, X, y, names, ActivityConfig(n_estimators=10), seed=1)
    df = spark.createDataFrame([(i, float(X[i, 0]), float(X[i, 1])) for i in range(200)], "user_id long, a double, b double")
    got = {r["user_id"]: r["p_active"] for r in A.predict_scores(spark, df.repartition(3), m.model_bytes(), names).collect()}
    np.testing.assert_allclose([got[i] for i in range(200)], m.predict(X), rtol=1e-6)


# ---------------------------------------------------------------------- stage, leakage, metrics
def _run(lake: Lake, day: dt.date, spark, cfg: DualRecConfig | None = None) -> dict:
    from dualrec.stages.activity import run

    return run(StageContext(lake=lake, day=day, cfg=cfg or _cfg(), _spark=spark))


def _scores(lake: Lake, day: dt.date) -> dict[int, tuple[float, bool]]:
    t = lake.read_table("activity_scores", day)
    return {u: (p, a) for u, p, a in zip(*(t.column(c).to_pylist() for c in ("user_id", "p_active", "available")))}


def test_stage_writes_valid_scores_and_ignores_the_future(spark, tmp_path):
    lake = _world(tmp_path)
    day = D0 + dt.timedelta(days=8)
    cfg = _cfg(slack=0.5)  # 5 items * 200 / 10 * 0.5 = 50 available users
    stats = _run(lake, day, spark, cfg)
    assert lake.validate_dir("activity_scores", day).ok
    assert stats["users"] == 400 and stats["available"] == 50 and stats["train_days"] == 3
    before = _scores(lake, day)
    feats_before = _rows(A.features_for_target(spark, lake, day + dt.timedelta(days=1), day))
    man = json.loads(lake.read_text(f"_models/activity/dt={day}/manifest.json"))
    assert man["training_target_days"] == ["2026-01-07", "2026-01-08", "2026-01-09"]
    assert man["auc"] > 0.6

    # the activity model beats "everyone" and the hit rate is computable once D+1 exists
    m = _metrics(lake, day)
    assert m["auc"] > 0.6 and m["auc_baseline_last_day"] > 0.5
    assert m["hit_rate"] is None  # no dispatch in this lake
    assert m["hit_rate_available"] > m["hit_rate_all_users"]

    # rewrite every partition after D: everyone visits, likes everything, new users appear
    for d in date_range(day + dt.timedelta(days=1), D0 + dt.timedelta(days=11)):
        ids = list(range(1, 451))
        lake.write_table("users", d, _users(ids))
        lake.write_table("visits", d, _visits(ids))
        lake.write_table("interactions", d, _interactions(d, [(u, 7, 1) for u in ids]))
        lake.write_table("items", d, _items(d, range(99_000, 99_500)))
    for d in date_range(day + dt.timedelta(days=12), day + dt.timedelta(days=14)):
        lake.write_table("visits", d, _visits(range(1, 451)))
    assert _rows(A.features_for_target(spark, lake, day + dt.timedelta(days=1), day)) == feats_before
    _run(lake, day, spark, cfg)
    assert _scores(lake, day) == before  # also: deterministic for the same inputs and seed
    assert _metrics(lake, day)["hit_rate_all_users"] == 1.0  # the future did change


def test_metrics_none_when_not_computable_and_prefer_match_sets(tmp_path, spark):
    lake = Lake(str(tmp_path / "m"))
    day = D0
    m = _metrics(lake, day)
    assert set(m) >= {"auc", "auc_baseline_last_day", "hit_rate", "hit_rate_all_users"}
    assert all(m[k] is None for k in ("auc", "auc_baseline_last_day", "hit_rate", "hit_rate_available",
                                      "hit_rate_all_users"))
    lake.write_table("users", day, _users([1, 2, 3, 4]))
    lake.write_table("visits", day, _visits([1, 2]))
    lake.write_table("visits", day + dt.timedelta(days=1), _visits([1, 3]))
    lake.write_table(
        "activity_scores",
        day,
        pa.table({"user_id": [1, 2, 3, 4], "p_active": [0.9, 0.2, 0.8, 0.1], "available": [True, True, False, False]}),
    )
    m = _metrics(lake, day)
    assert m["auc"] == 1.0 and m["auc_baseline_last_day"] == 0.5
    assert m["hit_rate"] is None  # nothing dispatched yet
    assert m["hit_rate_available"] == 0.5 and m["hit_rate_all_users"] == 0.5
    lake.write_table(
        "match_sets",
        day,
        pa.table(
            {
                "batch": pa.array([0, 0], pa.int32()),
                "user_id": [1, 1],
                "item_id": [5, 6],
                "g": pa.array([1.0, 1.0], pa.float32()),
                "rank_in_item": pa.array([0, 0], pa.int32()),
                "channels": [["two_tower"], ["i2i2u"]],
            }
        ),
    )
    m = _metrics(lake, day)
    assert m["hit_rate"] == 1.0 and m["hit_rate_available"] == 0.5


def test_stage_requires_inputs(spark, five_user_lake):
    from dualrec.lake import LakeError

    with pytest.raises(LakeError, match="dt=2026-01-09"):
        _run(five_user_lake, D0 + dt.timedelta(days=8), spark)
    with pytest.raises(BadInputError, match="prior history"):
        _run(five_user_lake, D0, spark)


def test_stage_on_tiny_world(spark, tiny_world, tmp_path):
    """The real synthetic world: scores validate, cover the snapshot, beat the last-day
    heuristic-free baseline of 'everyone', and the leakage check holds on generated data."""
    import shutil

    root = str(tmp_path / "tiny_copy")
    shutil.copytree(tiny_world, root)
    lake = Lake(root)
    day = D0 + dt.timedelta(days=10)
    cfg = _cfg(train_target_days=4, n_estimators=60)
    stats = _run(lake, day, spark, cfg)
    assert lake.validate_dir("activity_scores", day).ok
    snapshot = lake.read_table("users", day, columns=["user_id"]).num_rows
    assert stats["users"] == snapshot
    assert 0 < stats["available"] <= snapshot
    m = _metrics(lake, day)
    assert m["auc"] > 0.75, m
    assert m["hit_rate_available"] > m["hit_rate_all_users"] + 0.1, m
    before = _scores(lake, day)
    # every later partition: everyone visits
    for d in date_range(day + dt.timedelta(days=1), D0 + dt.timedelta(days=13)):
        ids = lake.read_table("users", d, columns=["user_id"]).column("user_id").to_pylist()
        lake.write_table("visits", d, _visits(ids))
    _run(lake, day, spark, cfg)
    assert _scores(lake, day) == before


# ---------------------------------------------------------------------- per-day cache of the aggregates
def _daily_rows(df) -> list[tuple]:
    cols = ["user_id", "dt", "visited", *A._COUNT_COLUMNS]
    return sorted(tuple(r[c] for c in cols) for r in df.collect())


def _entry_key(lake: Lake, d: dt.date) -> str:
    return json.loads(lake.read_text(f"{A.DAILY_CACHE}/dt={d}/_key.json"))["key"]


@pytest.mark.parametrize("driver_max_rows", [5_000_000, 0], ids=["pyarrow", "spark"])
def test_cached_daily_equals_load_daily_and_a_republished_day_is_recomputed(spark, tmp_path, monkeypatch,
                                                                            driver_max_rows):
    monkeypatch.setattr(A, "DRIVER_MAX_ROWS", driver_max_rows)  # which engine reduces a missing day
    lake = _world(tmp_path, n_users=60, days=6)
    days = date_range(D0 - dt.timedelta(days=2), D0 + dt.timedelta(days=5))  # two days before the lake begins
    ref = _daily_rows(A.load_daily(spark, lake, days))
    assert _daily_rows(A.cached_daily(spark, lake, days)) == ref  # cold: every day computed and cached
    present = date_range(D0, D0 + dt.timedelta(days=5))
    assert [d for d in days if lake.is_complete(f"{A.DAILY_CACHE}/dt={d}")] == present
    keys = {d: _entry_key(lake, d) for d in present}
    assert _daily_rows(A.cached_daily(spark, lake, days)) == ref  # warm: read back, same rows

    # republish day 3's visits: only that entry is invalid; the result follows the new delivery
    d3 = D0 + dt.timedelta(days=3)
    lake.write_table("visits", d3, _visits(range(1, 61)))
    assert A.daily_key(lake, d3) != keys[d3]
    fresh = _daily_rows(A.load_daily(spark, lake, days))
    assert fresh != ref
    assert _daily_rows(A.cached_daily(spark, lake, days)) == fresh
    assert _entry_key(lake, d3) == A.daily_key(lake, d3)
    assert {d: _entry_key(lake, d) for d in present if d != d3} == {d: k for d, k in keys.items() if d != d3}


def test_stage_with_cache_equals_stage_without_and_backfill_equals_one_day(spark, tmp_path):
    """Day D from a cold lake, from a cache filled by running D-1 first (a backfill), and from a cache
    whose entries were all computed by D's own earlier run: the same activity_scores and model."""
    import shutil

    lake = _world(tmp_path)
    day = D0 + dt.timedelta(days=8)
    root_b = str(tmp_path / "world_b")
    shutil.copytree(lake.root, root_b)
    lake_b = Lake(root_b)
    _run(lake, day, spark)  # cold cache
    cold = _scores(lake, day)
    _run(lake, day, spark)  # warm cache
    assert _scores(lake, day) == cold
    _run(lake_b, day - dt.timedelta(days=1), spark)  # backfill order: D-1 fills the cache, D reuses it
    _run(lake_b, day, spark)
    assert _scores(lake_b, day) == cold
    assert lake.read_text(f"_models/activity/dt={day}/model.json") == lake_b.read_text(f"_models/activity/dt={day}/model.json")


def test_training_and_serving_in_one_pass_equal_separate_frames(spark, tmp_path):
    lake = _world(tmp_path, n_users=120)
    day = D0 + dt.timedelta(days=8)
    targets = A.training_target_days(lake, day, 3)
    train, counts, serving, shared = A.training_and_serving(
        spark, lake, targets, (day + dt.timedelta(days=1), day), max_rows=200, seed=4
    )
    ref_train, ref_counts = A.training_frame(spark, lake, targets, max_rows=200, seed=4)
    assert counts == ref_counts == {False: 240, True: 120}  # from the users footers: 2 + 1 snapshots of 120 users
    key = lambda r: (r["user_id"], r["target_dt"])  # noqa: E731
    assert sorted(map(lambda r: r.asDict(), train.collect()), key=key) == sorted(
        map(lambda r: r.asDict(), ref_train.collect()), key=key)
    assert _rows(serving) == _rows(A.features_for_target(spark, lake, day + dt.timedelta(days=1), day))
    shared.unpersist()
