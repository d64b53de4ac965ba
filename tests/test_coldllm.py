"""ColdLLM channel (issue 18): filter -> simulator -> updated embedding, on hand-made tables
(real Spark, FAISS and torch; the simulators under test are small real classes)."""

from __future__ import annotations

import datetime as dt
import importlib
import sys

import numpy as np
import pyarrow as pa
import pytest

from dualrec.config import DualRecConfig, TwoTowerConfig
from dualrec.lake import Lake
from dualrec.stages.base import StageContext

from channel_helpers import by_item, items_df

D = dt.date(2026, 1, 10)
UTC = dt.timezone.utc
DIM, UDIM = 4, 8
USERS = list(range(1, 41))
AVAILABLE = [u for u in USERS if u % 7]  # 7, 14, ... are not available


def ts(day: dt.date, hour: float) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=UTC) + dt.timedelta(hours=hour)


def _items(ids, day, seed):
    rng = np.random.default_rng(seed)
    return pa.table({
        "item_id": pa.array(ids, pa.int64()),
        "creator_id": pa.array([i % 3 for i in ids], pa.int64()),
        "upload_ts": pa.array([ts(day, 1 + 5 * (k % 4)) for k in range(len(ids))], pa.timestamp("us", tz="UTC")),
        "category": pa.array([i % 2 for i in ids], pa.int32()),
        "duration_ms": pa.array([10_000 + 100 * i for i in ids], pa.int64()),
        "content_emb": pa.array([rng.normal(size=DIM).astype(np.float32) for _ in ids], pa.list_(pa.float32())),
    })


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """D's 6 uploads, 40 users (available ones in the FAISS user index), an untrained filter."""
    import torch

    from models.ann import build_index
    from models.coldllm import ContentFilter, FilterSpec, save_filter

    lk = Lake(str(tmp_path_factory.mktemp("coldllm_lake")))
    lk.write_meta({"emb_dim": DIM})
    lk.write_table("items", D, _items([100, 101, 102, 103, 104, 105], D, 0))
    lk.write_table("activity_scores", D, pa.table({
        "user_id": pa.array(USERS, pa.int64()),
        "p_active": pa.array([0.9 if u in AVAILABLE else 0.1 for u in USERS], pa.float64()),
        "available": pa.array([u in AVAILABLE for u in USERS]),
    }))
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(len(USERS), UDIM)).astype(np.float32)
    lk.write_table("user_embeddings", D, pa.table({
        "user_id": pa.array(USERS, pa.int64()), "emb": pa.array(list(emb), pa.list_(pa.float32()))}))
    avail_rows = [USERS.index(u) for u in AVAILABLE]
    index = build_index(emb[avail_rows], np.array(AVAILABLE), TwoTowerConfig())
    with lk.publish_dir(Lake.model_rel("user_index", D)) as rel:
        index.save(lk, rel)
    torch.manual_seed(0)
    with lk.publish_dir(Lake.model_rel("coldllm", D)) as rel:
        save_filter(ContentFilter(FilterSpec(content_dim=DIM, dim=UDIM, hidden=16, id_buckets=64, cat_buckets=8)), lk, rel,
                    {"day": str(D)})
    lk.user_emb = emb  # type: ignore[attr-defined]
    return lk


_SIMULATORS = '''
"""Simulators written by the test (a stand-in for an LLM-backed one)."""
import numpy as np

from dualrec.channels.coldllm import InteractionSimulator

CALLS = []


class Recording(InteractionSimulator):
    """Per-item simulator: says yes to even user ids, records what it was asked."""

    def prepare(self, ctx, items, pairs):
        CALLS.append(("prepare", ctx.day, items.column("item_id").to_pylist(), pairs.num_rows))

    def simulate(self, item, users):
        CALLS.append(("simulate", int(item["item_id"]), np.asarray(users).tolist()))
        return (np.asarray(users) % 2 == 0).astype(float)


class Zero(InteractionSimulator):
    def simulate(self, item, users):
        return np.zeros(len(users))


class Broken(InteractionSimulator):
    def simulate(self, item, users):
        return np.full(len(users), 2.0)
'''


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    d = tmp_path_factory.mktemp("sims")
    (d / "coldllm_test_sims.py").write_text(_SIMULATORS)
    sys.path.insert(0, str(d))
    mod = importlib.import_module("coldllm_test_sims")
    yield mod
    sys.path.remove(str(d))
    sys.modules.pop("coldllm_test_sims", None)


