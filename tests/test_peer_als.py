"""ALS peer benchmark: recall computation, training set, and ALS recommending only known users."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from benchmarks import als_peer as P

FLAGS = ("is_click", "is_like", "is_comment", "is_follow", "is_share", "is_profile_enter", "is_long_view")


def _inter(spark, rows):
    """rows: (user_id, item_id, dict of flags set to 1)."""
    data = [(u, i, *[int(f in flags) for f in FLAGS]) for u, i, flags in rows]
    return spark.createDataFrame(data, ["user_id", "item_id", *FLAGS])


def _pairs(spark, rows, cols=("item_id", "user_id")):
    return spark.createDataFrame(rows, list(cols))


def test_recall_per_item_macro_micro_and_uncovered_items_count_zero(spark):
    positives = _pairs(spark, [(1, 10), (1, 11), (1, 12), (1, 13), (2, 20), (3, 30), (4, 40)])
    assigned = _pairs(spark, [(1, 10), (1, 11), (1, 99), (2, 20), (2, 21), (4, 41)])  # item 3 uncovered
    per = {r["item_id"]: (r["positives"], r["hits"], r["recall"]) for r in P.recall_per_item(assigned, positives).collect()}
    assert per == {1: (4, 2, 0.5), 2: (1, 1, 1.0), 3: (1, 0, 0.0), 4: (1, 0, 0.0)}
    s = P.summarize_recall(P.recall_per_item(assigned, positives))
    assert s["macro"] == pytest.approx((0.5 + 1 + 0 + 0) / 4)
    assert s["micro"] == pytest.approx(3 / 7)
    assert (s["items"], s["positives"]) == (4, 7)
    # restricted to a group: items without positives (5) are not in the denominator
    only = P.summarize_recall(P.recall_per_item(assigned, positives, _pairs(spark, [(1,), (5,)], ["item_id"])))
    assert (only["macro"], only["items"]) == (0.5, 1)
    # duplicates in either input must not inflate hits
    dup = P.summarize_recall(P.recall_per_item(assigned.union(assigned), positives.union(positives)))
    assert dup["micro"] == pytest.approx(3 / 7)


def test_recall_is_none_without_positives(spark):
    empty = _pairs(spark, [(1, 1)]).where("item_id < 0")
    s = P.summarize_recall(P.recall_per_item(_pairs(spark, [(1, 10)]), empty))
    assert s["macro"] is None and s["micro"] is None and s["items"] == 0


def test_training_set_weights_and_drops_feedbackless_exposures(spark):
    inter = _inter(spark, [
        (1, 10, {"is_click"}),
        (1, 10, {"is_like", "is_click"}),  # same pair on another day: summed
        (2, 10, set()),  # exposure without feedback: dropped
        (3, 11, {"is_follow"}),
    ])
    w = {"is_click": 1.0, "is_like": 4.0, "is_follow": 8.0}
    got = {(r["user_id"], r["item_id"]): r["rating"] for r in P.training_set(inter, w).collect()}
    assert got == {(1, 10): 6.0, (3, 11): 8.0}


def test_positive_pairs_are_explicit_feedback_only(spark):
    inter = _inter(spark, [(1, 10, {"is_click", "is_long_view"}), (2, 10, {"is_profile_enter"}),
                           (3, 11, {"is_share"}), (3, 11, {"is_like"})])
    got = sorted((r["item_id"], r["user_id"]) for r in P.positive_pairs(inter).collect())
    assert got == [(10, 2), (11, 3)]


def test_warm_items_exclude_uploads_of_d_and_d_plus_1(spark):
    nxt = _inter(spark, [(1, 5, set()), (2, 6, {"is_like"}), (3, 7, set()), (4, 8, set())])
    uploads = _pairs(spark, [(6,), (8,)], ["item_id"])
    assert sorted(r["item_id"] for r in P.warm_items(nxt, uploads).collect()) == [5, 7]


def test_als_recommends_only_known_users_and_nothing_for_unknown_items(spark):
    # two taste groups: users 0..7 like items 100..104, users 8..15 like items 200..204;
    # user ids are large int64 to exercise the dense id mapping
    base = 10_000_000_000
    rows = []
    for u in range(16):
        items = range(100, 105) if u < 8 else range(200, 205)
        for i in items:
            if (u + i) % 5 != 0:  # leave holes so there is something to recommend
                rows.append((base + u, i, {"is_like"}))
    rows.append((base + 99, 300, set()))  # exposure without feedback: user 99 and item 300 stay unknown
    train = P.training_set(_inter(spark, rows), P.AlsParams().weights)
    fit = P.fit_als(train, P.AlsParams(rank=4, max_iter=8, reg_param=0.05, alpha=5.0), seed=3)
    query = _pairs(spark, [(100,), (200,), (300,), (999,)], ["item_id"])
    recs_df = P.recommend_users(fit, query, 5).cache()
    recs = recs_df.collect()
    known = {base + u for u in range(16)}
    assert recs, "ALS returned nothing"
    assert {r["user_id"] for r in recs} <= known
    assert {r["item_id"] for r in recs} == {100, 200}  # unknown items (no feedback / never seen) get nothing
    for item in (100, 200):
        mine = sorted((r["rank"], r["user_id"]) for r in recs if r["item_id"] == item)
        assert [k for k, _ in mine] == [1, 2, 3, 4, 5]  # top-L, 1-based ranks
        group = range(0, 8) if item == 100 else range(8, 16)
        top3 = [u for _, u in mine[:3]]
        assert all(u - base in group for u in top3), (item, top3)  # the taste structure is learnt
    load = P.coverage_and_load(recs_df, query)
    assert (load["items"], load["items_covered"]) == (4, 2)
    per_user: dict[int, int] = {}
    for r in recs:
        per_user[r["user_id"]] = per_user.get(r["user_id"], 0) + 1
    assert load["max_du"] == max(per_user.values()) and load["users_matched"] == len(per_user)
    assert P.users_over_cap(recs_df, 1) == sum(1 for c in per_user.values() if c > 1)


def test_benchmark_on_tiny_world_als_only(spark, tiny_world, tmp_path):
    """The script end to end on the (read-only) tiny world without a pipeline run: ALS figures only."""
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks.peer_als import main

    before = sorted(os.listdir(tiny_world))
    out_json = tmp_path / "als.json"
    day = dt.date(2026, 1, 10)
    assert main(["--lake", tiny_world, "--date", day.isoformat(), "--rank", "8", "--iters", "4",
                 "--window", "7", "--L", "50", "--partitions", "2", "--json", str(out_json)]) == 0
    assert sorted(os.listdir(tiny_world)) == before  # nothing written into the shared world
    out = json.loads(out_json.read_text())
    new, warm = out["als_new"], out["als_warm"]
    assert out["pipeline_new"] is None
    assert 0 < new["items_covered"] < new["items"]  # some new items have no feedback on D: no cold start
    assert 0 <= new["recall_new"]["macro"] <= 1 and new["recall_new"]["items"] > 0
    assert new["recall_new_covered_only"]["macro"] >= new["recall_new"]["macro"]
    assert warm["items"] > 0 and warm["recall_warm"]["items"] > 0
    assert new["max_du"] >= 1


def test_dense_ids_are_a_bijection_onto_0_n(spark):
    ids = spark.createDataFrame([(x,) for x in [5, 10_000_000_000, 7, 5, -3, 2**40, 11]], ["user_id"])
    got = {r["user_id"]: r["uidx"] for r in P.dense_ids(ids, "user_id", "uidx", buckets=4).collect()}
    assert set(got) == {5, 10_000_000_000, 7, -3, 2**40, 11}
    assert sorted(got.values()) == list(range(6))
    again = {r["user_id"]: r["uidx"] for r in P.dense_ids(ids, "user_id", "uidx", buckets=4).collect()}
    assert again == got  # deterministic


def test_capped_dispatch_respects_q_availability_and_upload_order(spark):
    recs = spark.createDataFrame(
        [(1, 10, 0.9), (1, 11, 0.8), (1, 12, 0.7), (2, 10, 0.95), (2, 11, 0.1), (2, 13, 0.5)],
        ["item_id", "user_id", "score"],
    )
    order = spark.createDataFrame([(1, 0, 0), (2, 1, 0)], ["item_id", "item_rank", "batch"])
    got = P.capped_dispatch(recs, order, available_users=[10, 11, 13], L=2, Q=1)
    pairs = sorted(zip(got["item_id"], got["user_id"]))
    # item 1 (earlier upload) takes its best two available users; user 12 is not available;
    # item 2 then finds 10 and 11 full (Q=1) and gets only 13
    assert pairs == [(1, 10), (1, 11), (2, 13)]
