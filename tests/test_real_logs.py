"""Real logs are sparse: the logged recall over a horizon D+1..D+H, and quiet days that must not stop a backfill."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pytest

from dualrec.config import DualRecConfig
from dualrec.lake import Lake
from dualrec.evaluation import evaluate

DAY = dt.date(2026, 1, 3)
FLAGS = ["is_click", "is_like", "is_comment", "is_follow", "is_share", "is_profile_enter", "is_long_view"]
# dispatched on D: item 100 -> users 1, 2, 3; item 101 -> users 2, 4
MATCH = [(100, 1), (100, 2), (100, 3), (101, 2), (101, 4)]
# liked on D+k: k=1 (100,1) hit, (101,9) miss; k=2 (100,2) hit; k=3 (101,4) hit
LIKES = {1: [(100, 1), (101, 9)], 2: [(100, 2)], 3: [(101, 4)]}


def _ts(day: dt.date, hour: int) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, tzinfo=dt.timezone.utc)


@pytest.fixture()
def lake(tmp_path) -> Lake:
    lk = Lake(str(tmp_path / "lake"))
    lk.write_meta({"emb_dim": 4})
    users = list(range(1, 11))
    lk.write_table("items", DAY, pa.table({
        "item_id": [100, 101], "creator_id": [7, 8], "upload_ts": [_ts(DAY, 10), _ts(DAY, 11)],
        "category": [1, 2], "duration_ms": [1000] * 2, "content_emb": [[0.1, 0.2, 0.3, 0.4]] * 2}))
    lk.write_table("activity_scores", DAY, pa.table({"user_id": users, "p_active": [u / 10 for u in users],
                                                     "available": [True] * 10}))
    lk.write_table("match_sets", DAY, pa.table({
        "batch": [0] * len(MATCH), "user_id": [u for _, u in MATCH], "item_id": [i for i, _ in MATCH],
        "g": [0.5] * len(MATCH), "rank_in_item": [1] * len(MATCH), "channels": [["two_tower"]] * len(MATCH)}))
    lk.write_table("visits", DAY + dt.timedelta(days=1), pa.table({"user_id": [1, 9], "sessions": [1, 1],
                                                                   "watch_ms": [0, 0]}))
    for k, pairs in LIKES.items():
        d = DAY + dt.timedelta(days=k)
        cols = {"user_id": [u for _, u in pairs], "item_id": [i for i, _ in pairs], "ts": [_ts(d, 9)] * len(pairs),
                "play_time_ms": [0] * len(pairs)}
        cols.update({f: [int(f in ("is_click", "is_like"))] * len(pairs) for f in FLAGS})
        lk.write_table("interactions", d, pa.table(cols))
    return lk


def _cfg() -> DualRecConfig:
    return DualRecConfig().with_override("dispatch.L", 3).with_override("dispatch.Q", 2)


def test_recall_horizon_counts_positives_over_the_window(lake, spark):
    by_h = {h: evaluate(lake, DAY, _cfg(), spark=spark, horizon_days=h)["quality"] for h in (1, 2, 3, 5)}
    assert by_h[1]["recall_at_l"] == pytest.approx(1 / 2)
    assert by_h[2]["recall_at_l"] == pytest.approx(2 / 3)
    assert by_h[3]["recall_at_l"] == pytest.approx(3 / 4)
    assert by_h[5]["recall_at_l"] == pytest.approx(3 / 4)  # D+4, D+5 are not in the lake: the window is what exists
    assert [by_h[h]["recall_horizon_days"] for h in (1, 2, 3, 5)] == [1, 2, 3, 5]
    assert by_h[3]["recall_items_with_positives"] == 2
    with pytest.raises(ValueError, match="horizon_days"):
        evaluate(lake, DAY, _cfg(), spark=spark, horizon_days=0)


def test_recall_horizon_is_null_without_next_day(lake, spark):
    m = evaluate(lake, DAY + dt.timedelta(days=3), _cfg(), spark=spark, horizon_days=3)
    assert m["quality"]["recall_at_l"] is None


def test_cli_evaluate_horizon_days(lake, capsys):
    from jobs.cli import main

    base = ["evaluate", "--lake", lake.root, "--date", DAY.isoformat(), "--set", "dispatch.L=3", "--set", "dispatch.Q=2",
            "--json"]
    assert main(base) == 0
    assert json.loads(capsys.readouterr().out)["quality"]["recall_at_l"] == pytest.approx(1 / 2)
    assert main([*base, "--horizon-days", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["quality"]["recall_at_l"] == pytest.approx(3 / 4)
    with pytest.raises(SystemExit) as e:
        main([*base, "--horizon-days", "0"])
    assert e.value.code == 2


def test_keep_previous_copies_the_model_and_says_so(tmp_path):
    from dualrec.artifacts import keep_previous, read_manifest

    lk = Lake(str(tmp_path / "lake"))
    d0, d1, d2 = DAY, DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=2)
    with lk.publish_dir(Lake.model_rel("ranker", d0)) as st:
        lk.write_text(f"{st}/weights.bin", "w0")
        lk.fs.create_dir(lk.fs_path(f"{st}/sub"))
        lk.write_text(f"{st}/sub/part.txt", "p0")
        lk.write_text(f"{st}/manifest.json", json.dumps({"train_end": "2026-01-02", "day": d0.isoformat()}))
    m1 = keep_previous(lk, "ranker", d1, d0, "no exposures in the training window")
    m2 = keep_previous(lk, "ranker", d2, d1, "no exposures again")
    assert lk.model_days("ranker") == [d0, d1, d2]  # complete artefacts, one per day
    on_disk = read_manifest(lk, "ranker", d2)
    assert on_disk == m2 and m1["kept_from"] == m2["kept_from"] == d0.isoformat()  # followed to the trained day
    assert on_disk["kept_previous"] is True and on_disk["reason"] == "no exposures again"
    assert on_disk["train_end"] == "2026-01-02" and on_disk["day"] == d2.isoformat()
    rel = Lake.model_rel("ranker", d2)
    assert lk.read_text(f"{rel}/weights.bin") == "w0" and lk.read_text(f"{rel}/sub/part.txt") == "p0"
    assert "kept_previous" not in read_manifest(lk, "ranker", d0)


def _ml_lake_with_gap(tmp_path) -> tuple[Lake, list[dt.date]]:
    """A MovieLens-style lake: 4 busy days, then a day nobody rates anything, then one more day."""
    import calendar

    from dualrec.ingest import ingest

    root = tmp_path / "ml"
    root.mkdir()
    days = [dt.date(1997, 9, 22) + dt.timedelta(days=k) for k in range(6)]
    ratings = []
    for k, d in enumerate(days):
        if k == 4:
            continue  # the quiet day
        t = calendar.timegm((d.year, d.month, d.day, 10, 0, 0, 0, 0, 0))
        for u in range(1, 9):
            for i in range(1, 7):
                ratings.append((u, 10 * k + i, 1 + (u * i + k) % 5, t + 60 * (u * 7 + i)))
    (root / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings))
    items = sorted({i for _, i, _, _ in ratings})
    (root / "u.item").write_text("".join(f"{i}|Movie {i} (1990)|01-Jan-1990||x|{'|'.join(['0'] * 18 + ['1'])}\n"
                                         for i in items), encoding="latin-1")
    (root / "u.user").write_text("".join(f"{u}|30|M|other|1234\n" for u in range(1, 9)))
    lake = Lake(str(tmp_path / "lake"))
    ingest("movielens", root, lake.root)
    assert lake.read_table("interactions", days[4]).num_rows == 0
    return lake, days


@pytest.mark.slow
def test_ranker_keeps_its_model_when_the_incremental_window_is_empty(tmp_path, spark):
    from dualrec.artifacts import read_manifest
    from dualrec.ranking import model_for_day
    from dualrec.stages import rank
    from dualrec.stages.base import StageContext

    lake, days = _ml_lake_with_gap(tmp_path)
    cfg = DualRecConfig().with_override("rank.epochs", 1)
    first = rank.train(StageContext(lake=lake, day=days[4], cfg=cfg, _spark=spark))  # trains on days 0..3
    assert first["trained"] and first["window"][1] == days[3].isoformat()
    quiet = rank.train(StageContext(lake=lake, day=days[5], cfg=cfg, _spark=spark))  # window = day 4 only: empty
    assert quiet["trained"] is False and quiet["kept_previous"] == days[4].isoformat()
    m = read_manifest(lake, "ranker", days[5])
    assert m["kept_previous"] is True and m["kept_from"] == days[4].isoformat() and "no exposures" in m["reason"]
    assert m["train_end"] == days[3].isoformat()  # the next warm start still covers the quiet day
    m_day, model = model_for_day(lake, days[5])
    assert m_day == days[5] and model is not None


QUIET_CFG = {"activity.n_estimators": 10, "activity.train_target_days": 2, "activity.lookback_days": 3,
             "two_tower.epochs": 1, "two_tower.train_window_days": 3, "rank.epochs": 1, "rank.train_window_days": 2,
             # every user of this lake rates every item of its day, so seen pairs and a visitor cap would
             # leave day 5 with nothing to retrieve (a property of the data, not of the quiet day before it)
             "retrieval.exclude_seen": False, "activity.expected_active_cap": 0}


@pytest.mark.slow
def test_a_day_without_uploads_keeps_the_models_and_publishes_empty_outputs(tmp_path, spark):
    """Day 4 of the gap lake has no upload: two_tower and rank keep day 3's models (no Spark training),
    every output partition of the day is published (empty where nothing was retrieved), the day is
    complete, and day 5 warm-starts and trains as usual."""
    from dualrec.artifacts import read_manifest
    from dualrec.pipeline import is_day_done, run_day
    from dualrec.stages.base import partition_rows

    lake, days = _ml_lake_with_gap(tmp_path)
    cfg = DualRecConfig()
    for k, v in QUIET_CFG.items():
        cfg = cfg.with_override(k, v)
    assert partition_rows(lake, "items", days[4]) == 0 and partition_rows(lake, "items", days[3]) > 0
    run_day(lake, days[3], cfg, progress=lambda m: None)
    stats = run_day(lake, days[4], cfg, progress=lambda m: None)
    assert is_day_done(lake, days[4])
    for name in ("two_tower", "ranker"):
        m = read_manifest(lake, name, days[4])
        assert m["kept_previous"] is True and m["kept_from"] == days[3].isoformat(), name
        assert "no uploads" in m["reason"], name
    assert read_manifest(lake, "ranker", days[4])["train_end"] == read_manifest(lake, "ranker", days[3])["train_end"]
    for table in ("user_embeddings", "candidates", "ranked", "match_sets", "user_match_sets"):
        assert lake.has_partition(table, days[4]) and partition_rows(lake, table, days[4]) == 0, table
    assert partition_rows(lake, "metrics", days[4]) > 0
    assert json.loads(lake.read_text(f"{Lake.model_rel('user_index', days[4])}/manifest.json"))["n"] == 0
    assert stats is not None
    # the next day with uploads trains again, warm-started from the kept models
    run_day(lake, days[5], cfg, progress=lambda m: None)
    r5 = read_manifest(lake, "ranker", days[5])
    assert "kept_previous" not in r5 and r5["warm_start_from"] == days[4].isoformat()
    assert r5["train_start"] == days[3].isoformat()  # covers the quiet day's predecessor onward
    t5 = read_manifest(lake, "two_tower", days[5])
    assert "kept_previous" not in t5 and t5["warm_start_from"] == days[4].isoformat()
    assert partition_rows(lake, "ranked", days[5]) > 0


def test_train_without_uploads_switches_the_empty_day_path_off(tmp_path):
    from dualrec.stages import rank, two_tower
    from dualrec.stages.base import StageContext

    lake, days = _ml_lake_with_gap(tmp_path)
    cfg = DualRecConfig().with_override("two_tower.train_without_uploads", True)
    assert two_tower.empty_day(StageContext(lake=lake, day=days[4], cfg=cfg)) is None
    cfg = DualRecConfig().with_override("rank.train_without_uploads", True)
    assert rank.empty_day(StageContext(lake=lake, day=days[4], cfg=cfg)) is None
    # without an earlier model there is nothing to keep: the day runs normally
    assert two_tower.empty_day(StageContext(lake=lake, day=days[4], cfg=DualRecConfig())) is None