def _ctx(lake, spark, **over) -> StageContext:
    cfg = DualRecConfig.load(None, {"dispatch.batches_per_day": 4, "coldllm.filter_k": 10, "retrieval.k": {"coldllm": 5},
                                    **over})
    return StageContext(lake=lake, day=D, cfg=cfg, _spark=spark)


def _filter_emb(lake):
    from models.coldllm import encode_items, filter_embeddings, load_filter

    m = load_filter(lake, D)
    items = lake.read_table("items", D).sort_by("item_id")
    return items.column("item_id").to_pylist(), filter_embeddings(m, encode_items(items, m.spec))


def _exact_top(lake, q: np.ndarray, k: int) -> list[int]:
    rows = [USERS.index(u) for u in AVAILABLE]
    s = lake.user_emb[rows] @ q
    order = np.lexsort((np.array(AVAILABLE), -s))
    return [AVAILABLE[i] for i in order[:k]]


# ---------------------------------------------------------------------- pure pieces
def test_updated_embeddings_mix_top_n_and_zero_fallback():
    from models.coldllm import updated_embeddings

    f = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    uids = np.array([1, 2, 3], np.int64)
    uemb = np.array([[2.0, 0.0], [0.0, 2.0], [4.0, 4.0]], np.float32)
    users = [np.array([3, 1, 2]), np.array([1, 2])]
    probs = [np.array([0.5, 0.5, 0.1]), np.zeros(2)]
    e, n = updated_embeddings(f, users, probs, uids, uemb, n_positive=2, min_probability=0.0, mix=0.5)
    # item 0: users 1 and 3 (p 0.5 each; user 2 is cut by n_positive=2), mean (3, 2) rescaled to |f| = 1;
    # item 1: all zero -> filter
    assert n.tolist() == [2, 0]
    assert e[0] == pytest.approx(0.5 * f[0] + 0.5 * np.array([3.0, 2.0]) / np.sqrt(13.0))
    assert e[1] == pytest.approx(f[1])
    e2, n2 = updated_embeddings(f, users, probs, uids, uemb, 2, min_probability=0.6, mix=0.5)
    assert n2.tolist() == [0, 0] and np.array_equal(e2, f)  # nobody reaches the threshold
    e3, _ = updated_embeddings(f, users, probs, uids, uemb, 2, 0.0, mix=0.0)
    assert np.array_equal(e3, f)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        updated_embeddings(f, users, [np.array([2.0, 0, 0]), np.zeros(2)], uids, uemb, 2, 0.0, 0.5)


def test_interaction_probability_is_any_of_the_tasks():
    from models.coldllm import interaction_probability
    from models.ranker import TASKS

    s = np.zeros((2, len(TASKS)), np.float32)
    s[0, TASKS.index("like")], s[0, TASKS.index("share")], s[0, TASKS.index("long_view")] = 0.5, 0.2, 0.9
    p = interaction_probability(s, ["like", "share"])
    assert p == pytest.approx([1 - 0.5 * 0.8, 0.0])


def test_filter_distillation_learns_and_is_deterministic():
    from dualrec.config import ColdLLMConfig
    from models.coldllm import ContentFilter, FilterSpec, encode_items, filter_embeddings, train_filter

    items = _items(list(range(200)), D, 3)
    w = np.random.default_rng(4).normal(size=(DIM, UDIM)).astype(np.float32)
    content = np.stack(items.column("content_emb").to_numpy(zero_copy_only=False))
    targets = (content @ w).astype(np.float32)  # behaviour embeddings that content can explain
    cfg = ColdLLMConfig(epochs=30, hidden=32, lr=0.01)
    spec = FilterSpec(DIM, UDIM, hidden=32, id_buckets=64, cat_buckets=8)
    outs = []
    for _ in range(2):
        import torch

        torch.manual_seed(5)
        m = ContentFilter(spec)
        enc = encode_items(items, spec)
        before = float(np.mean(np.sum(filter_embeddings(m, enc) * targets, 1)))
        rep = train_filter(m, enc, targets, cfg, seed=9)
        outs.append(filter_embeddings(m, enc))
    assert rep["mean_cosine"] > 0.9 and rep["epoch_loss"][-1] < rep["epoch_loss"][0]
    assert before < rep["mean_cosine"]
    assert np.array_equal(outs[0], outs[1])  # bitwise: same seed, same filter


