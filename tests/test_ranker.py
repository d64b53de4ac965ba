"""Multi-task ranker (torch), score integration (Spark) and the rank stage on the tiny world."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dualrec.config import DualRecConfig
from dualrec.ranking import (
    integrated_score,
    integrated_score_np,
    theta_expr,
    theta_values,
)
from dualrec.stats import roc_auc as auc
from models.ranker import (
    ITEM_ID_POS,
    TASKS,
    RankerSpec,
    augment,
    featurize,
    input_columns,
    labels_of,
    load_ranker,
    new_model,
    predict,
    save_ranker,
    train_ranker,
)

SPEC = RankerSpec(profile_dim=4, id_buckets=256, cat_buckets=8, emb_dim=4, hidden=16)


def _frame(n: int, seed: int = 0, signal: bool = True) -> pd.DataFrame:
    """Feature rows where the like / long_view labels depend on the user-item profile match."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({c: rng.normal(size=n).astype(np.float32) for c in input_columns(SPEC.profile_dim)})
    for c in ("user_id", "item_id", "creator_id", "category", "age_bucket", "gender", "region", "device"):
        df[c] = rng.integers(0, 50, n)
    match = sum(df[f"u_prof_{k}"] * df[f"i_proj_{k}"] for k in range(SPEC.profile_dim))
    p = 1 / (1 + np.exp(-(2.5 * match - 2))) if signal else np.full(n, 0.1)
    for t in TASKS:
        df[f"y_{t}"] = (rng.random(n) < p).astype(np.int8)
    return df


def test_featurize_and_augment_mask_item_id():
    df = _frame(10)
    cat, dense = featurize(df, SPEC)
    assert cat.shape == (10, 8) and (cat[:, ITEM_ID_POS] > 0).all()  # bucket 0 is reserved for "masked"
    assert dense.shape == (10, SPEC.n_dense) and np.isfinite(dense).all()
    y = labels_of(df)
    c2, d2, y2 = augment(cat, dense, y)
    assert len(c2) == 20
    np.testing.assert_array_equal(c2[:10], cat)
    assert (c2[10:, ITEM_ID_POS] == 0).all()
    np.testing.assert_array_equal(np.delete(c2[10:], ITEM_ID_POS, 1), np.delete(cat, ITEM_ID_POS, 1))
    np.testing.assert_array_equal(d2[10:], dense)
    np.testing.assert_array_equal(y2[10:], y)
    cm, _ = featurize(df, SPEC, mask_item_id=True)
    assert (cm[:, ITEM_ID_POS] == 0).all()
    # EF switch controls the dense width
    no_ef = RankerSpec(**{**SPEC.__dict__, "extra_features": False})
    assert featurize(df, no_ef)[1].shape[1] < dense.shape[1]


def test_loss_decreases_and_learns_signal():
    train, test = _frame(4000, 1), _frame(2000, 2)
    m = new_model(SPEC, 0)
    cat, dense = featurize(train, SPEC)
    rep = train_ranker(m, cat, dense, labels_of(train), epochs=4, batch_size=256, lr=0.01, seed=0)
    assert rep["train_rows"] == 8000 and rep["rows"] == 4000  # SA doubles the rows
    assert rep["epoch_loss"][-1] < rep["epoch_loss"][0]
    c2, d2 = featurize(test, SPEC, mask_item_id=True)
    s = predict(m, c2, d2)
    assert auc(labels_of(test)[:, 0], s[:, 0]) > 0.7


def test_task_without_positives_is_skipped_without_nan():
    df = _frame(600, 3)
    df["y_share"] = 0
    m = new_model(SPEC, 0)
    cat, dense = featurize(df, SPEC)
    rep = train_ranker(m, cat, dense, labels_of(df), epochs=2, batch_size=128, lr=0.01, seed=0)
    assert rep["skipped_tasks"] == ["share"]
    assert all(np.isfinite(rep["epoch_loss"]))
    s = predict(m, cat, dense)
    assert np.isfinite(s).all()
    assert (s[:, TASKS.index("share")] == 0).all() and (s[:, TASKS.index("like")] > 0).all()


def test_save_load_roundtrip(tmp_path):
    from dualrec.lake import Lake

    lake = Lake(str(tmp_path))
    df = _frame(300, 4)
    m = new_model(SPEC, 0)
    cat, dense = featurize(df, SPEC)
    train_ranker(m, cat, dense, labels_of(df), epochs=1, batch_size=128, lr=0.01, seed=0)
    with lake.publish_dir(Lake.model_rel("ranker", "2026-01-05")) as rel:
        save_ranker(m, lake, rel, {"train_start": "2026-01-01", "train_end": "2026-01-04"})
    m2 = load_ranker(lake, "2026-01-05")
    assert m2.manifest["train_end"] == "2026-01-04"
    np.testing.assert_allclose(predict(m2, cat, dense), predict(m, cat, dense), rtol=1e-6)


