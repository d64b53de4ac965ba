"""Similarity services S^I, H^I, S^U: point-in-time rules and the similarity stage."""

from __future__ import annotations

import datetime as dt
import shutil

import numpy as np
import pandas as pd
import pytest

from dualrec.config import DualRecConfig, TwoTowerConfig
from dualrec.lake import Lake
from dualrec.similarity import l2_normalize, similar_items, similar_users
from dualrec.stages.base import StageContext
from models.ann import build_index
from test_two_tower import SMALL, START, make_world

US = 1_000_000


# ---------------------------------------------------------------------- S^I (pure)
def test_similar_items_never_lists_itself_or_later_uploads_and_digs_deeper():
    rng = np.random.default_rng(0)
    n = 200
    vecs = l2_normalize(rng.normal(size=(n, 8)))
    upload = np.arange(n, dtype=np.int64) * US  # item j uploaded at j seconds
    ids = np.arange(n, dtype=np.int64) + 5000
    # the 30 items nearest to item 0 by content are all uploaded after most of the queries
    vecs[170:] = l2_normalize(vecs[100] + 0.01 * rng.normal(size=(30, 8)))
    idx = build_index(vecs, ids, TwoTowerConfig())
    q = np.arange(100, 200)
    out = similar_items(idx, upload, ids[q], vecs[q], upload[q], k=10).to_pandas()
    up = dict(zip(ids, upload))
    assert (out["item_id"] != out["similar_item_id"]).all()
    assert (out["similar_item_id"].map(up) <= out["item_id"].map(up)).all()
    counts = out.groupby("item_id").size()
    # query j has exactly j earlier items (>= 100 > k): always full lists, despite the 30 later look-alikes
    assert (counts == 10).all() and len(counts) == 100
    # and the list is the exact top-10 among the allowed items
    for qi in (100, 171, 199):
        allowed = np.arange(qi)
        best = allowed[np.argsort(-(vecs[allowed] @ vecs[qi]), kind="stable")[:10]] + 5000
        got = out.loc[out["item_id"] == qi + 5000, "similar_item_id"].to_numpy()
        assert set(got) == set(best)
    # an item with only 3 earlier items gets 3, the first item gets none
    early = similar_items(idx, upload, ids[:4], vecs[:4], upload[:4], k=10).to_pandas()
    assert early.groupby("item_id").size().to_dict() == {5001: 1, 5002: 2, 5003: 3}


def test_similar_users_excludes_self_and_keeps_k():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    idx = build_index(x, np.arange(50) + 1, TwoTowerConfig())
    out = similar_users(idx, np.array([1, 2, 999]), np.vstack([x[:2], x[:1]]), k=5).to_pandas()
    assert (out["user_id"] != out["similar_user_id"]).all()
    assert out.groupby("user_id").size().to_dict() == {1: 5, 2: 5, 999: 5}
    # user 999 (not in the index) with user 1's vector may list user 1
    exact = np.argsort(-(x @ x[0]))[:5] + 1
    assert set(out.loc[out["user_id"] == 999, "similar_user_id"]) == set(exact)


# ---------------------------------------------------------------------- H^I (Spark)
def test_item_positive_users_first_positive_weight_and_cap(spark):
    from dualrec.similarity import item_positive_users
    from schemas.tables import spark_schema

    t = lambda h: dt.datetime(2026, 1, 3, h, tzinfo=dt.timezone.utc)  # noqa: E731
    rows = [
        # item, user, ts, like, comment, follow
        (1, 10, t(9), 0, 0, 0),  # click only: not a positive
        (1, 10, t(11), 1, 1, 0),  # first positive of (1,10): weight 2
        (1, 10, t(12), 1, 1, 1),  # later positive: ignored
        (1, 11, t(8), 1, 0, 0),
        (1, 12, t(13), 0, 0, 1),
        (2, 10, t(5), 1, 0, 0),
        (3, 10, t(5), 1, 0, 0),  # item 3 not in the window's items
    ]
    pdf = pd.DataFrame(
        [
            dict(user_id=u, item_id=i, ts=ts, is_click=1, is_like=lk, is_comment=cm, is_follow=fo, is_share=0,
                 is_profile_enter=0, is_long_view=0, play_time_ms=1)
            for i, u, ts, lk, cm, fo in rows
        ]
    )
    inter = spark.createDataFrame(pdf, schema=spark_schema("interactions"))
    items = spark.createDataFrame(pd.DataFrame({"item_id": [1, 2]}))
    out = item_positive_users(inter, items, cap=2).toPandas().sort_values(["item_id", "user_id"]).reset_index(drop=True)
    got = [(r.item_id, r.user_id, r.ts.hour, r.weight) for r in out.itertuples()]
    # item 1 has 3 positive users; cap 2 keeps the most recent first positives (12 at 13h, 10 at 11h)
    assert got == [(1, 10, 11, 2.0), (1, 12, 13, 1.0), (2, 10, 5, 1.0)]


