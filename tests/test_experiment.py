"""Co-diverted experiments (issue 19): config, stable assignment, per-arm dispatch, no cross-arm pairs."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from dualrec.config import ConfigError, DualRecConfig, ExperimentConfig
from dualrec.dispatch import dispatch_day_arrays
from dualrec.evaluation import evaluate
from dualrec.evaluation.experiment import bootstrap_difference, creator_sums, figure_values, item_values
from dualrec.evaluation.report import write_report
from dualrec.experiment import arm_configs, assign, assign_names, buckets_table, read_manifest
from dualrec.lake import Lake
from dualrec.stages.base import StageContext

DAY = dt.date(2026, 3, 2)
AB = {"arms": {"control": {"share": 0.5, "overrides": {"dispatch.policy": "arrival", "dispatch.Q": 1, "dispatch.L": 2}},
               "treatment": {"share": 0.5, "overrides": {}}}, "salt": 3}


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("arms, needle", [
    ({"control": {"share": 0.5, "overrides": {"dispatch.policy": "arival"}}, "treatment": {"share": 0.5}}, "dispatch.policy"),
    ({"control": {"share": 0.5, "overrides": {"dispatch.QQ": 3}}, "treatment": {"share": 0.5}}, "unknown config key 'dispatch.QQ'"),
    ({"control": {"share": 0.5, "overrides": {"rank.beta.like": 2.0}}, "treatment": {"share": 0.5}}, "run once for all arms"),
    ({"control": {"share": 0.5, "overrides": {"dispatch.batches_per_day": 2}}, "treatment": {"share": 0.5}}, "shared by all arms"),
    ({"control": {"share": 0.5, "overrides": {"dispatch.Q": 0}}, "treatment": {"share": 0.5}}, "dispatch.Q"),
    ({"control": {"share": 0.6}, "treatment": {"share": 0.5}}, "sum to 1"),
    ({"control": {"share": 0.0}, "treatment": {"share": 1.0}}, "share"),
    ({"a": {"share": 0.5}, "b": {"share": 0.5}}, "control arm 'control' is not an arm"),
    ({"control": {"share": 0.5, "overide": {}}, "treatment": {"share": 0.5}}, "overide"),
])
def test_bad_experiment_config_is_refused_at_load_time(arms, needle):
    with pytest.raises(ConfigError) as e:
        DualRecConfig.from_dict({"experiment": {"arms": arms}})
    assert needle in str(e.value)


def test_arm_configs_apply_overrides_over_the_base():
    cfg = DualRecConfig.from_dict({"dispatch": {"L": 7}, "experiment": AB})
    confs = arm_configs(cfg)
    assert confs["control"].dispatch.policy == "arrival" and confs["control"].dispatch.Q == 1
    assert confs["treatment"].dispatch.policy == cfg.dispatch.policy and confs["treatment"].dispatch.L == 7
    assert not confs["control"].experiment.arms


# ----------------------------------------------------------------------------- assignment
def test_assignment_is_stable_proportional_and_salted():
    exp = ExperimentConfig.model_validate({"arms": {"control": {"share": 0.3}, "treatment": {"share": 0.7}}, "salt": 11})
    ids = np.arange(200_000, dtype=np.int64) * 13 + 5
    for kind in ("user", "creator"):
        a = assign(ids, kind, exp)
        assert abs((a == 0).mean() - 0.3) < 0.01  # users and creators in the same proportions
        perm = np.random.default_rng(0).permutation(ids.size)
        assert np.array_equal(assign(ids[perm], kind, exp), a[perm])  # per id, whatever the order or batch
        assert np.array_equal(assign(ids[:10], kind, exp), a[:10])
    flipped = ExperimentConfig.model_validate({"arms": {"treatment": {"share": 0.7}, "control": {"share": 0.3}}, "salt": 11})
    assert np.array_equal(assign(ids, "user", flipped), assign(ids, "user", exp))  # YAML order is irrelevant
    other = exp.model_copy(update={"salt": 12})
    assert (assign(ids, "user", other) != assign(ids, "user", exp)).mean() > 0.3
    assert (assign(ids, "user", exp) != assign(ids, "creator", exp)).mean() > 0.3  # kinds are independent
    t = buckets_table(ids[:50], ids[:20], exp)
    assert t.num_rows == 70 and set(t.column("kind").to_pylist()) == {"user", "creator"}


# ----------------------------------------------------------------------------- differences
def test_item_values_and_creator_sums_by_hand():
    v = item_values(np.array([10, 11, 12]), np.array([10, 10, 12, 99]), np.array([1, 2, 3, 4]), m=4,
                    score_fn=lambda u, i: u.astype(float) / 2)
    assert v["pairs"].tolist() == [2, 0, 1] and v["covered"].tolist() == [1, 0, 1] and v["fair_served"].tolist() == [1, 0, 0]
    assert v["feedback"].tolist() == [1.5, 0, 1.5] and v["reaching"].tolist() == [1, 0, 1]
    s = creator_sums(np.array([7, 7, 8]), v)
    f = figure_values(s)
    assert f["dispatch.coverage"] == pytest.approx(2 / 3) and f["quality.expected_feedback_per_creator"] == pytest.approx(1.5)
    assert f["quality.feedback_per_pair"] == pytest.approx(1.0)


def test_bootstrap_difference_is_seeded_and_covers_a_null_effect():
    rng = np.random.default_rng(1)

    def arm(n, p):
        items = rng.integers(1, 5, n).astype(float)
        return {"items": items, "covered": rng.binomial(items.astype(int), p).astype(float), "creators": np.ones(n)}

    t, c = arm(400, 0.7), arm(400, 0.5)
    d = bootstrap_difference(t, c, B=500, seed=3)["dispatch.coverage"]
    assert d["estimate"] == pytest.approx(t["covered"].sum() / t["items"].sum() - c["covered"].sum() / c["items"].sum())
    assert d["ci_low"] < d["estimate"] < d["ci_high"] and d["ci_low"] > 0.1
    assert bootstrap_difference(t, c, B=500, seed=3)["dispatch.coverage"] == d
    same = bootstrap_difference(arm(400, 0.5), c, B=500, seed=3)["dispatch.coverage"]
    assert same["ci_low"] < 0 < same["ci_high"]
    assert bootstrap_difference(t, c, B=500)["quality.feedback_per_pair"]["estimate"] is None  # no truth: null


# ----------------------------------------------------------------------------- the stage
def _world(day: dt.date, seed: int, n_items: int = 60, n_users: int = 80, batches: int = 2):
    rng = np.random.default_rng(seed)
    t0 = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
    secs = np.sort(rng.integers(0, 86_400, n_items))
    item_ids = np.arange(1000 * seed, 1000 * seed + n_items)
    items = pa.table({
        "item_id": pa.array(item_ids, pa.int64()),
        "creator_id": pa.array(rng.integers(0, 30, n_items), pa.int64()),
        "upload_ts": pa.array([t0 + dt.timedelta(seconds=int(s)) for s in secs], pa.timestamp("us", tz="UTC")),
        "category": pa.array(np.zeros(n_items), pa.int32()),
        "duration_ms": pa.array(np.full(n_items, 1000), pa.int64()),
        "content_emb": pa.array(list(rng.normal(size=(n_items, 4)).astype(np.float32)), pa.list_(pa.float32())),
    })
    user_ids = np.arange(1, n_users + 1) * 7
    activity = pa.table({"user_id": pa.array(user_ids, pa.int64()), "p_active": pa.array(rng.random(n_users)),
                         "available": pa.array(rng.random(n_users) < 0.9)})
    it, us = np.repeat(item_ids, 20), np.concatenate([rng.choice(user_ids, 20, replace=False) for _ in item_ids])
    n = it.size
    ranked = pa.table({
        "batch": pa.array(np.repeat((secs // (86_400 / batches)).astype(np.int32), 20), pa.int32()),
        "item_id": pa.array(it, pa.int64()), "user_id": pa.array(us, pa.int64()),
        "channels": pa.array([["two_tower"]] * n, pa.list_(pa.string())),
        **{f"s_{t}": pa.array(np.full(n, 0.1), pa.float32())
           for t in ("like", "comment", "follow", "share", "profile_enter", "long_view")},
        "theta": pa.array(np.full(n, 0.2), pa.float32()),
        "g": pa.array(rng.random(n).astype(np.float32)),
    })
    return items, activity, ranked


def _lake(tmp_path, days=((DAY, 1),)):
    lake = Lake(str(tmp_path / "lake"))
    lake.write_meta({"emb_dim": 4})
    worlds = {}
    for day, seed in days:
        worlds[day] = _world(day, seed)
        for name, t in zip(("items", "activity_scores", "ranked"), worlds[day]):
            lake.write_table(name, day, t)
    return lake, worlds


def _run(lake, spark, day=DAY, experiment=None, **dispatch):
    from dualrec.stages.dispatch import run

    data = {"dispatch": {"L": 5, "Q": 3, "batches_per_day": 2, "policy": "matching", **dispatch}}
    if experiment is not None:
        data["experiment"] = experiment
    return run(StageContext(lake=lake, day=day, cfg=DualRecConfig.from_dict(data), _spark=spark))


def _pairs(lake, day=DAY) -> set[tuple[int, int]]:
    t = lake.read_table("match_sets", day, ["item_id", "user_id"])
    return set(zip(t.column("item_id").to_pylist(), t.column("user_id").to_pylist()))


def test_arms_are_dispatched_apart_with_their_own_caps(tmp_path, spark):
    lake, worlds = _lake(tmp_path)
    items, activity, ranked = worlds[DAY]
    stats = _run(lake, spark, experiment=AB)
    exp = DualRecConfig.from_dict({"experiment": AB}).experiment
    b = lake.read_table("buckets", DAY).to_pandas()
    user_arm = dict(zip(b[b.kind == "user"].id, b[b.kind == "user"].arm))
    creator_arm = dict(zip(b[b.kind == "creator"].id, b[b.kind == "creator"].arm))
    assert set(user_arm) == set(activity.column("user_id").to_pylist())
    assert list(assign_names(list(user_arm), "user", exp)) == list(user_arm.values())
    item_arm = {i: creator_arm[c] for i, c in zip(items.column("item_id").to_pylist(), items.column("creator_id").to_pylist())}
    ms = lake.read_table("match_sets", DAY).to_pandas()
    assert len(ms) > 0 and stats["cross_arm_pairs"] == 0
    assert all(user_arm[u] == item_arm[i] for i, u in zip(ms.item_id, ms.user_id))  # no cross-arm dispatch
    for arm, (L, Q) in {"control": (2, 1), "treatment": (5, 3)}.items():
        sub = ms[ms.item_id.map(item_arm) == arm]
        assert len(sub) > 0
        assert sub.groupby("user_id").size().max() <= Q and sub.groupby("item_id").size().max() <= L
    # each arm equals the NumPy day dispatch of its own items x its own users, under its own caps
    order = np.lexsort((items.column("item_id").to_numpy(), pc.cast(items.column("upload_ts"), pa.int64()).to_numpy()))
    rank_of = dict(zip(items.column("item_id").to_numpy()[order].tolist(), range(len(order))))
    avail = activity.filter(activity.column("available")).column("user_id").to_numpy()
    r = ranked.to_pandas()
    for arm, (L, Q, policy) in {"control": (2, 1, "arrival"), "treatment": (5, 3, "matching")}.items():
        e = r[(r.item_id.map(item_arm) == arm) & (r.user_id.map(user_arm) == arm)]
        mine = avail[[user_arm[u] == arm for u in avail]]
        mask, _ = dispatch_day_arrays(e.batch, e.item_id, e.user_id, e.g, e.item_id.map(rank_of), mine, L, Q, policy,
                                      batches_per_day=2)
        got = {(i, u) for i, u in zip(ms.item_id, ms.user_id) if item_arm[i] == arm}
        assert got == set(zip(e.item_id[mask], e.user_id[mask]))
    au = lake.read_table("available_users", DAY)
    assert au.num_rows == 2 * avail.size
    m = read_manifest(lake, DAY)
    assert m["arms"]["control"]["dispatch"]["Q"] == 1 and m["arms"]["treatment"]["dispatch"]["Q"] == 3
    # evaluate: per-arm figures, the difference with its interval, no cross-arm pair; the report shows them
    metrics = evaluate(lake, DAY, DualRecConfig.from_dict({"dispatch": {"L": 5, "Q": 3, "batches_per_day": 2}}))
    e = metrics["experiment"]
    assert e["cross_arm_pairs"] == 0 and set(e["arms"]) == {"control", "treatment"}
    assert e["arms"]["control"]["dispatch"]["q"] == 1 and e["arms"]["control"]["dispatch"]["max_du"] <= 1
    assert e["arms"]["treatment"]["dispatch"]["l"] == 5 and e["arms"]["control"]["dispatch"]["policy"] == "arrival"
    assert e["arms"]["control"]["dispatch"]["pairs"] + e["arms"]["treatment"]["dispatch"]["pairs"] == len(ms)
    cov = e["difference"]["dispatch.coverage"]
    assert cov["ci_low"] <= cov["estimate"] <= cov["ci_high"] and cov["true"] is None  # no truth here
    html = open(write_report(lake, DAY, metrics).removeprefix("file://")).read()
    assert "co-diverted" in html and "dispatch.coverage" in html


def test_assignment_is_stable_across_days_and_reruns_and_a_plain_rerun_replaces_it(tmp_path, spark):
    day2 = DAY + dt.timedelta(days=1)
    lake, _ = _lake(tmp_path, ((DAY, 1), (day2, 2)))
    _run(lake, spark, experiment=AB)
    first, pairs = lake.read_table("buckets", DAY), _pairs(lake)
    _run(lake, spark, experiment=AB)
    assert lake.read_table("buckets", DAY).equals(first) and _pairs(lake) == pairs
    _run(lake, spark, day=day2, experiment=AB)
    a = first.to_pandas().set_index(["kind", "id"]).arm
    b = lake.read_table("buckets", day2).to_pandas().set_index(["kind", "id"]).arm
    common = a.index.intersection(b.index)
    assert len(common) > 50 and (a[common] == b[common]).all()
    _run(lake, spark)  # a plain rerun replaces the experiment's outputs
    assert not lake.has_partition("buckets", DAY) and read_manifest(lake, DAY) is None


def test_one_arm_experiment_equals_a_plain_run(tmp_path, spark):
    lake, _ = _lake(tmp_path)
    _run(lake, spark)
    plain = lake.read_table("match_sets", DAY).sort_by([("item_id", "ascending"), ("user_id", "ascending")])
    _run(lake, spark, experiment={"arms": {"only": {"share": 1.0, "overrides": {}}}})
    one = lake.read_table("match_sets", DAY).sort_by([("item_id", "ascending"), ("user_id", "ascending")])
    assert one.equals(plain) and not lake.has_partition("buckets", DAY)