def test_ranker_simulator_batch_equals_per_item_and_featurize_pairs():
    import pandas as pd

    from dualrec.channels.coldllm import RankerSimulator
    from models.coldllm import interaction_probability
    from models.ranker import RankerSpec, featurize_pairs, item_table_columns, new_model, predict, side_arrays, user_table_columns

    spec = RankerSpec(profile_dim=2, id_buckets=64, cat_buckets=8, emb_dim=4, hidden=8)
    rng = np.random.default_rng(0)
    ucols, icols = user_table_columns(2), item_table_columns(2)
    users = pd.DataFrame({c: rng.integers(1, 5, 5) if c in ("age_bucket", "gender", "region", "device") else rng.random(5)
                          for c in ucols})
    users["user_id"] = [1, 2, 3, 4, 5]
    items = pd.DataFrame({c: rng.random(2) for c in icols})
    items["item_id"], items["creator_id"], items["category"] = [100, 101], [7, 8], [1, 2]
    sim = RankerSimulator()
    sim.model, sim.side = new_model(spec, 1), side_arrays(users, items, spec)
    sim.tasks = ("like", "comment")
    it = pa.table({"item_id": pa.array([100, 101, 999], pa.int64())})
    asked = [np.array([1, 2, 9]), np.array([3]), np.array([4])]  # user 9 unknown, item 999 has no features
    got = sim.simulate_batch(it, asked)
    assert [len(g) for g in got] == [3, 1, 1]
    for r, u in enumerate(asked):
        assert got[r] == pytest.approx(sim.simulate({"item_id": it.column("item_id")[r].as_py()}, u))
    side = sim.side
    cat, dense = featurize_pairs(side, asked[0], side.user_rows(asked[0]), side.item_rows(np.full(3, 100)), spec, mask_item_id=True)
    assert got[0] == pytest.approx(interaction_probability(predict(sim.model, cat, dense), ("like", "comment")))
    assert got[2].tolist() == [0.0]  # an item without features cannot be simulated


# ---------------------------------------------------------------------- the channel
def test_custom_simulator_from_config_gets_the_filtered_users(lake, spark, sims):
    from dualrec.channels.base import get_channel

    sims.CALLS.clear()
    ctx = _ctx(lake, spark, **{"coldllm.simulator": "coldllm_test_sims:Recording", "coldllm.update": "mean"})
    got = by_item(get_channel("coldllm").retrieve(ctx, items_df(ctx)))
    ids, f = _filter_emb(lake)
    prep = [c for c in sims.CALLS if c[0] == "prepare"]
    assert prep == [("prepare", D, ids, 10 * len(ids))]
    asked = {c[1]: c[2] for c in sims.CALLS if c[0] == "simulate"}
    assert sorted(asked) == ids
    emb = {u: lake.user_emb[USERS.index(u)] for u in USERS}
    for r, i in enumerate(ids):
        assert set(asked[i]) == set(_exact_top(lake, f[r], 10))  # the filter's top filter_k available users
        # update: half filter, half the mean of the even ("yes") users among the filtered, at the filter's norm
        yes = sorted(u for u in asked[i] if u % 2 == 0)
        m = np.mean([emb[u] for u in yes], 0) if yes else None
        e = 0.5 * f[r] + 0.5 * m * np.linalg.norm(f[r]) / np.linalg.norm(m) if yes else f[r]
        top = _exact_top(lake, e, 5)
        assert set(got[i]) == set(top)
        assert got[i][top[0]] == pytest.approx(float(emb[top[0]] @ e), rel=1e-4)
        assert set(got[i]) <= set(AVAILABLE)


def test_zero_probability_simulator_falls_back_to_the_filter_embedding(lake, spark, sims):
    from dualrec.channels.base import get_channel

    ctx = _ctx(lake, spark, **{"coldllm.simulator": "coldllm_test_sims:Zero"})
    got = by_item(get_channel("coldllm").retrieve(ctx, items_df(ctx)))
    ids, f = _filter_emb(lake)
    for r, i in enumerate(ids):
        assert set(got[i]) == set(_exact_top(lake, f[r], 5))


