"""Two-tower model (PyTorch), its Spark transforms and the two_tower stage on hand-made data."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from dualrec.config import DualRecConfig, TwoTowerConfig
from dualrec.lake import Lake
from dualrec.stages.base import StageContext
from models.two_tower import (
    TwoTowerModel,
    build_train_data,
    hash_ids,
    item_embeddings,
    load_two_tower,
    model_spec,
    save_two_tower,
    train_two_tower,
    user_embeddings,
)

START = dt.date(2026, 1, 1)
DIM = 8
SMALL = dict(dim=8, hidden=32, id_buckets=1024, id_dim=4, cat_buckets=16, epochs=4, batch_size=64, lr=0.01, torch_threads=1)


# ---------------------------------------------------------------------- a hand-made world
def make_world(root, days: int = 3, n_users: int = 60, items_per_day: int = 12, seed: int = 0) -> tuple[Lake, dict]:
    """Two hidden topics; users like items of their topic (p=0.7) and rarely others (p=0.03).

    Writes users / items / visits / interactions for ``days`` days and activity_scores for
    every day (first half of users by id available). Returns the lake and the hidden topics.
    """
    rng = np.random.default_rng(seed)
    lake = Lake(str(root))
    lake.write_meta({"emb_dim": DIM})
    centers = np.zeros((2, DIM), np.float32)
    centers[0, :4], centers[1, 4:] = 1.0, 1.0
    user_ids = np.arange(1000, 1000 + n_users, dtype=np.int64)
    user_topic = (np.arange(n_users) % 2).astype(int)
    item_topic: dict[int, int] = {}
    item_content: dict[int, np.ndarray] = {}
    next_item = 500
    for k in range(days):
        day = START + dt.timedelta(days=k)
        t0 = pd.Timestamp(day, tz="UTC")
        lake.write_table(
            "users",
            day,
            pa.table(
                {
                    "user_id": user_ids,
                    "register_dt": pa.array([START - dt.timedelta(days=30)] * n_users, pa.date32()),
                    "age_bucket": pa.array(rng.integers(0, 5, n_users), pa.int32()),
                    "gender": pa.array(rng.integers(0, 2, n_users), pa.int32()),
                    "region": pa.array(rng.integers(0, 4, n_users), pa.int32()),
                    "device": pa.array(rng.integers(0, 3, n_users), pa.int32()),
                    "follower_count": rng.integers(0, 100, n_users),
                }
            ),
        )
        ids = np.arange(next_item, next_item + items_per_day, dtype=np.int64)
        next_item += items_per_day
        topics = rng.integers(0, 2, items_per_day)
        content = centers[topics] + 0.3 * rng.normal(size=(items_per_day, DIM)).astype(np.float32)
        upload = [t0 + pd.Timedelta(minutes=int(m)) for m in sorted(rng.integers(0, 600, items_per_day))]
        for i, t, c in zip(ids, topics, content):
            item_topic[int(i)], item_content[int(i)] = int(t), c
        lake.write_table(
            "items",
            day,
            pa.table(
                {
                    "item_id": ids,
                    "creator_id": pa.array(rng.integers(1, 5, items_per_day), pa.int64()),
                    "upload_ts": pa.array(upload, pa.timestamp("us", tz="UTC")),
                    "category": pa.array(topics * 3 + 1, pa.int32()),
                    "duration_ms": rng.integers(5_000, 60_000, items_per_day),
                    "content_emb": pa.array(list(content.astype(np.float32)), pa.list_(pa.float32())),
                }
            ),
        )
        active = user_ids[rng.random(n_users) < 0.8]
        lake.write_table(
            "visits",
            day,
            pa.table(
                {
                    "user_id": active,
                    "sessions": pa.array(rng.integers(1, 4, len(active)), pa.int32()),
                    "watch_ms": rng.integers(1_000, 100_000, len(active)),
                }
            ),
        )
        rows = []
        for u in active:
            ut = user_topic[u - 1000]
            for i in rng.choice(ids, min(8, len(ids)), replace=False):
                p = 0.7 if item_topic[int(i)] == ut else 0.03
                like = rng.random() < p
                rows.append((u, int(i), t0 + pd.Timedelta(hours=12, minutes=int(rng.integers(0, 600))), like))
        df = pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "like"])
        flags = {f: np.zeros(len(df), np.int8) for f in ("is_click", "is_comment", "is_follow", "is_share", "is_profile_enter", "is_long_view")}
        flags["is_like"] = df["like"].to_numpy().astype(np.int8)
        flags["is_click"] = np.ones(len(df), np.int8)
        lake.write_table(
            "interactions",
            day,
            pa.table(
                {
                    "user_id": df["user_id"].to_numpy(np.int64),
                    "item_id": df["item_id"].to_numpy(np.int64),
                    "ts": pa.array(df["ts"].tolist(), pa.timestamp("us", tz="UTC")),
                    **flags,
                    "play_time_ms": rng.integers(0, 60_000, len(df)),
                }
            ),
        )
        lake.write_table(
            "activity_scores",
            day,
            pa.table({"user_id": user_ids, "p_active": np.linspace(1, 0, n_users), "available": np.arange(n_users) < n_users // 2}),
        )
    truth = {"user_topic": dict(zip(user_ids.tolist(), user_topic.tolist())), "item_topic": item_topic, "centers": centers}
    return lake, truth


def _users_frame(n: int, n_topics_liked: np.ndarray | None = None, centers=None, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    liked = None
    if n_topics_liked is not None:
        liked = [centers[t] + 0.1 * rng.normal(size=DIM).astype(np.float32) for t in n_topics_liked]
    return pd.DataFrame(
        {
            "user_id": np.arange(n, dtype=np.int64) + 1,
            "age_bucket": rng.integers(0, 5, n),
            "gender": rng.integers(0, 2, n),
            "region": rng.integers(0, 4, n),
            "device": rng.integers(0, 3, n),
            "follower_count": rng.integers(0, 100, n).astype(float),
            "account_age_days": rng.integers(0, 300, n).astype(float),
            "active_days": rng.integers(0, 14, n).astype(float),
            "sessions": rng.integers(0, 30, n).astype(float),
            "watch_ms": rng.integers(0, 10**6, n).astype(float),
            "n_interactions": rng.integers(0, 50, n).astype(float),
            "n_positive": np.full(n, 5.0),
            "liked_n": np.full(n, 5.0) if liked is not None else np.zeros(n),
            "liked_emb": liked if liked is not None else [None] * n,
        }
    )


def _items_frame(ids: np.ndarray, topics: np.ndarray, centers, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "item_id": ids.astype(np.int64),
            "creator_id": rng.integers(1, 50, len(ids)),
            "category": (topics * 3 + 1).astype(np.int32),
            "duration_ms": rng.integers(5_000, 60_000, len(ids)),
            "content_emb": [centers[t] + 0.3 * rng.normal(size=DIM).astype(np.float32) for t in topics],
        }
    )


def _centers():
    c = np.zeros((2, DIM), np.float32)
    c[0, :4], c[1, 4:] = 1.0, 1.0
    return c


# ---------------------------------------------------------------------- model unit tests
def test_hash_ids_is_stable_spread_and_in_range():
    x = np.array([0, 1, 2, -5, 2**62], np.int64)
    h = hash_ids(x, 1000, 11)
    assert h.dtype == np.int64 and ((h >= 0) & (h < 1000)).all()
    assert (h == hash_ids(x, 1000, 11)).all()
    assert not (h == hash_ids(x, 1000, 12)).all()
    big = hash_ids(np.arange(100_000), 1024, 3)
    assert np.bincount(big, minlength=1024).max() < 3 * 100_000 / 1024


def test_shapes_and_brand_new_items_get_embeddings():
    cfg = TwoTowerConfig(**SMALL)
    model = TwoTowerModel(model_spec(cfg, DIM))
    users = _users_frame(7)
    eu = user_embeddings(model, users)
    assert eu.shape == (7, cfg.dim) and eu.dtype == np.float32 and np.isfinite(eu).all()
    items = _items_frame(np.array([10**12, 10**12 + 1, 7]), np.array([0, 1, 0]), _centers())
    ei = item_embeddings(model, items)
    assert ei.shape == (3, cfg.dim) and ei.dtype == np.float32 and np.isfinite(ei).all()
    # serving never uses the item ID: a brand-new ID with the same features embeds identically
    clone = items.copy()
    clone["item_id"] = [99, 98, 97]
    np.testing.assert_array_equal(item_embeddings(model, clone), ei)
    with pytest.raises(ValueError, match="missing column"):
        item_embeddings(model, items.drop(columns=["content_emb"]))


def _toy_training(seed: int, cfg: TwoTowerConfig):
    """Users of two topics with liked summaries; positives only between matching topics."""
    centers = _centers()
    rng = np.random.default_rng(1)
    n_users = 80
    user_topic = np.arange(n_users) % 2
    users = _users_frame(n_users, user_topic, centers)
    item_topic = rng.integers(0, 2, 60)
    items = _items_frame(np.arange(60) + 10_000, item_topic, centers)
    pairs = []
    for u in range(n_users):
        for i in rng.choice(np.flatnonzero(item_topic == user_topic[u]), 6, replace=False):
            pairs.append((u + 1, i + 10_000, 0))
    pairs = pd.DataFrame(pairs, columns=["user_id", "item_id", "day"])
    pools = {0: users["user_id"].to_numpy()}
    spec = model_spec(cfg, DIM)
    data = build_train_data(users, items, pairs, pools, spec)
    torch.manual_seed(seed)
    model = TwoTowerModel(spec)
    metrics = train_two_tower(model, data, cfg, seed=seed)
    return model, metrics, users, user_topic, centers


def test_training_loss_decreases_and_cold_items_find_their_users():
    cfg = TwoTowerConfig(**SMALL)
    model, metrics, users, user_topic, centers = _toy_training(3, cfg)
    losses = metrics["epoch_loss"]
    assert metrics["pairs"] == 480 and len(losses) == cfg.epochs
    assert losses[-1] < losses[0] - 0.3 and losses == sorted(losses, reverse=True), losses
    # brand-new items (ids never seen): their topic's users must score higher than the others
    new = _items_frame(np.array([777_777, 777_778]), np.array([0, 1]), centers, seed=9)
    scores = item_embeddings(model, new) @ user_embeddings(model, users).T
    for k, t in enumerate([0, 1]):
        assert scores[k, user_topic == t].mean() > scores[k, user_topic != t].mean() + 0.5


def test_training_is_deterministic_given_seed():
    cfg = TwoTowerConfig(**{**SMALL, "epochs": 1})
    a = _toy_training(5, cfg)[0].state_dict()
    b = _toy_training(5, cfg)[0].state_dict()
    c = _toy_training(6, cfg)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_save_load_roundtrip_uses_weights_only_and_relative_paths(tmp_path):
    cfg = TwoTowerConfig(**{**SMALL, "epochs": 1})
    model = _toy_training(2, cfg)[0]
    lake = Lake(str(tmp_path / "lake"))
    day = dt.date(2026, 1, 5)
    with lake.publish_dir(Lake.model_rel("two_tower", day)) as staging:
        save_two_tower(model, lake, staging, {"training_window": ["2026-01-01", "2026-01-05"]})
    loaded = load_two_tower(lake, day)
    users = _users_frame(5, np.array([0, 1, 0, 1, 0]), _centers())
    np.testing.assert_array_equal(user_embeddings(loaded, users), user_embeddings(model, users))
    manifest_text = (tmp_path / "lake" / "_models/two_tower/dt=2026-01-05/manifest.json").read_text()
    assert str(tmp_path) not in manifest_text
    m = json.loads(manifest_text)
    assert m["version"] >= 1 and m["spec"]["dim"] == cfg.dim and m["training_window"][0] == "2026-01-01"


# ---------------------------------------------------------------------- Spark transforms
def test_user_features_liked_summary_and_exclusions(spark, tmp_path):
    from dualrec import two_tower as T

    lake, truth = make_world(tmp_path / "w", days=2, n_users=10, items_per_day=6)
    days = [START, START + dt.timedelta(days=1)]
    users = lake.read_df(spark, "users", [days[-1]], with_dt=False)
    inter = lake.read_df(spark, "interactions", days)
    visits = lake.read_df(spark, "visits", days)
    items = lake.read_df(spark, "items", days)
    excl = lake.read_df(spark, "items", [days[-1]]).select("item_id")
    f = T.user_features(users, visits, inter, items, days[-1], DIM, excl).toPandas().set_index("user_id")
    assert len(f) == 10 and set(f.columns) >= {"liked_emb", "liked_n", "active_days"}
    # expected: mean content of distinct liked items uploaded on day 1 only (day 2 uploads excluded)
    it = lake.read_tables("items", days).to_pandas()
    content = dict(zip(it["item_id"], it["content_emb"]))
    day2 = set(lake.read_table("items", days[-1]).column("item_id").to_pylist())
    ix = lake.read_tables("interactions", days).to_pandas()
    ix = ix[(ix["is_like"] > 0) & ~ix["item_id"].isin(day2)]
    for u, row in f.iterrows():
        liked = sorted(set(ix.loc[ix["user_id"] == u, "item_id"]))
        assert row["liked_n"] == len(liked)
        if liked:
            np.testing.assert_allclose(row["liked_emb"], np.mean([content[i] for i in liked], axis=0), rtol=1e-5, atol=1e-6)
        else:
            assert row["liked_emb"] is None
    vis = lake.read_tables("visits", days).to_pandas()
    assert (f["active_days"] == vis.groupby("user_id").size().reindex(f.index).fillna(0)).all()


def test_negative_pool_uses_available_users_then_visits(spark, tmp_path):
    from dualrec import two_tower as T

    lake, _ = make_world(tmp_path / "w", days=2, n_users=10, items_per_day=4)
    d0, d1 = START, START + dt.timedelta(days=1)
    activity = lake.read_df(spark, "activity_scores", [d0])  # only day 0 has scores
    visits = lake.read_df(spark, "visits", [d0, d1])
    pool = T.negative_pool(activity, visits, [d0, d1]).toPandas()
    p0 = set(pool.loc[pool["day"] == d0, "user_id"])
    p1 = set(pool.loc[pool["day"] == d1, "user_id"])
    assert p0 == set(range(1000, 1005))  # available = first half
    assert p1 == set(lake.read_table("visits", d1).column("user_id").to_pylist())


# ---------------------------------------------------------------------- the stage
def _ctx(lake, day, spark, **tt) -> StageContext:
    cfg = DualRecConfig.from_dict({"seed": 1, "two_tower": {**SMALL, "train_window_days": 3, "recall_k": 10, "recall_queries": 20, **tt}})
    return StageContext(lake=lake, day=day, cfg=cfg, _spark=spark)


def test_stage_writes_embeddings_model_and_index_of_available_users(spark, tmp_path):
    from dualrec.stages import two_tower as job
    from models.ann import load_index

    lake, truth = make_world(tmp_path / "w", days=3, n_users=60, items_per_day=12)
    d1, d2 = START + dt.timedelta(days=1), START + dt.timedelta(days=2)
    out1 = job.run(_ctx(lake, d1, spark))
    assert out1["pairs"] > 50 and out1["users_embedded"] == 60
    emb = lake.read_table("user_embeddings", d1).to_pandas()
    assert len(emb) == 60 and emb["user_id"].is_unique and all(len(e) == SMALL["dim"] for e in emb["emb"])
    assert lake.validate_dir("user_embeddings", d1).ok
    idx = load_index(lake, "user_index", d1)
    assert set(idx.ids.tolist()) == set(range(1000, 1030))  # available users only
    assert idx.meta["kind"] == "flat_ip" and idx.meta["recall_at_k"] == 1.0 and idx.meta["n"] == 30
    # the index holds exactly the written embeddings
    e = np.stack(emb.set_index("user_id").loc[idx.ids, "emb"].to_numpy())
    s, ids = idx.search(e[:3], 1)
    exact = e[:3] @ e.T
    np.testing.assert_allclose(s[:, 0], exact.max(1), rtol=1e-5)
    assert (ids[:, 0] == idx.ids[exact.argmax(1)]).all()
    # second day warm-starts from the first; spark inference == driver inference
    ctx2 = _ctx(lake, d2, spark, exact_max=10, ivf_nlist=4, ivf_nprobe=1)
    out2 = job.run(ctx2)
    model2 = load_two_tower(lake, d2)
    assert model2.manifest["warm_start_from"] == d1.isoformat()
    assert model2.manifest["training_window"] == [START.isoformat(), d2.isoformat()]
    # incremental: the pairs the day-1 model had not seen (day 2's, and feedback on day 1's uploads),
    # plus as many (replay_ratio 1 by default) replayed pairs it had seen
    assert model2.manifest["trained_pairs_after"] == d1.isoformat() and model2.manifest["replay_ratio"] == 1.0
    m2 = model2.manifest["metrics"]
    n_new = m2["new_positive_pairs"]
    assert m2["replay_pairs"] == min(n_new, m2["positive_pairs"] - n_new) > 0
    assert 0 < n_new < out2["pairs"] == n_new + m2["replay_pairs"] <= m2["positive_pairs"]
    full = job.train_model(_ctx(lake, d2, spark, exact_max=10, ivf_nlist=4, ivf_nprobe=1, incremental=False))[2]
    assert full["trained_pairs_after"] is None and full["metrics"]["pairs"] == m2["positive_pairs"]
    assert out2["index_kind"] == "ivf_flat_ip" and out2["index_recall"] >= 0.95  # nprobe tuned up to the target
    feats = job.train_model(ctx2)[1].toPandas().sort_values("user_id")
    emb2 = lake.read_table("user_embeddings", d2).to_pandas().sort_values("user_id")
    np.testing.assert_allclose(np.stack(emb2["emb"]), user_embeddings(model2, feats), rtol=1e-4, atol=1e-5)
    # the model separates topics for the day's (excluded-from-training) new items
    items = lake.read_table("items", d2).to_pandas()
    sc = item_embeddings(model2, items) @ np.stack(emb2["emb"]).T
    ut = np.array([truth["user_topic"][u] for u in emb2["user_id"]])
    it = np.array([truth["item_topic"][i] for i in items["item_id"]])
    same = np.mean([sc[k, ut == it[k]].mean() - sc[k, ut != it[k]].mean() for k in range(len(it))])
    assert same > 0


def test_new_pairs_are_the_ones_a_warm_start_has_not_seen(spark):
    """After a model whose window ended on d1: pairs first seen after d1, plus feedback on the items
    uploaded on d1 (left out of that model's training by exclude_day_uploads); nothing else."""
    from dualrec.two_tower import new_pairs

    d0, d1, d2 = START, START + dt.timedelta(days=1), START + dt.timedelta(days=2)
    pos = spark.createDataFrame(
        [(1, 11, d0), (2, 12, d1), (3, 13, d2), (4, 19, d1), (5, 19, d2), (6, 12, d2)], "user_id long, item_id long, day date")
    excluded = spark.createDataFrame([(19,)], "item_id long")
    got = sorted((r["user_id"], r["item_id"]) for r in new_pairs(pos, excluded, d1).collect())
    assert got == [(3, 13), (4, 19), (5, 19), (6, 12)]
    assert sorted((r["user_id"], r["item_id"]) for r in new_pairs(pos, None, d1).collect()) == [(3, 13), (5, 19), (6, 12)]


def _ten_pairs(spark, d):
    """Ten positive pairs around a warm start whose model's window was [d(1), d(3)]; D = d(4)."""
    rows = [(1, 11, d(0)),   # before the window
            (2, 12, d(1)), (3, 13, d(1)), (4, 14, d(2)), (5, 15, d(2)), (6, 16, d(3)),  # seen
            (7, 19, d(3)),   # on an item of the model's own day, left out of its training: new
            (8, 17, d(4)),   # new (day D)
            (9, 18, d(5)), (10, 18, d(6))]  # after the cutoff (must never be read)
    return spark.createDataFrame(rows, "user_id long, item_id long, day date")


def test_replay_sample_is_seen_pairs_inside_the_window_only(spark):
    """The replayed pairs are ones the previous model trained on: inside [window start, its cutoff],
    not on its day's excluded uploads, never new, never after the cutoff."""
    from dualrec.two_tower import replay_pairs

    def d(k):
        return START + dt.timedelta(days=k)

    pos = _ten_pairs(spark, d)
    excluded = spark.createDataFrame([(19,)], "item_id long")
    got = replay_pairs(pos, excluded, d(1), d(3), keep=100, seed=7)
    assert got.columns == pos.columns
    assert sorted(r["user_id"] for r in got.collect()) == [2, 3, 4, 5, 6]
    assert sorted(r["user_id"] for r in replay_pairs(pos, None, d(1), d(3), 100, 7).collect()) == [2, 3, 4, 5, 6, 7]
    assert replay_pairs(pos, excluded, d(1), d(3), 0, 7).count() == 0


def test_replay_sample_is_deterministic_and_its_size_follows_the_ratio(spark):
    from dualrec.two_tower import replay_pairs, replay_size

    def d(k):
        return START + dt.timedelta(days=k)

    rows = [(u, 100 + u % 7, d(u % 3)) for u in range(200)]  # 200 seen pairs (days 0..2)
    pos = spark.createDataFrame(rows, "user_id long, item_id long, day date")
    assert [replay_size(40, r) for r in (0, 0.5, 1, 2.5)] == [0, 20, 40, 100]

    def ids(df):
        return sorted((r["user_id"], r["item_id"]) for r in df.collect())

    for keep in (1, 13, 60, 200, 500):
        a = replay_pairs(pos, None, d(0), d(2), keep, seed=3)
        b = replay_pairs(pos.repartition(5).orderBy(_desc("user_id")), None, d(0), d(2), keep, seed=3, total=200)
        assert len(ids(a)) == min(keep, 200)
        assert ids(a) == ids(b)  # rerun-stable whatever the partitioning, with or without the prefilter
    # a bigger sample contains the smaller one (the same hash order), another seed draws others
    assert set(ids(replay_pairs(pos, None, d(0), d(2), 13, 3))) <= set(ids(replay_pairs(pos, None, d(0), d(2), 60, 3)))
    assert ids(replay_pairs(pos, None, d(0), d(2), 60, 3)) != ids(replay_pairs(pos, None, d(0), d(2), 60, 4))


def _desc(c):
    from pyspark.sql import functions as F

    return F.col(c).desc()


def test_stage_replay_trains_on_new_plus_replayed_pairs_and_reads_nothing_after_d(spark, tmp_path):
    """Warm start of d2 with replay: new + round(ratio x new) seen pairs; a ratio large enough to
    replay everything trains on exactly the window's pairs, though the lake holds a later day."""
    from dualrec.stages import two_tower as job

    lake, _ = make_world(tmp_path / "w", days=4, n_users=40, items_per_day=8)
    d1, d2 = START + dt.timedelta(days=1), START + dt.timedelta(days=2)
    job.run(_ctx(lake, d1, spark))
    plain = job.train_model(_ctx(lake, d2, spark, exact_max=10, replay_ratio=0))[2]
    half = job.train_model(_ctx(lake, d2, spark, exact_max=10, replay_ratio=0.5))[2]
    again = job.train_model(_ctx(lake, d2, spark, exact_max=10, replay_ratio=0.5))[2]
    every = job.train_model(_ctx(lake, d2, spark, exact_max=10, replay_ratio=1000))[2]
    full = job.train_model(_ctx(lake, d2, spark, exact_max=10, incremental=False))[2]
    m0, mh, me = plain["metrics"], half["metrics"], every["metrics"]
    n_new, n_window = m0["new_positive_pairs"], m0["positive_pairs"]
    assert 0 < n_new < n_window and m0["replay_pairs"] == 0 and m0["pairs"] == n_new
    assert mh["new_positive_pairs"] == n_new and mh["replay_pairs"] == round(0.5 * n_new) <= n_window - n_new
    assert mh["pairs"] == n_new + mh["replay_pairs"] and half["replay_ratio"] == 0.5
    assert mh["epoch_loss"] == again["metrics"]["epoch_loss"]  # a rerun replays the same pairs
    # everything seen replayed: the window's pairs exactly, nothing of day 3 (after D)
    assert me["replay_pairs"] == n_window - n_new and me["pairs"] == n_window == full["metrics"]["pairs"]


def test_stage_fails_clearly_without_activity_scores(spark, tmp_path):
    from dualrec.lake import LakeError
    from dualrec.stages import two_tower as job

    lake, _ = make_world(tmp_path / "w", days=1, n_users=20, items_per_day=4)
    import shutil

    shutil.rmtree(tmp_path / "w" / "activity_scores" / f"dt={START.isoformat()}")
    from dualrec.stages.base import run_stage

    with pytest.raises(LakeError, match="activity_scores"):
        run_stage("two_tower", job.run, _ctx(lake, START, spark))
    assert not lake.has_partition("user_embeddings", START)  # checked up front: nothing published
    assert lake.model_days("user_index") == [] and lake.model_days("two_tower") == []


def test_stage_on_tiny_world(tiny_two_tower):
    """The stage on the generated world (session fixture ``tiny_two_tower``, shared with
    test_similarity): every user embedded, valid output, an index of exactly the available users."""
    from models.ann import load_index

    lake, day = Lake(tiny_two_tower["root"]), tiny_two_tower["day"]
    out = tiny_two_tower["out"]
    assert out["users_embedded"] == len(tiny_two_tower["users"])
    assert lake.validate_dir("user_embeddings", day).ok
    idx = load_index(lake, "user_index", day)
    assert set(idx.ids.tolist()) == tiny_two_tower["available"] and idx.meta["recall_at_k"] >= 0.95


# ---------------------------------------------------------------------- bounded driver collects, reproducible bits
def test_pair_sample_is_exact_bounded_and_independent_of_partitioning(spark):
    from dualrec import two_tower as T

    rng = np.random.default_rng(3)
    pdf = pd.DataFrame({"user_id": rng.integers(0, 500, 3000), "item_id": rng.integers(0, 900, 3000)}).drop_duplicates()
    pdf["day"] = START
    df = spark.createDataFrame(pdf)
    keep = 400
    got = []
    for parts in (1, 7):
        s = T.sample_pairs(df.repartition(parts), len(pdf), keep, seed=11)
        tab = s.toArrow()
        assert keep <= tab.num_rows < 1.3 * keep  # the executors send a bounded superset
        t = T.smallest_rank(tab, keep, ["user_id", "item_id"])
        got.append(sorted(zip(t.column("user_id").to_pylist(), t.column("item_id").to_pylist())))
    assert len(got[0]) == keep and got[0] == got[1]
    assert set(got[0]) <= set(zip(pdf["user_id"], pdf["item_id"]))
    # another seed gives another sample; below the cap nothing is filtered
    other = T.smallest_rank(T.sample_pairs(df, len(pdf), keep, seed=12).toArrow(), keep, ["user_id", "item_id"])
    assert sorted(zip(other.column("user_id").to_pylist(), other.column("item_id").to_pylist())) != got[0]
    assert T.sample_pairs(df, len(pdf), len(pdf), seed=11).count() == len(pdf)


def test_pool_sample_keeps_whole_users_and_at_most_the_cap(spark):
    from dualrec import two_tower as T

    rows = [(START + dt.timedelta(days=d), u) for d in range(3) for u in range(200) if (u + d) % 4]
    pool = spark.createDataFrame(pd.DataFrame(rows, columns=["day", "user_id"]))
    n_users = len({u for _, u in rows})
    t = T.trim_pool(T.sample_pool(pool, n_users, 50, seed=5).toArrow(), 50)
    users = set(t.column("user_id").to_pylist())
    assert len(users) == 50
    # a sampled user keeps every day it was in the pool (uniform negatives per day stay uniform)
    kept = {(d, u) for d, u in zip(t.column("day").to_pylist(), t.column("user_id").to_pylist())}
    assert kept == {(d, u) for d, u in rows if u in users}
    assert T.rank_threshold(10, 20) is None and T.rank_threshold(1000, 10) < T.RANK_SPACE


def test_stage_collects_only_sampled_pairs_and_touched_users(spark, tmp_path):
    from dualrec.stages import two_tower as job

    lake, _ = make_world(tmp_path / "w", days=3, n_users=60, items_per_day=12)
    d1 = START + dt.timedelta(days=1)
    full = job.run(_ctx(lake, d1, spark))
    out = job.run(_ctx(lake, d1, spark, max_train_pairs=20, negative_pool_max_users=12))
    m = load_two_tower(lake, d1).manifest["metrics"]
    # 20 sampled; build_train_data drops the few whose day has no sampled pool user left
    assert 15 <= out["pairs"] == m["pairs"] <= 20 < full["pairs"] <= m["positive_pairs"]
    assert m["negative_pool_users"] == 12
    assert m["feature_users"] <= 20 + 12 * 2  # pair users + a bounded superset of the sampled pool users
    assert out["users_embedded"] == 60  # every user is still embedded (on the executors)


def test_user_tower_rows_do_not_depend_on_the_batch_they_are_computed_in():
    """MKL strict CNR mode (models/__init__): embeddings in Spark's Arrow batches are the same bits
    whatever the batch boundaries (they were not for batches of 1, 3, 17 rows)."""
    spec = model_spec(TwoTowerConfig(**SMALL), DIM)
    torch.manual_seed(0)
    model = TwoTowerModel(spec).eval()
    rng = np.random.default_rng(0)
    n = 300
    users = pa.table({
        "user_id": pa.array(np.arange(n), pa.int64()),
        **{c: pa.array(rng.integers(0, 5, n), pa.int32()) for c in ("age_bucket", "gender", "region", "device")},
        **{c: pa.array(rng.random(n) * 10) for c in spec.user_num},
        "liked_emb": pa.array(list(rng.normal(size=(n, DIM)).astype(np.float32)), pa.list_(pa.float32())),
    })
    full = user_embeddings(model, users, batch_rows=n)
    for b in (1, 3, 17, 128):
        assert np.array_equal(user_embeddings(model, users, batch_rows=b), full), f"batch of {b} rows"
