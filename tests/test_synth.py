"""Tests of the synthetic world: contract, determinism, realism targets and the truth API."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from dualrec.lake import Lake, parse_date
from dualrec.synth import generate
from dualrec.synth.model import FEEDBACK_TYPES, LONG_VIEW_FRACTION, VISIBLE_TYPES
from dualrec.synth.truth import Truth, TruthError

INPUTS = ("users", "items", "visits", "interactions")
START = parse_date("2026-01-01")


@pytest.fixture(scope="module")
def lake(tiny_world) -> Lake:
    return Lake(tiny_world)


@pytest.fixture(scope="module")
def truth(tiny_world) -> Truth:
    return Truth.load(tiny_world)


@pytest.fixture(scope="module")
def inter(lake) -> pa.Table:
    return lake.read_tables("interactions", lake.partitions("interactions"))


@pytest.fixture(scope="module")
def items(lake) -> pa.Table:
    return lake.read_tables("items", lake.partitions("items"))


def _world_tables(root: str) -> dict:
    lk = Lake(root)
    return {(t, d): lk.read_table(t, d) for t in INPUTS for d in lk.partitions(t)}


# ---------------------------------------------------------------- contract
def test_every_partition_validates_and_meta(lake):
    meta = lake.meta()
    assert meta["emb_dim"] == 128 and meta["generator"] == "dualrec.synth"
    assert (meta["preset"], meta["seed"], meta["start"], meta["days"]) == ("tiny", 7, "2026-01-01", 14)
    for t in INPUTS:
        days = lake.partitions(t)
        assert days == [START + dt.timedelta(days=k) for k in range(14)], t
        for d in days:
            rep = lake.validate_dir(t, d)
            assert rep.ok, str(rep)


def test_sizes_match_tiny_preset(lake):
    last = START + dt.timedelta(days=13)
    n_users = lake.read_table("users", last).num_rows
    assert 1900 <= n_users <= 2300
    uploads = [lake.read_table("items", d).num_rows for d in lake.partitions("items")]
    assert 70 <= np.mean(uploads) <= 130


def test_users_snapshot_grows_and_registers_new_users(lake):
    prev = None
    for d in lake.partitions("users"):
        u = lake.read_table("users", d)
        ids = u["user_id"].to_numpy()
        reg = u["register_dt"].to_numpy()
        assert (reg <= np.datetime64(d)).all()
        if prev is not None:
            assert set(prev["user_id"].to_numpy()) <= set(ids)  # a snapshot keeps every registered user
            new = ids[~np.isin(ids, prev["user_id"].to_numpy())]
            assert len(new) > 0
            assert (reg[np.isin(ids, new)] == np.datetime64(d)).all()
            # follower counts only grow (follows received)
            old = prev["follower_count"].to_numpy()
            assert (u["follower_count"].to_numpy()[: len(old)] >= old).all()
        prev = u
    assert (prev["follower_count"].to_numpy() > prev["follower_count"].to_numpy().min()).any()


def test_creators_are_users(lake, items):
    last = lake.read_table("users", lake.partitions("users")[-1])
    assert np.isin(items["creator_id"].to_numpy(), last["user_id"].to_numpy()).all()


def test_timestamps_inside_day_and_after_upload(inter, items):
    ts = inter["ts"].cast(pa.int64()).to_numpy()
    day0 = inter["dt"].cast(pa.int32()).to_numpy().astype(np.int64) * 86_400_000_000
    assert ((ts >= day0) & (ts < day0 + 86_400_000_000)).all()
    up = dict(zip(items["item_id"].to_numpy(), items["upload_ts"].cast(pa.int64()).to_numpy()))
    up_ts = np.array([up[i] for i in inter["item_id"].to_numpy()])
    assert (ts >= up_ts).all()
    # items seen are at most pool_days old
    up_day = up_ts // 86_400_000_000
    assert ((day0 // 86_400_000_000 - up_day) <= 6).all()


def test_play_time_consistent_with_long_view(inter, items):
    dur = dict(zip(items["item_id"].to_numpy(), items["duration_ms"].to_numpy()))
    d = np.array([dur[i] for i in inter["item_id"].to_numpy()])
    play = inter["play_time_ms"].to_numpy()
    lv = inter["is_long_view"].to_numpy().astype(bool)
    assert (play >= 0).all()
    assert ((play >= LONG_VIEW_FRACTION * d) == lv).all()


def test_content_embedding_is_noisy_view_of_topic(items):
    emb = np.stack(items["content_emb"].to_numpy(zero_copy_only=False)).astype(np.float64)
    assert emb.shape[1] == 128 and emb.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    cat = items["category"].to_numpy()
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(cat), (2, 20_000))
    sim = np.einsum("nd,nd->n", emb[a], emb[b])
    same, diff = sim[(cat[a] == cat[b]) & (a != b)], sim[cat[a] != cat[b]]
    assert same.mean() > diff.mean() + 0.3  # similar content ~ same topic ...
    assert same.mean() < 0.9  # ... but not perfectly


# ---------------------------------------------------------------- realism
def test_daily_active_share_in_range(lake):
    for d in lake.partitions("visits"):
        share = lake.read_table("visits", d).num_rows / lake.read_table("users", d).num_rows
        assert 0.3 <= share <= 0.5, (d, share)


def test_impressions_per_active_user(lake):
    d = lake.partitions("visits")[-1]
    per_user = lake.read_table("interactions", d).num_rows / lake.read_table("visits", d).num_rows
    assert 15 <= per_user <= 25


def test_base_rates_in_range(inter):
    rate = {t: float(pc.mean(inter[f"is_{t}"]).as_py()) for t in FEEDBACK_TYPES}
    assert 0.08 <= rate["click"] <= 0.3
    assert 0.01 <= rate["like"] <= 0.08
    for t in ("comment", "follow", "share"):
        assert 0.0005 <= rate[t] < 0.01, (t, rate[t])
    assert 0.005 <= rate["profile_enter"] <= 0.05
    assert 0.18 <= rate["long_view"] <= 0.35


def test_enthusiasts_make_theta_matter(inter, truth):
    # per-user like rates are very dispersed: a few users like most of what they see
    u = inter["user_id"].to_numpy()
    like = inter["is_like"].to_numpy().astype(float)
    ids, inv, n = np.unique(u, return_inverse=True, return_counts=True)
    rate = np.bincount(inv, weights=like) / n
    big = n >= 20
    assert np.mean(rate[big] > 0.3) > 0.02
    assert np.median(rate[big]) < 0.05


def test_new_items_get_fewer_impressions(lake):
    last = lake.partitions("interactions")[-1]
    seen = lake.read_table("interactions", last)["item_id"].to_numpy()
    ids, counts = np.unique(seen, return_counts=True)
    imps = dict(zip(ids, counts))

    def mean_imps(day):
        return np.mean([imps.get(i, 0) for i in lake.read_table("items", day)["item_id"].to_numpy()])

    fresh = mean_imps(last)
    older = np.mean([mean_imps(last - dt.timedelta(days=k)) for k in (2, 3, 4)])
    assert fresh < 0.4 * older, (fresh, older)


# ---------------------------------------------------------------- truth
def test_truth_feedback_prob_shapes_and_correlation(truth, inter):
    u, i = inter["user_id"].to_numpy(), inter["item_id"].to_numpy()
    probs = truth.feedback_prob(u, i)
    assert set(probs) == set(FEEDBACK_TYPES)
    for t, p in probs.items():
        assert p.shape == (len(u),) and ((p > 0) & (p < 1)).all()
        y = inter[f"is_{t}"].to_numpy()
        assert abs(p.mean() - y.mean()) < 0.2 * y.mean() + 0.001, t  # observed rate matches truth
    assert np.corrcoef(probs["like"], inter["is_like"].to_numpy())[0, 1] > 0.3
    assert np.corrcoef(probs["long_view"], inter["is_long_view"].to_numpy())[0, 1] > 0.15
    assert truth.feedback_prob(u[:0], i[:0])["like"].shape == (0,)


def test_truth_activity_prob(truth, lake):
    d = lake.partitions("visits")[5]
    users = lake.read_table("users", d)["user_id"].to_numpy()
    active = np.isin(users, lake.read_table("visits", d)["user_id"].to_numpy())
    p = truth.activity_prob(users, d)
    assert p.shape == users.shape and ((p >= 0) & (p <= 1)).all()
    assert p[active].mean() > p[~active].mean() + 0.3
    assert abs(p.mean() - active.mean()) < 0.05
    np.testing.assert_array_equal(truth.active(users, d), active.astype(np.int8))
    # the day after the last generated day is a forecast day: probabilities only
    assert truth.activity_prob(users, START + dt.timedelta(days=14)).shape == users.shape
    with pytest.raises(TruthError, match="no true activity"):
        truth.activity_prob(users, START + dt.timedelta(days=15))
    with pytest.raises(TruthError):
        truth.activity_prob(users, START - dt.timedelta(days=1))
    # a user registered later has probability 0 on earlier days
    last_users = lake.read_table("users", START + dt.timedelta(days=13))["user_id"].to_numpy()
    late = np.setdiff1d(last_users, users)[:3]
    assert len(late) and (truth.activity_prob(late, d) == 0).all()


def test_truth_expected_visible_feedback_and_errors(truth, inter):
    u, i = inter["user_id"].to_numpy()[:500], inter["item_id"].to_numpy()[:500]
    day = START + dt.timedelta(days=3)
    probs = truth.feedback_prob(u, i)
    expect = truth.activity_prob(u, day) * sum(probs[t] for t in VISIBLE_TYPES)
    np.testing.assert_allclose(truth.expected_visible_feedback(u, i, day), expect)
    assert truth.user_interest(u[:7]).shape == (7, 16)
    assert truth.item_latent(i[:7]).shape == (7, 16)
    assert truth.item_topics(i[:7]).shape == (7,)
    with pytest.raises(KeyError, match="unknown user_id"):
        truth.feedback_prob(np.array([-5]), i[:1])
    with pytest.raises(KeyError, match="unknown item_id"):
        truth.feedback_prob(u[:1], np.array([123]))
    with pytest.raises(ValueError, match="equal length"):
        truth.feedback_prob(u[:2], i[:3])


def test_truth_is_not_pickled(tiny_world):
    import os

    files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(tiny_world, "_truth")) for f in fs]
    assert files and all(f.endswith((".parquet", ".npy", ".json")) or f.endswith("_SUCCESS") for f in files)
    params = json.loads(open(os.path.join(tiny_world, "_truth", "params.json")).read())
    assert params["forecast_day"] == "2026-01-15"


# ---------------------------------------------------------------- determinism
def test_deterministic_given_seed_and_prefix_consistent(tmp_path):
    a, b, c, e = (str(tmp_path / x) for x in "abce")
    generate(a, "tiny", "2026-03-01", 3, seed=11)
    generate(b, "tiny", "2026-03-01", 3, seed=11)
    generate(c, "tiny", "2026-03-01", 3, seed=12)
    generate(e, "tiny", "2026-03-01", 2, seed=11)
    ta, tb, tc, te = (_world_tables(x) for x in (a, b, c, e))
    assert ta.keys() == tb.keys() == tc.keys()
    for k in ta:
        assert ta[k].equals(tb[k]), k
    assert not all(ta[k].equals(tc[k]) for k in ta)
    assert not ta[("interactions", parse_date("2026-03-01"))].equals(tc[("interactions", parse_date("2026-03-01"))])
    # a shorter world is a prefix of a longer one (per-day seed sequences)
    for k in te:
        assert te[k].equals(ta[k]), k
    d = parse_date("2026-03-03")
    ua = Truth.load(a)
    ue = Truth.load(e)
    ids = ue.user_ids
    np.testing.assert_allclose(ue.activity_prob(ids, d), ua.activity_prob(ids, d))


def test_emb_dim_parameter(tmp_path):
    root = str(tmp_path / "w")
    s = generate(root, "tiny", "2026-01-05", 1, seed=1, emb_dim=32)
    lk = Lake(root)
    assert lk.emb_dim() == 32
    emb = lk.read_table("items", "2026-01-05")["content_emb"]
    assert set(pc.list_value_length(emb).to_numpy()) == {32}
    assert s["users"] >= 2000 and set(s["positive_rate"]) == set(FEEDBACK_TYPES)
    with pytest.raises(ValueError, match="unknown synth preset"):
        generate(root, "huge", "2026-01-05", 1)


def test_spark_reads_the_world(spark, lake):
    days = lake.partitions("interactions")[:2]
    df = lake.read_df(spark, "interactions", days)
    n = df.count()
    assert n == sum(lake.read_table("interactions", d).num_rows for d in days)
    assert df.filter("ts < cast(dt as timestamp)").count() == 0