def test_filter_only_does_not_run_the_simulator(lake, spark, sims):
    from dualrec.channels.base import get_channel

    sims.CALLS.clear()
    ctx = _ctx(lake, spark, **{"coldllm.simulator": "coldllm_test_sims:Recording", "coldllm.update_mix": 0.0})
    got = by_item(get_channel("coldllm").retrieve(ctx, items_df(ctx)))
    ids, f = _filter_emb(lake)
    assert sims.CALLS == []
    assert all(set(got[i]) == set(_exact_top(lake, f[r], 5)) for r, i in enumerate(ids))


def test_bad_simulator_is_refused(lake, spark, sims):
    from dualrec.channels.base import get_channel

    ctx = _ctx(lake, spark, **{"coldllm.simulator": "coldllm_test_sims:Broken"})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        get_channel("coldllm").retrieve(ctx, items_df(ctx))
    ctx = _ctx(lake, spark, **{"coldllm.simulator": "coldllm_test_sims:Missing"})
    with pytest.raises(ValueError, match="coldllm.simulator"):
        get_channel("coldllm").retrieve(ctx, items_df(ctx))


def test_channel_reaches_candidates_through_the_registry_and_is_deterministic(lake, spark, sims):
    from dualrec.channels import channel_spec, default_channels
    from dualrec.stages.retrieve import run

    assert "coldllm" not in default_channels()  # declared, off by default
    assert channel_spec("coldllm").trained_in == "similarity"
    over = {"coldllm.simulator": "coldllm_test_sims:Recording", "retrieval.channels": '["coldllm"]'}
    tables = []
    for _ in range(2):
        stats = run(_ctx(lake, spark, **over))
        tables.append(lake.read_table("candidates", D).to_pandas().sort_values(["item_id", "user_id"]).reset_index(drop=True))
    cand = tables[0]
    assert "score_coldllm" in cand.columns and stats["pairs_by_channel"]["coldllm"] == len(cand) == 6 * 5
    assert {tuple(c) for c in cand["channels"]} == {("coldllm",)}
    assert set(cand["user_id"]) <= set(AVAILABLE)
    assert tables[0][["item_id", "user_id", "score_coldllm"]].equals(tables[1][["item_id", "user_id", "score_coldllm"]])


def test_missing_filter_artefact_names_the_training_stage(lake, spark, tmp_path):
    from dualrec.channels.base import check_channel_inputs
    from dualrec.lake import LakeError

    other = Lake(str(tmp_path / "empty"))
    other.write_table("user_embeddings", D, lake.read_table("user_embeddings", D))
    with pytest.raises(LakeError, match=r"'coldllm'.*run stage 'similarity'"):
        check_channel_inputs(other, D, ["coldllm"])


