"""Row fingerprints (dualrec.fingerprint): equal for the same rows in any order or file split,
different for one flipped bit, a null, a reordered list; and the first differing stage is named."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dualrec.fingerprint import day_fingerprints, first_difference, partition_fingerprint, table_fingerprint
from dualrec.lake import Lake

DAY = dt.date(2026, 1, 5)


def _cands(n: int = 50, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({
        "batch": pa.array(rng.integers(0, 4, n), pa.int32()),
        "item_id": pa.array(np.arange(n) // 5, pa.int64()),
        "user_id": pa.array(np.arange(n) % 5 * 11, pa.int64()),
        "score_two_tower": pa.array(rng.random(n).astype(np.float32)),
        "score_i2i2u": pa.array([None if i % 3 else float(i) for i in range(n)], pa.float32()),
        "channels": pa.array([["two_tower"] if i % 2 else ["two_tower", "i2i2u"] for i in range(n)],
                             pa.list_(pa.string())),
    })


def fp(t: pa.Table) -> dict:
    return table_fingerprint([t])


def test_same_rows_in_any_order_split_or_column_order_give_the_same_fingerprint():
    t = _cands()
    perm = np.random.default_rng(1).permutation(t.num_rows)
    shuffled = t.take(pa.array(perm)).select(list(reversed(t.column_names)))
    split = table_fingerprint([shuffled.slice(0, 7), shuffled.slice(7, 30), shuffled.slice(37)])
    assert fp(t) == split == {"rows": t.num_rows, "hash": fp(t)["hash"]}


def test_one_changed_bit_a_null_or_a_reordered_list_changes_the_fingerprint():
    t = _cands()
    s = t.column("score_two_tower").to_numpy().copy()
    s[17] = np.nextafter(s[17], np.float32(2))  # the last bit of one float32
    bit = t.set_column(3, "score_two_tower", pa.array(s))
    i2 = t.column("score_i2i2u").to_pylist()
    i2[0] = None  # was 0.0
    null = t.set_column(4, "score_i2i2u", pa.array(i2, pa.float32()))
    ch = t.column("channels").to_pylist()
    ch[0] = list(reversed(ch[0]))
    order = t.set_column(5, "channels", pa.array(ch, pa.list_(pa.string())))
    dup = pa.concat_tables([t, t.slice(3, 1)])
    hashes = {fp(x)["hash"] for x in (t, bit, null, order, dup)}
    assert len(hashes) == 5
    # list<struct> columns (user_match_sets): a field's value counts, and so does the order of the list
    typ = pa.list_(pa.struct([("item_id", pa.int64()), ("g", pa.float32())]))
    sets = [[{"item_id": 1, "g": 0.5}, {"item_id": 2, "g": 0.25}], [{"item_id": 3, "g": 1.0}]]
    base = pa.table({"user_id": [1, 2], "matches": pa.array(sets, typ)})
    g = pa.table({"user_id": [1, 2], "matches": pa.array([[sets[0][0], {"item_id": 2, "g": 0.5}], sets[1]], typ)})
    swapped = pa.table({"user_id": [1, 2], "matches": pa.array([sets[0][::-1], sets[1]], typ)})
    assert len({fp(x)["hash"] for x in (base, g, swapped)}) == 3
    assert fp(base.slice(1).append_column("x", pa.array([0])).drop(["x"])) == fp(base.slice(1))


def test_partition_fingerprint_ignores_how_the_rows_are_cut_into_files(tmp_path):
    a, b = Lake(str(tmp_path / "a")), Lake(str(tmp_path / "b"))
    t = _cands(200)
    a.write_table("candidates", DAY, t)
    b.write_table("candidates", DAY, t.slice(0, 1))
    # a second file with the remaining rows in reverse order: same partition content
    part = b.fs_path(b.partition_rel("candidates", DAY))
    pq.write_table(t.slice(1).take(pa.array(np.arange(198, -1, -1))), f"{part}/part-extra.parquet")
    assert len(b.data_files("candidates", DAY)) == 2
    assert partition_fingerprint(a, "candidates", DAY) == partition_fingerprint(b, "candidates", DAY)
    assert partition_fingerprint(a, "candidates", DAY + dt.timedelta(days=1)) is None


def test_first_difference_names_the_earliest_stage_that_differs(tmp_path):
    lake = Lake(str(tmp_path / "l"))
    lake.write_table("candidates", DAY, _cands())
    one = day_fingerprints(lake, DAY, ["candidates"], [])
    assert first_difference(one, one) is None
    other = {"tables": {"candidates": {"rows": 50, "hash": "0" * 16}}, "artifacts": {"two_tower": "x"}}
    assert first_difference(one, other) == {"stage": "two_tower", "differs": ["_models/two_tower"]}
    other["artifacts"] = {}
    assert first_difference(one, other) == {"stage": "retrieve", "differs": ["candidates"]}


def test_timing_rows_of_the_metrics_table_do_not_count(tmp_path):
    def metrics(seconds: float, auc: float) -> pa.Table:
        return pa.table({"metric": ["activity.auc", "cost.stage_seconds.rank", "cost.rows_per_second.rank"],
                         "value": [auc, seconds, 1e6 / seconds], "detail": [None, None, None]})

    fps = []
    for k, (sec, auc) in enumerate([(10.0, 0.7), (12.5, 0.7), (10.0, 0.71)]):
        lake = Lake(str(tmp_path / f"l{k}"))
        lake.write_table("metrics", DAY, metrics(sec, auc))
        fps.append(partition_fingerprint(lake, "metrics", DAY))
    assert fps[0] == fps[1] != fps[2]