# ---------------------------------------------------------------------- the stage
def _ctx(lake, day, spark, **sim) -> StageContext:
    cfg = DualRecConfig.from_dict(
        {
            "seed": 2,
            "two_tower": {**SMALL, "train_window_days": 3, "recall_k": 10, "recall_queries": 20},
            "similarity": {"item_window_days": 3, "item_k": 5, "user_k": 4, "positives_cap": 5, **sim},
        }
    )
    return StageContext(lake=lake, day=day, cfg=cfg, _spark=spark)


def _check_outputs(lake: Lake, day: dt.date, k_items: int, k_users: int, cap: int) -> dict:
    for t in ("item_similar", "item_positive_users", "user_similar"):
        assert lake.validate_dir(t, day).ok, t
    items = lake.read_tables("items", [d for d in lake.partitions("items") if d <= day]).to_pandas()
    up = dict(zip(items["item_id"], items["upload_ts"]))
    upday = dict(zip(items["item_id"], items["dt"]))
    sim = lake.read_table("item_similar", day).to_pandas()
    day_items = set(lake.read_table("items", day).column("item_id").to_pylist())
    assert set(sim["item_id"]) <= day_items and len(set(sim["item_id"])) > 0.9 * len(day_items)
    assert (sim["item_id"] != sim["similar_item_id"]).all()
    assert (sim["similar_item_id"].map(up) <= sim["item_id"].map(up)).all()  # nothing uploaded later
    assert sim.groupby("item_id").size().max() <= k_items
    hi = lake.read_table("item_positive_users", day).to_pandas()
    end = pd.Timestamp(day + dt.timedelta(days=1), tz="UTC")
    assert len(hi) and (hi["ts"] < end).all()  # never a positive after D
    assert hi.groupby("item_id").size().max() <= cap and (hi["weight"] >= 1).all()
    assert set(hi["item_id"].map(upday)) and all(d <= day for d in hi["item_id"].map(upday))
    su = lake.read_table("user_similar", day).to_pandas()
    avail = lake.read_table("activity_scores", day).to_pandas()
    avail = set(avail.loc[avail["available"], "user_id"])
    assert set(su["user_id"]) <= set(hi["user_id"]) and set(su["similar_user_id"]) <= avail
    assert (su["user_id"] != su["similar_user_id"]).all() and su.groupby("user_id").size().max() <= k_users
    return {"sim": sim, "hi": hi, "su": su}


def test_stage_on_hand_made_world(spark, tmp_path):
    from dualrec.stages import similarity as sjob
    from dualrec.stages import two_tower as tjob
    from models.ann import load_index

    lake, _ = make_world(tmp_path / "w", days=3, n_users=40, items_per_day=12)
    day = START + dt.timedelta(days=1)  # day 2 exists in the lake and must not leak in
    ctx = _ctx(lake, day, spark)
    from dualrec.stages.base import run_stage

    with pytest.raises(Exception, match="user_embeddings.*run stage 'two_tower'"):
        run_stage("similarity", sjob.run, ctx)  # the two_tower stage has not run: clear error
    assert not lake.has_partition("item_similar", day)
    tjob.run(ctx)
    out = sjob.run(ctx)
    assert out["window_items"] == 24 and out["day_items"] == 12
    res = _check_outputs(lake, day, 5, 4, 5)
    idx = load_index(lake, "item_index", day)
    assert idx.n == 24 and idx.meta["recall_at_k"] == 1.0 and idx.meta["normalized"]
    assert res["hi"]["ts"].max() < pd.Timestamp(day + dt.timedelta(days=1), tz="UTC")
    # items on day 1 only have earlier-or-equal neighbours; day-0 items of the window are candidates
    assert set(res["sim"]["similar_item_id"]) & set(lake.read_table("items", START).column("item_id").to_pylist())


def test_stage_on_tiny_world(spark, tiny_two_tower, tmp_path):
    """The stage on the generated world, after the two_tower stage of the session fixture
    ``tiny_two_tower`` (mid-world day: later partitions exist and must not be read)."""
    from dualrec.stages import similarity as sjob

    root = tmp_path / "tiny"
    shutil.copytree(tiny_two_tower["root"], root)
    lake, day, cfg = Lake(str(root)), tiny_two_tower["day"], tiny_two_tower["cfg"]
    ctx = StageContext(lake=lake, day=day, cfg=cfg, _spark=spark)
    out = sjob.run(ctx)
    assert out["item_similar_rows"] > 0 and out["user_similar_rows"] > 0
    _check_outputs(lake, day, cfg.similarity.item_k, cfg.similarity.user_k, cfg.similarity.positives_cap)