def test_trainer_publishes_a_point_in_time_filter_and_warm_starts(lake, spark, tmp_path):
    from dualrec.channels.coldllm import train
    from models.coldllm import load_filter
    from schemas.tables import arrow_schema

    lk = Lake(str(tmp_path / "train"))
    lk.write_meta({"emb_dim": DIM})
    y = D - dt.timedelta(days=1)
    lk.write_table("items", y, _items([50, 51, 52], y, 5))
    # positives on D-1 (used) and on D (after the horizon: never read)
    rows = [(1, 50, ts(y, 9)), (2, 50, ts(y, 10)), (3, 51, ts(y, 11)), (4, 51, ts(y, 12)), (5, 52, ts(y, 13))]
    schema = arrow_schema("interactions")

    def inter(rows):
        cols = {"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows], "ts": [r[2] for r in rows]}
        cols.update({f.name: [1 if f.name == "is_like" else 0] * len(rows) for f in schema if f.name.startswith("is_")})
        cols["play_time_ms"] = [1000] * len(rows)
        return pa.table({f.name: pa.array(cols[f.name], f.type) for f in schema})

    lk.write_table("interactions", y, inter(rows))
    lk.write_table("interactions", D, inter([(6, 52, ts(D, 1))]))
    lk.write_table("user_embeddings", D, lake.read_table("user_embeddings", D))
    cfg = DualRecConfig.load(None, {"coldllm.min_positives": 2, "coldllm.epochs": 3, "coldllm.hidden": 16,
                                    "coldllm.filter_target": "positive_users"})
    rep = train(StageContext(lake=lk, day=D, cfg=cfg, _spark=spark))
    assert rep["items"] == 2 and rep["warm_start_from"] is None  # item 52 has one positive before D
    m = load_filter(lk, D)
    assert m.manifest["training_items_uploaded"] == [str(y), str(y)] and m.manifest["positives_before"] == str(D)
    assert m.spec.dim == UDIM and m.spec.content_dim == DIM
    lk.write_table("user_embeddings", D + dt.timedelta(days=1), lake.read_table("user_embeddings", D))
    rep2 = train(StageContext(lake=lk, day=D + dt.timedelta(days=1), cfg=cfg, _spark=spark))
    assert rep2["warm_start_from"] == str(D) and rep2["items"] == 3  # D's positive on item 52 now counts
    # the default target: the two-tower item tower with the warm items' ID embeddings (another target: no warm start)
    import torch

    from models.coldllm import item_tower_targets
    from models.two_tower import TwoTowerModel, item_embeddings, model_spec, save_two_tower

    torch.manual_seed(0)
    tt = TwoTowerModel.from_spec(model_spec(TwoTowerConfig(dim=UDIM, hidden=16, id_buckets=64, id_dim=4, cat_buckets=16), DIM))
    torch.nn.init.normal_(tt.item_id.weight, std=1.0)  # "trained" ID embeddings
    with lk.publish_dir(Lake.model_rel("two_tower", D + dt.timedelta(days=1))) as rel:
        save_two_tower(tt, lk, rel, {"train_end": str(D)})
    items = lk.read_table("items", y).sort_by("item_id")
    t = item_tower_targets(tt, items)
    assert t.shape == (3, UDIM) and not np.allclose(t, item_embeddings(tt, items))  # the ID embedding counts
    cfg3 = cfg.with_override("coldllm.filter_target", "item_tower")
    rep3 = train(StageContext(lake=lk, day=D + dt.timedelta(days=1), cfg=cfg3, _spark=spark))
    assert rep3["warm_start_from"] is None and rep3["items"] == 3
    m3 = load_filter(lk, D + dt.timedelta(days=1))
    assert m3.spec.target == "item_tower" and m3.manifest["target"] == "item_tower"


def test_lift_selection_prefers_item_specific_users():
    from models.coldllm import lift_scores, updated_embeddings

    # user 1 is active everywhere (p 0.5 on both items), user 2 likes item 0 only (0.3 vs 0.01)
    users = [np.array([1, 2]), np.array([1, 2])]
    probs = [np.array([0.5, 0.3]), np.array([0.5, 0.01])]
    lift = lift_scores(users, probs)
    assert lift[0] == pytest.approx([1.0, 0.3 / 0.155]) and lift[1] == pytest.approx([1.0, 0.01 / 0.155])
    f = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    uemb = np.array([[0.0, 1.0], [0.0, -1.0]], np.float32)
    by_p, _ = updated_embeddings(f, users, probs, np.array([1, 2]), uemb, 1, 0.0, 0.5)
    by_lift, _ = updated_embeddings(f, users, probs, np.array([1, 2]), uemb, 1, 0.0, 0.5, lift)
    assert by_p[0] == pytest.approx([0.5, 0.5])  # the active user 1
    assert by_lift[0] == pytest.approx([0.5, -0.5]) and by_lift[1] == pytest.approx([0.5, 0.5])
    assert lift_scores([np.array([3])], [np.zeros(1)])[0].tolist() == [0.0]


def test_contrast_update_removes_the_shared_user_direction():
    from models.coldllm import updated_embeddings

    # every user shares the direction (0, 10); user 1 is the simulated positive
    uemb = np.array([[1.0, 10.0], [-1.0, 10.0], [0.0, 10.0]], np.float32)
    f = np.array([[0.0, 1.0]], np.float32)
    users, probs = [np.array([1, 2, 3])], [np.array([1.0, 0.0, 0.0])]
    plain, _ = updated_embeddings(f, users, probs, np.array([1, 2, 3]), uemb, 1, 0.0, 0.5)
    con, _ = updated_embeddings(f, users, probs, np.array([1, 2, 3]), uemb, 1, 0.0, 0.5, contrast=True)
    assert plain[0][1] > 0.99 * (0.5 + 0.5 * 10 / np.sqrt(101))  # pulled along the shared direction
    assert con[0] == pytest.approx([0.5, 0.5])  # only user 1's own direction (1, 0) is added