def test_theta_smoothing_new_user(spark):
    a, g = 20.0, 0.05
    assert theta_values(np.array([0.0]), np.array([0.0]), a, g)[0] == pytest.approx(g)
    assert theta_values(np.array([50.0]), np.array([100.0]), a, g)[0] == pytest.approx((50 + a * g) / (100 + a))
    df = spark.createDataFrame([(1, None, None), (2, 50, 100)], "user_id long, u_n_explicit long, u_n_imp long")
    got = {r["user_id"]: r["t"] for r in df.select("user_id", theta_expr(a, g).alias("t")).collect()}
    assert got[1] == pytest.approx(g) and got[1] > 0
    assert got[2] == pytest.approx((50 + a * g) / (100 + a))


def test_g_formula_on_ten_rows(spark):
    rng = np.random.default_rng(5)
    s = rng.random((10, len(TASKS))).astype(np.float32)
    theta = rng.uniform(0.01, 0.3, 10).astype(np.float32)
    beta = DualRecConfig().rank.beta
    pdf = pd.DataFrame({f"s_{t}": s[:, k] for k, t in enumerate(TASKS)})
    pdf["theta"] = theta
    pdf["row"] = np.arange(10)
    got = integrated_score(spark.createDataFrame(pdf), beta).orderBy("row").toPandas()["g"].to_numpy()
    manual = np.array([sum(beta[t] * float(s[r, k]) for k, t in enumerate(TASKS)) / float(theta[r]) for r in range(10)])
    np.testing.assert_allclose(got, manual, rtol=1e-5)
    np.testing.assert_allclose(integrated_score_np(s.astype(np.float64), theta.astype(np.float64), beta), manual, rtol=1e-5)
    # explicit feedback outweighs long view in the default beta
    assert min(beta[t] for t in ("like", "comment", "follow", "share")) > beta["long_view"]


def test_auc_helper():
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert auc(np.array([0, 0]), np.array([0.1, 0.2])) is None


# ---------------------------------------------------------------------- tiny world: stage + point in time
FAST = {"rank.train_window_days": 2, "rank.user_window_days": 3, "rank.item_history_days": 2, "rank.epochs": 1,
        "rank.id_buckets": 4096, "dispatch.batches_per_day": 4}


