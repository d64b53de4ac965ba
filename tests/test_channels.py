"""Retrieval channels, registry and mixer on hand-made tables (real Spark, FAISS and torch)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from dualrec.channels.base import Channel, channel_names, channel_shares, get_channel, mix, register
from dualrec.config import DualRecConfig, TwoTowerConfig
from dualrec.lake import Lake
from dualrec.stages.base import StageContext

from channel_helpers import by_item, items_df

D = dt.date(2026, 1, 10)
UTC = dt.timezone.utc
DIM = 4


def ts(day: dt.date, hour: float) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=UTC) + dt.timedelta(hours=hour)


def _items(rows):
    rng = np.random.default_rng(0)
    return pa.table({
        "item_id": pa.array([r[0] for r in rows], pa.int64()),
        "creator_id": pa.array([r[1] for r in rows], pa.int64()),
        "upload_ts": pa.array([r[2] for r in rows], pa.timestamp("us", tz="UTC")),
        "category": pa.array([1] * len(rows), pa.int32()),
        "duration_ms": pa.array([10_000] * len(rows), pa.int64()),
        "content_emb": pa.array([rng.normal(size=DIM).astype(np.float32) for _ in rows], pa.list_(pa.float32())),
    })


def _pos(rows):
    return pa.table({
        "item_id": pa.array([r[0] for r in rows], pa.int64()),
        "user_id": pa.array([r[1] for r in rows], pa.int64()),
        "ts": pa.array([r[2] for r in rows], pa.timestamp("us", tz="UTC")),
        "weight": pa.array([r[3] for r in rows], pa.float32()),
    })


def _pairs(cols, rows, types):
    return pa.table({c: pa.array([r[k] for r in rows], t) for k, (c, t) in enumerate(zip(cols, types))})


AVAILABLE = [1, 2, 3, 5, 7, 8, 9, 10, 11, 12]  # user 4 and 6 are not available


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    lk = Lake(str(tmp_path_factory.mktemp("lake")))
    lk.write_meta({"emb_dim": DIM})
    # D's uploads; with 4 batches/day the cutoffs are 06:00 (batch 0), 18:00 (batch 2), 24:00 (batch 3)
    lk.write_table("items", D, _items([(100, 1, ts(D, 1)), (101, 2, ts(D, 13)), (102, 1, ts(D, 20))]))
    lk.write_table("items", D - dt.timedelta(days=1), _items([(50, 3, ts(D - dt.timedelta(days=1), 2)),
                                                              (51, 3, ts(D - dt.timedelta(days=1), 3))]))
    lk.write_table("item_similar", D, _pairs(("item_id", "similar_item_id", "sim"),
                                             [(100, 50, 0.9), (100, 51, 0.5), (101, 50, 0.2)],
                                             (pa.int64(), pa.int64(), pa.float32())))
    y = D - dt.timedelta(days=1)
    lk.write_table("item_positive_users", D, _pos([
        (50, 1, ts(y, 10), 1.0), (50, 2, ts(D, 3), 1.0), (50, 3, ts(D, 8), 1.0),
        (51, 1, ts(y - dt.timedelta(days=1), 5), 2.0), (51, 4, ts(y, 5), 1.0),
        (100, 5, ts(D, 2), 1.0), (100, 6, ts(D, 7), 1.0),
    ]))
    lk.write_table("user_similar", D, _pairs(("user_id", "similar_user_id", "sim"),
                                             [(5, 7, 0.8), (5, 8, 0.4), (6, 9, 0.9), (1, 7, 0.5)],
                                             (pa.int64(), pa.int64(), pa.float32())))
    users = sorted(set(AVAILABLE) | {4, 6})
    lk.write_table("activity_scores", D, pa.table({
        "user_id": pa.array(users, pa.int64()),
        "p_active": pa.array([0.9 if u in AVAILABLE else 0.1 for u in users], pa.float64()),
        "available": pa.array([u in AVAILABLE for u in users]),
    }))
    return lk


def _ctx(lake, spark, **over) -> StageContext:
    cfg = DualRecConfig.load(None, {"dispatch.batches_per_day": 4, **over})
    return StageContext(lake=lake, day=D, cfg=cfg, _spark=spark)


# ---------------------------------------------------------------------- registry / interface
class EchoChannel(Channel):
    name = "echo"

    def retrieve(self, ctx, items_df):
        from pyspark.sql import functions as F

        return items_df.select("item_id", F.lit(1).cast("long").alias("user_id"), F.lit(1.0).cast("float").alias("score"))


def test_registry_and_interface():
    cfg = DualRecConfig()
    assert channel_names(cfg) == ["two_tower", "i2i2u", "i2u2u"]  # the registry's enabled channels
    for n in channel_names(cfg):
        ch = get_channel(n)
        assert isinstance(ch, Channel) and ch.name == n
    with pytest.raises(ValueError, match="unknown retrieval channel"):
        get_channel("nope")
    register("echo", f"{__name__}:EchoChannel")
    assert get_channel("echo").name == "echo"
    with pytest.raises(ValueError, match="ghost"):  # refused at load time, before any stage runs
        DualRecConfig.from_dict({"retrieval": {"channels": ["two_tower", "ghost"], "k": {"ghost": 3}}})
    assert channel_names(DualRecConfig.from_dict({"retrieval": {"channels": ["echo"], "k": {"echo": 3}}})) == ["echo"]


def test_batches_of_items(lake, spark):
    ctx = _ctx(lake, spark)
    got = {r["item_id"]: r["batch"] for r in items_df(ctx).collect()}
    assert got == {100: 0, 101: 2, 102: 3}


# ---------------------------------------------------------------------- i2i2u
def test_i2i2u_scores_and_point_in_time(lake, spark):
    ctx = _ctx(lake, spark)
    got = by_item(get_channel("i2i2u").retrieve(ctx, items_df(ctx)))
    # item 100 (cutoff 06:00): user 3's positive on item 50 at 08:00 is after the cutoff -> unused;
    # user 4 is unavailable; user 1 = 0.9*1 + 0.5*2
    assert set(got[100]) == {1, 2}
    assert got[100][1] == pytest.approx(1.9) and got[100][2] == pytest.approx(0.9)
    # item 101 (cutoff 18:00) sees user 3's positive
    assert got[101] == pytest.approx({1: 0.2, 2: 0.2, 3: 0.2})
    assert 102 not in got


def test_i2i2u_top_k(lake, spark):
    ctx = _ctx(lake, spark, **{"retrieval.k": {"i2i2u": 1}})
    got = by_item(get_channel("i2i2u").retrieve(ctx, items_df(ctx)))
    assert got[100] == pytest.approx({1: 1.9})
    assert got[101] == pytest.approx({1: 0.2})  # tie broken by user_id


# ---------------------------------------------------------------------- i2u2u
def test_i2u2u_empty_without_feedback_and_point_in_time(lake, spark):
    ctx = _ctx(lake, spark)
    got = by_item(get_channel("i2u2u").retrieve(ctx, items_df(ctx)))
    # item 100: seed user 5 (02:00) -> 7, 8; seed user 6 (07:00) is after the 06:00 cutoff -> no user 9
    assert got[100] == pytest.approx({7: 0.8, 8: 0.4})
    assert 101 not in got and 102 not in got  # no feedback yet -> empty (paper)


def test_i2u2u_creator_seed_extension(lake, spark):
    ctx = _ctx(lake, spark, **{"retrieval.i2u2u_creator_seed": True})
    got = by_item(get_channel("i2u2u").retrieve(ctx, items_df(ctx)))
    # item 102 (creator 1, cutoff 24:00) is seeded by positives on creator 1's earlier item 100
    assert got[102] == pytest.approx({7: 0.4, 8: 0.2, 9: 0.45})
    assert got[100] == pytest.approx({7: 0.8, 8: 0.4})  # 102 is uploaded after 100's cutoff
    assert 101 not in got


# ---------------------------------------------------------------------- two_tower
def _two_tower_artefacts(lake, spark):
    import torch

    from models.ann import build_index
    from models.two_tower import TwoTowerModel, model_spec, save_two_tower

    tcfg = TwoTowerConfig(dim=8, hidden=16, id_buckets=64, id_dim=4, cat_buckets=16)
    torch.manual_seed(0)
    model = TwoTowerModel.from_spec(model_spec(tcfg, DIM))
    with lake.publish_dir(Lake.model_rel("two_tower", D)) as rel:
        save_two_tower(model, lake, rel, {"train_end": str(D)})
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(len(AVAILABLE), 8)).astype(np.float32)
    index = build_index(vecs, np.array(AVAILABLE), tcfg)
    with lake.publish_dir(Lake.model_rel("user_index", D)) as rel:
        index.save(lake, rel)
    return model, index, vecs


def test_two_tower_driver_and_spark_paths_agree(lake, spark):
    from models.two_tower import item_embeddings

    model, index, vecs = _two_tower_artefacts(lake, spark)
    ctx = _ctx(lake, spark, **{"retrieval.k": {"two_tower": 3}, "retrieval.two_tower_driver_max_items": 1000})
    items = items_df(ctx)
    drv = by_item(get_channel("two_tower").retrieve(ctx, items))
    # exact reference: top 3 by inner product
    e = item_embeddings(model, lake.read_table("items", D))
    for row, iid in enumerate(lake.read_table("items", D).column("item_id").to_pylist()):
        s = vecs @ e[row]
        top = np.array(AVAILABLE)[np.argsort(-s)[:3]]
        assert set(drv[iid]) == set(top.tolist())
        assert drv[iid][int(top[0])] == pytest.approx(float(s.max()), rel=1e-4)
    ctx2 = _ctx(lake, spark, **{"retrieval.k": {"two_tower": 3}, "retrieval.two_tower_driver_max_items": 0})
    par = by_item(get_channel("two_tower").retrieve(ctx2, items))
    assert set(par) == set(drv)
    for iid in drv:
        assert par[iid] == pytest.approx(drv[iid], rel=1e-5)


# ---------------------------------------------------------------------- mixer and job
def test_mixer_provenance_and_available_filter(lake, spark):
    ctx = _ctx(lake, spark)
    items = items_df(ctx)
    from dualrec.channels.base import available_users

    mk = lambda rows: spark.createDataFrame(rows, "item_id long, user_id long, score float")  # noqa: E731
    outs = {
        "two_tower": mk([(100, 1, 0.5), (100, 4, 0.9), (101, 2, 0.1)]),  # user 4 is unavailable
        "i2i2u": mk([(100, 1, 1.9), (100, 2, 0.9)]),
        "i2u2u": mk([(100, 2, 0.3), (102, 7, 0.4)]),
    }
    rows = {(r["item_id"], r["user_id"]): r for r in mix(outs, items, available_users(ctx), ["two_tower", "i2i2u", "i2u2u"]).collect()}
    assert set(rows) == {(100, 1), (100, 2), (101, 2), (102, 7)}
    r = rows[(100, 1)]
    assert r["channels"] == ["two_tower", "i2i2u"] and r["score_i2u2u"] is None
    assert r["score_two_tower"] == pytest.approx(0.5) and r["score_i2i2u"] == pytest.approx(1.9)
    assert rows[(100, 2)]["channels"] == ["i2i2u", "i2u2u"]
    assert rows[(102, 7)]["batch"] == 3 and rows[(101, 2)]["batch"] == 2
    shares = channel_shares(mix(outs, items, available_users(ctx), ["two_tower", "i2i2u", "i2u2u"]))
    assert shares == pytest.approx({"two_tower": 1.5 / 4, "i2i2u": 1.0 / 4, "i2u2u": 1.5 / 4})
    assert sum(shares.values()) == pytest.approx(1.0)


def test_pairs_seen_before_the_batch_cutoff_are_not_candidates(lake, spark, tmp_path):
    from schemas.tables import arrow_schema

    from dualrec.channels.base import available_users, seen_pairs

    items = items_df(_ctx(lake, spark))
    seen_lake = Lake(str(tmp_path / "seen"))
    # item 100 is in batch 0 (cutoff 06:00), item 102 in batch 3 (cutoff 24:00)
    rows = [(1, 100, ts(D, 5)), (2, 100, ts(D, 7)), (7, 102, ts(D, 21)), (9, 101, ts(D, 19))]
    schema = arrow_schema("interactions")
    cols = {"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows], "ts": [r[2] for r in rows]}
    cols.update({f.name: [0] * len(rows) for f in schema if f.name.startswith("is_")})
    cols["play_time_ms"] = [1000] * len(rows)
    seen_lake.write_table("interactions", D, pa.table({f.name: pa.array(cols[f.name], f.type) for f in schema}))
    ctx = _ctx(seen_lake, spark)
    seen = seen_pairs(ctx, items)
    # user 2 and user 9 interacted after their item's cutoff (101 is batch 2, cutoff 18:00)
    assert sorted(map(tuple, seen.collect())) == [(100, 1), (102, 7)]
    mk = lambda rows: spark.createDataFrame(rows, "item_id long, user_id long, score float")  # noqa: E731
    outs = {"two_tower": mk([(100, 1, 0.5), (100, 2, 0.4), (102, 7, 0.3), (102, 8, 0.2)])}
    kept = {(r["item_id"], r["user_id"]) for r in mix(outs, items, available_users(_ctx(lake, spark)), exclude_df=seen).collect()}
    assert kept == {(100, 2), (102, 8)}


def test_retrieve_job_writes_candidates(lake, spark):
    from dualrec.stages.retrieve import run

    _two_tower_artefacts(lake, spark)
    ctx = _ctx(lake, spark, **{"retrieval.k": {"two_tower": 4, "i2i2u": 10, "i2u2u": 10}})
    stats = run(ctx)
    cand = lake.read_table("candidates", D).to_pandas()
    assert len(cand) == stats["candidates"] > 0
    assert set(cand["user_id"]) <= set(AVAILABLE)
    assert not cand.duplicated(["item_id", "user_id"]).any()
    assert (cand.groupby("item_id").size() >= 4).all()  # every item has its two_tower candidates
    assert stats["pairs_by_channel"]["two_tower"] == 12
    both = cand[(cand.item_id == 100) & (cand.user_id == 1)].iloc[0]
    assert "i2i2u" in list(both["channels"]) and both["score_i2i2u"] == pytest.approx(1.9)
    assert set(stats["channel_share"]) <= {"two_tower", "i2i2u", "i2u2u"}
    # the one-aggregation stats agree with the per-channel definitions
    cdf = lake.read_df(spark, "candidates", [D], with_dt=False)
    assert stats["channel_share"] == pytest.approx(channel_shares(cdf))
    for n in ("two_tower", "i2i2u", "i2u2u"):
        has = cand["channels"].map(lambda c, n=n: n in list(c))
        assert stats["pairs_by_channel"][n] == int(has.sum())
        assert stats["items_by_channel"][n] == cand.loc[has, "item_id"].nunique()
    assert stats["items_with_candidates"] == cand["item_id"].nunique()


# ---------------------------------------------------------------------- declarative registry
def test_registry_declarations_drive_defaults_k_and_inputs():
    from dualrec.channels import channel_k, channel_spec, default_channels, default_k, registered_channels
    from dualrec.channels.base import channel_tables

    specs = registered_channels()
    assert list(specs)[:4] == ["two_tower", "i2i2u", "i2u2u", "next_user"]
    assert default_channels() == ["two_tower", "i2i2u", "i2u2u"]  # next_user is declared but off by default
    assert default_k() == {"two_tower": 1000, "i2i2u": 500, "i2u2u": 300, "next_user": 300, **{
        n: s.k for n, s in specs.items() if n not in ("two_tower", "i2i2u", "i2u2u", "next_user")}}
    assert channel_spec("next_user").score_column == "score_next_user"
    assert channel_spec("next_user").trained_in == "similarity"
    cfg = DualRecConfig.load(None, {"retrieval.channels": '["i2u2u", "next_user"]', "retrieval.k": {"next_user": 7}})
    assert channel_names(cfg) == ["i2u2u", "next_user"]
    assert channel_k(cfg, "next_user") == 7 and channel_k(cfg, "i2u2u") == 300
    assert channel_tables(channel_names(cfg)) == ("item_positive_users", "user_similar", "user_embeddings")
    with pytest.raises(ValueError, match="ghost"):
        channel_names(DualRecConfig.from_dict({"retrieval": {"channels": ["ghost"]}}))
    with pytest.raises(ValueError, match="lower-case identifier"):
        register("Bad-Name", f"{__name__}:EchoChannel")


def test_missing_channel_input_fails_before_any_work(lake, spark):
    from dualrec.lake import LakeError
    from dualrec.stages.retrieve import run

    ctx = _ctx(lake, spark, **{"retrieval.channels": '["next_user"]'})
    with pytest.raises(LakeError, match=r"user_embeddings.*next_user.*two_tower"):
        run(ctx)


def test_candidates_contract_accepts_any_channel_score_column(spark, tmp_path):
    from dualrec.lake import conform_df
    from schemas.tables import spark_schema, table_spec
    from schemas.validate import validate_arrow

    df = spark.createDataFrame(
        [(0, 1, 2, 0.5, None, ["brand_new"])],
        "batch int, item_id long, user_id long, score_brand_new double, score_other float, channels array<string>",
    )
    out = conform_df("candidates", df.withColumn("junk", df.batch))
    assert out.columns == ["batch", "item_id", "user_id", "channels", "score_brand_new", "score_other"]
    assert dict(out.dtypes)["score_brand_new"] == "float"  # typed by the pattern
    lk = Lake(str(tmp_path / "lk"))
    lk.write_df(df, "candidates", D)
    back = lk.read_df(spark, "candidates", [D], with_dt=False)
    assert "score_brand_new" in back.columns and back.first()["score_brand_new"] == pytest.approx(0.5)
    bad = pa.table({"batch": pa.array([0], pa.int32()), "item_id": pa.array([1], pa.int64()), "user_id": pa.array([2], pa.int64()),
                    "channels": pa.array([["x"]], pa.list_(pa.string())), "score_x": pa.array(["high"])})
    rep = validate_arrow("candidates", D, bad)
    assert not rep.ok and "score_x" in str(rep)
    assert [c.name for c in table_spec("candidates").pattern_columns(["score_a", "scoreb", "score_"])] == ["score_a"]
    assert "score_a" in spark_schema("candidates", names=["score_a"]).fieldNames()


def _next_user_artefacts(lake):
    """user_embeddings for every user, and an untrained next_user model of matching shape."""
    import torch

    from models.next_user import NextUserModel, NextUserSpec, save_next_user

    rng = np.random.default_rng(2)
    users = list(range(1, 13))
    lake.write_table("user_embeddings", D, pa.table({
        "user_id": pa.array(users, pa.int64()),
        "emb": pa.array([rng.normal(size=8).astype(np.float32) for _ in users], pa.list_(pa.float32())),
    }))
    torch.manual_seed(0)
    cfg = DualRecConfig().next_user
    model = NextUserModel(NextUserSpec.from_cfg(cfg, 8, DIM, dim=8, heads=2, id_buckets=64, cat_buckets=8))
    with lake.publish_dir(Lake.model_rel("next_user", D)) as rel:
        save_next_user(model, lake, rel, {"day": str(D)})
    return model


def test_next_user_channel_generates_for_items_without_positives(lake, spark):
    from dualrec.channels.next_user import item_arrays
    from models.next_user import UserTable, generate

    _, index, vecs = _two_tower_artefacts(lake, spark)
    model = _next_user_artefacts(lake)
    ctx = _ctx(lake, spark, **{"retrieval.k": {"next_user": 3}})
    got = by_item(get_channel("next_user").retrieve(ctx, items_df(ctx)))
    # every item gets K users, even 101 and 102 that have no positive user before their cutoff
    assert set(got) == {100, 101, 102} and all(len(v) == 3 for v in got.values())
    assert all(set(v) <= set(AVAILABLE) for v in got.values())
    # item 100 (cutoff 06:00) is generated from its positives before the cutoff only: user 5, not user 6
    items = lake.read_table("items", D).sort_by("item_id")
    emb = lake.read_table("user_embeddings", D)
    users = UserTable.build(emb.column("user_id").to_numpy(), np.stack(emb.column("emb").to_numpy(zero_copy_only=False)))
    e = generate(model, item_arrays(items, model.spec), [np.array([5]), np.zeros(0, np.int64), np.zeros(0, np.int64)], users)
    s = vecs @ e[0]
    top = np.array(AVAILABLE)[np.argsort(-s)[:3]]
    assert set(got[100]) == set(top.tolist())
    assert got[100][int(top[0])] == pytest.approx(float(s.max()), rel=1e-4)


# ---------------------------------------------------------------------- a new channel is one new module
_THROWAWAY = '''
"""A throwaway channel written by the test: the 7 available users with the smallest ids."""
from dualrec.channels.base import Channel, ChannelSpec, available_users


class Smallest(Channel):
    name = "smallest_ids"

    def retrieve(self, ctx, items_df):
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        users = available_users(ctx).orderBy("user_id").limit(7)
        pairs = items_df.select("item_id").crossJoin(users)
        return pairs.select("item_id", "user_id", (F.lit(1.0) / F.col("user_id")).cast("float").alias("score"))


CHANNEL = ChannelSpec(name="smallest_ids", factory=Smallest, k=7, enabled=True, tables=("activity_scores",))
'''


@pytest.mark.slow
def test_a_new_channel_module_reaches_candidates_evaluate_and_report(spark, tmp_path, monkeypatch):
    """No edit anywhere but the new module: candidates get its score column, evaluate its channel
    share and truth recall, the report its name."""
    import importlib
    import sys

    from pyspark.sql import functions as F

    from dualrec.channels import register, unregister
    from dualrec.evaluation import evaluate, metrics_table
    from dualrec.evaluation.report import load_history, trend_series, write_report
    from dualrec.stages.base import run_stage
    from dualrec.synth import generate
    from schemas.tables import RANK_TASKS

    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "throwaway_channel.py").write_text(_THROWAWAY)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    mod = importlib.import_module("throwaway_channel")
    register(mod.CHANNEL)
    try:
        root = str(tmp_path / "world")
        generate(root, preset="tiny", start="2026-01-01", days=3, seed=3)
        lk, day = Lake(root), dt.date(2026, 1, 2)
        users = lk.read_table("users", day).column("user_id").to_numpy()
        lk.write_table("activity_scores", day, pa.table({
            "user_id": pa.array(users, pa.int64()), "p_active": pa.array(np.full(len(users), 0.5)),
            "available": pa.array(np.ones(len(users), bool))}))
        cfg = DualRecConfig.load(None, {"dispatch.batches_per_day": 4, "dispatch.L": 5})
        assert channel_names(cfg)[-1] == "smallest_ids"  # enabled by its declaration
        ctx = StageContext(lake=lk, day=day, cfg=cfg.with_override("retrieval.channels", '["smallest_ids"]'), _spark=spark)
        run_stage("retrieve", None, ctx)
        cand = lk.read_table("candidates", day)
        assert "score_smallest_ids" in cand.column_names
        assert {tuple(c) for c in cand.column("channels").to_pylist()} == {("smallest_ids",)}
        # stand-in for the ranker: g = the channel score (rank is not under test here)
        c = lk.read_df(spark, "candidates", [day], with_dt=False)
        ranked = c.select("batch", "item_id", "user_id", "channels", *[F.lit(0.1).cast("float").alias(f"s_{t}") for t in RANK_TASKS],
                          F.lit(1.0).cast("float").alias("theta"), F.col("score_smallest_ids").alias("g"))
        lk.write_df(ranked, "ranked", day)
        run_stage("dispatch", None, ctx)
        m = evaluate(lk, day, ctx.cfg, spark=spark)
        assert m["dispatch"]["channel_share"]["smallest_ids"] == pytest.approx(1.0)
        assert m["retrieval"]["truth_recall"]["smallest_ids"] is not None
        lk.write_table("metrics", day, metrics_table(m))
        html = Path(write_report(lk, day, m).replace("file://", "")).read_text()
        assert "smallest_ids" in html
        assert "retrieval.truth_recall.smallest_ids" in trend_series(load_history(lk))["Truth recall of retrieval"]
    finally:
        unregister("smallest_ids")
        sys.modules.pop("throwaway_channel", None)