@pytest.fixture(scope="module")
def ranked_world(tiny_world, spark):
    from dualrec.lake import Lake
    from dualrec.stages.base import StageContext
    from dualrec.stages.rank import run

    lake = Lake(tiny_world)
    day = dt.date(2026, 1, 10)
    cfg = DualRecConfig.load(None, FAST)
    # hand-made candidates: D's items x 40 users (the retrieval stage is tested in test_channels)
    items = lake.read_table("items", day).to_pandas()
    users = lake.read_table("users", day).column("user_id").to_numpy()[:40]
    secs = (items["upload_ts"] - items["upload_ts"].dt.normalize()).dt.total_seconds().to_numpy()
    cand = pd.DataFrame({
        "item_id": np.repeat(items["item_id"].to_numpy(), len(users)),
        "user_id": np.tile(users, len(items)),
        "batch": np.repeat((secs // (86400 / 4)).astype(np.int32), len(users)),
    })
    n = len(cand)
    t = pa.table({
        "batch": pa.array(cand["batch"], pa.int32()), "item_id": pa.array(cand["item_id"], pa.int64()),
        "user_id": pa.array(cand["user_id"], pa.int64()),
        "score_two_tower": pa.array(np.ones(n, np.float32)), "score_i2i2u": pa.nulls(n, pa.float32()),
        "score_i2u2u": pa.nulls(n, pa.float32()), "channels": pa.array([["two_tower"]] * n, pa.list_(pa.string())),
    })
    lake.write_table("candidates", day, t)
    ctx = StageContext(lake=lake, day=day, cfg=cfg, _spark=spark)
    stats = run(ctx)
    return lake, day, cfg, stats, n


def test_rank_stage_writes_ranked(ranked_world):
    lake, day, cfg, stats, n = ranked_world
    assert stats["train"]["trained"] and stats["train"]["window"] == ["2026-01-08", "2026-01-09"]
    m = load_ranker(lake, day)
    assert m.manifest["train_end"] == "2026-01-09"  # D's exposures are held out
    r = lake.read_table("ranked", day).to_pandas()
    assert len(r) == n
    assert np.isfinite(r["g"]).all() and (r["theta"] > 0).all()
    s = r[[f"s_{t}" for t in TASKS]].to_numpy()
    np.testing.assert_allclose(r["g"], integrated_score_np(s, r["theta"].to_numpy(), cfg.rank.beta), rtol=1e-4)
    # scores are calibrated-ish at the batch cutoff of a brand-new item (no blow-up out of range)
    base = lake.read_table("interactions", day - dt.timedelta(days=1)).column("is_like").to_numpy().mean()
    assert 0.2 * base < r["s_like"].mean() < 5 * base


def test_ranking_auc_on_held_out_day(ranked_world, spark):
    from dualrec.ranking import ranking_auc

    lake, day, cfg, _, _ = ranked_world
    res = ranking_auc(spark, lake, day, cfg)
    assert set(res) == set(TASKS)
    assert res["like"] is not None and res["like"] > 0.6
    assert ranking_auc(spark, lake, day - dt.timedelta(days=3), cfg) == {t: None for t in TASKS}  # no model yet


def test_item_history_is_point_in_time(ranked_world, spark):
    """e_log_imp of a training row counts only the item's exposures strictly before the row."""
    from dualrec.ranking import training_frame

    lake, day, cfg, _, _ = ranked_world
    pdf, _ = training_frame(spark, lake, day, day, cfg)
    inter = lake.read_tables("interactions", [day - dt.timedelta(days=d) for d in range(cfg.rank.item_history_days + 1)],
                             ["item_id", "user_id", "ts"]).to_pandas()
    sample = pdf.sample(200, random_state=0)
    for _, row in sample.iterrows():
        before = int(((inter.item_id == row.item_id) & (inter.ts < row.ts)).sum())
        assert row.e_log_imp == pytest.approx(np.log1p(before), abs=1e-6)


def test_sa_copy_resets_item_history_to_fresh():
    """The masked copy also looks like a just-uploaded item: no exposures, prior rates, no profile."""
    from models.ranker import fresh_item_values

    df = _frame(20, 6)
    cat, dense = featurize(df, SPEC)
    y = labels_of(df)
    fresh = fresh_item_values(SPEC, y)
    cols = SPEC.dense_columns
    assert fresh[cols.index("e_log_imp")] == 0.0
    assert fresh[cols.index("e_rate_like")] == pytest.approx(y[:, 0].mean())
    _, d2, _ = augment(cat, dense, y, fresh, fresh_share=1.0)
    for c, v in fresh.items():
        assert (d2[20:, c] == v).all()
    _, d3, _ = augment(cat, dense, y, fresh, fresh_share=0.5, seed=1)
    reset = d3[20:, cols.index("e_log_imp")] == 0
    assert 0 < reset.sum() < 20 and (d3[20:][~reset] == dense[~reset]).all()
    keep = [c for c in range(dense.shape[1]) if c not in fresh]
    np.testing.assert_array_equal(d2[20:, keep], dense[:, keep])
    np.testing.assert_array_equal(d2[:20], dense)
    no_ef = RankerSpec(**{**SPEC.__dict__, "extra_features": False})
    assert fresh_item_values(no_ef, y) == {}


def test_featurize_arrow_equals_pandas_and_cleans_nulls_and_nan():
    """Scoring batches arrive as Arrow: same features as the pandas path; nulls and NaN/inf -> 0."""
    df = _frame(300, 3)
    df.loc[::5, "u_rate_like"] = np.nan
    df.loc[::7, "e_log_imp"] = np.inf
    t = pa.Table.from_pandas(df)
    t = t.set_column(t.schema.get_field_index("i_log_duration"), "i_log_duration",
                     pa.array([None if k % 4 == 0 else 1.5 for k in range(300)], pa.float32()))
    c_pd, d_pd = featurize(t.to_pandas(), SPEC)
    for inp in (t, t.to_batches(max_chunksize=128)[1]):
        c, d = featurize(inp, SPEC)
        n = len(c)
        lo = 0 if n == 300 else 128
        np.testing.assert_array_equal(c, c_pd[lo:lo + n])
        np.testing.assert_array_equal(d, d_pd[lo:lo + n])
    assert np.isfinite(d_pd).all()
    cols = SPEC.dense_columns
    assert (d_pd[::5, cols.index("u_rate_like")] == 0).all() and (d_pd[::4, cols.index("i_log_duration")] == 0).all()
    # the cross feature is the profile inner product
    k0, i0 = cols.index("u_prof_0"), cols.index("i_proj_0")
    p = SPEC.profile_dim
    np.testing.assert_allclose(d_pd[:, len(cols)], (d_pd[:, k0:k0 + p] * d_pd[:, i0:i0 + p]).sum(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels_of(t), labels_of(df))


def test_fused_predict_equals_forward():
    """predict() runs the towers as two GEMMs; it must equal the module's own forward pass."""
    import torch

    df = _frame(500, 4)
    m = new_model(SPEC, 3)
    with torch.no_grad():
        m.task_trained.fill_(1.0)
        m.task_trained[2] = 0.0
    cat, dense = featurize(df, SPEC)
    with torch.no_grad():
        ref = torch.sigmoid(m(torch.from_numpy(cat), torch.from_numpy(dense))).numpy() * m.task_trained.numpy()
    s = predict(m, cat, dense, batch_rows=128)
    np.testing.assert_allclose(s, ref, rtol=1e-5, atol=1e-6)
    assert (s[:, 2] == 0).all()


def test_driver_row_cap_follows_max_result_size(spark):
    from dualrec.ranking import driver_row_cap, parse_bytes, training_row_bytes

    assert parse_bytes("1g") == 1 << 30 and parse_bytes("512m") == 512 << 20 and parse_bytes("0") == 0
    assert parse_bytes(None) == 1 << 30
    rb = training_row_bytes(16)
    assert 300 < rb < 600  # ~100 float32 features per row
    limit = parse_bytes(spark.conf.get("spark.driver.maxResultSize", "1g")) or parse_bytes(spark.conf.get("spark.driver.memory", "1g"))
    assert driver_row_cap(spark, rb) == int(0.5 * limit / rb)


def _sides(n_users: int, n_items: int, seed: int):
    """Per-user and per-item feature tables with the columns of user/item_table_columns."""
    from models.ranker import item_table_columns, user_table_columns

    rng = np.random.default_rng(seed)
    u = pd.DataFrame({c: rng.normal(size=n_users).astype(np.float32) for c in user_table_columns(SPEC.profile_dim)})
    u["user_id"] = rng.permutation(np.arange(1000, 1000 + n_users))
    for c in ("age_bucket", "gender", "region", "device"):
        u[c] = rng.integers(0, 50, n_users)
    u["u_n_explicit"], u["u_n_imp"] = rng.integers(0, 5, n_users), rng.integers(5, 50, n_users)
    it = pd.DataFrame({c: rng.normal(size=n_items).astype(np.float32) for c in item_table_columns(SPEC.profile_dim)})
    it["item_id"] = rng.permutation(np.arange(7, 7 + n_items) * 13)
    it["creator_id"], it["category"] = rng.integers(0, 30, n_items), rng.integers(0, 20, n_items)
    return u, it


def test_featurize_pairs_equals_featurize_of_joined_rows():
    """Gathering user and item halves by ID gives exactly featurize() of the joined rows; an unknown
    user is the left join's null row (its own hashed ID, zeros elsewhere), nulls and NaN become 0."""
    from models.ranker import featurize_pairs, side_arrays

    u, it = _sides(30, 12, 8)
    u.loc[3, "u_rate_like"] = np.nan
    u.loc[4, "age_bucket"] = None
    it.loc[2, "e_log_imp"] = np.inf
    rng = np.random.default_rng(9)
    pairs = pd.DataFrame({"user_id": np.append(rng.choice(u.user_id, 200), [5, 6]),  # 5, 6: unknown users
                          "item_id": rng.choice(it.item_id, 202)})
    joined = pairs.merge(it, on="item_id", how="inner").merge(u, on="user_id", how="left")
    cat_ref, dense_ref = featurize(joined, SPEC, mask_item_id=True)
    side = side_arrays(pa.Table.from_pandas(u), pa.Table.from_pandas(it), SPEC, user_extra=("u_n_imp",))
    ur, ir = side.user_rows(joined.user_id.to_numpy()), side.item_rows(joined.item_id.to_numpy())
    assert (ir >= 0).all() and (ur == len(side.user_ids)).sum() == 2
    cat, dense = featurize_pairs(side, joined.user_id.to_numpy(), ur, ir, SPEC, mask_item_id=True)
    np.testing.assert_array_equal(cat, cat_ref)
    np.testing.assert_array_equal(dense, dense_ref)
    assert side.item_rows(np.array([1]))[0] == -1  # an item without features: its pairs are dropped
    np.testing.assert_array_equal(side.user_extra["u_n_imp"][ur], joined.u_n_imp.fillna(0).to_numpy())
    with pytest.raises(ValueError, match="duplicate user_id"):
        side_arrays(pa.Table.from_pandas(pd.concat([u, u.iloc[:1]])), pa.Table.from_pandas(it), SPEC)


@pytest.mark.parametrize("extra", [True, False])
def test_pair_scorer_equals_featurize_pairs_then_predict(extra):
    """The first layer split per user / per item gives the same probabilities as building every
    pair's feature row (unknown users keep their own hashed ID); a PROMO model is refused."""
    import dataclasses

    import torch

    from models.ranker import featurize_pairs, pair_scorer, predict_pairs, side_arrays

    spec = dataclasses.replace(SPEC, extra_features=extra)
    u, it = _sides(40, 15, 3)
    side = side_arrays(pa.Table.from_pandas(u), pa.Table.from_pandas(it), spec)
    rng = np.random.default_rng(4)
    users = np.append(rng.choice(u.user_id, 300), [5, 6, 6])  # 5, 6: unknown users
    items = rng.choice(it.item_id, 303)
    items[-3:] = items[0]
    ur, ir = side.user_rows(users), side.item_rows(items)
    m = new_model(spec, 7)
    cat, dense = featurize_pairs(side, users, ur, ir, spec, mask_item_id=True)
    m.fit_normalizer(dense * 3.0 + 1.0)  # a normaliser that shifts, scales and clips
    with torch.no_grad():
        m.task_trained.fill_(1.0)
        m.task_trained[1] = 0.0
    ref = predict(m, cat, dense)
    got = predict_pairs(m, pair_scorer(m, side), users, ur, ir, batch_rows=64)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert (got[:, 1] == 0).all()
    assert got[-1].tolist() == got[-2].tolist() and got[-2].tolist() != got[-3].tolist()  # own hashed IDs
    with pytest.raises(ValueError, match="PROMO"):
        pair_scorer(new_model(dataclasses.replace(spec, promo="m"), 0), side)


def test_fast_scoring_equals_joined_rows_path(ranked_world, spark):
    """The rank stage's per-user/per-item path (score_candidates) gives the same ranked rows as
    the joined feature rows scored by score_in_spark + integrated_score (the previous path)."""
    from dualrec.ranking import integrated_score, release, score_in_spark, scoring_rows

    lake, day, cfg, _, n = ranked_world
    model = load_ranker(lake, day)
    cand = lake.read_df(spark, "candidates", [day], with_dt=False).select("batch", "item_id", "user_id", "channels")
    cached: list = []
    try:
        rows, _ = scoring_rows(spark, lake, day, cand, cfg, cached)
        ref = integrated_score(score_in_spark(rows, model, 512), cfg.rank.beta).select(
            "batch", "item_id", "user_id", *[f"s_{t}" for t in TASKS], "theta", "g").toPandas()
    finally:
        release(cached)
    got = lake.read_table("ranked", day).to_pandas()
    keys = ["item_id", "user_id"]
    ref, got = ref.sort_values(keys).reset_index(drop=True), got.sort_values(keys).reset_index(drop=True)
    assert len(got) == len(ref) == n
    np.testing.assert_array_equal(got[keys + ["batch"]].to_numpy(), ref[keys + ["batch"]].to_numpy())
    for c in [f"s_{t}" for t in TASKS] + ["theta", "g"]:
        np.testing.assert_allclose(got[c].to_numpy(), ref[c].to_numpy(), rtol=1e-5, atol=1e-7, err_msg=c)


def test_window_sums_cover_the_days_before_feat_day(spark):
    """window_sums(feat_day) = sum of the daily rows in [feat_day - U, feat_day - 1]; no row where that
    window is empty (a left join then reads it as "no history")."""
    from dualrec.ranking import window_sums

    d0 = dt.date(2026, 1, 1)
    rows = [(1, d0, 2, 0.5), (1, d0 + dt.timedelta(days=2), 3, 1.0), (2, d0 + dt.timedelta(days=4), 7, 2.0),
            (1, d0 + dt.timedelta(days=5), 1, 4.0)]
    daily = spark.createDataFrame(rows, "user_id long, dt date, n_imp long, prof double")
    targets = [d0 + dt.timedelta(days=k) for k in range(7)]
    got = {(r["user_id"], r["feat_day"]): (r["n_imp"], r["prof"])
           for r in window_sums(spark, daily, ["user_id"], targets, 3).collect()}
    want = {}
    for t in targets:
        for u in (1, 2):
            inside = [(n, p) for (uu, d, n, p) in rows if uu == u and t - dt.timedelta(days=3) <= d <= t - dt.timedelta(days=1)]
            if inside:
                want[(u, t)] = (sum(n for n, _ in inside), sum(p for _, p in inside))
    assert got == want and (1, d0) not in got and (1, d0 + dt.timedelta(days=1)) in got
