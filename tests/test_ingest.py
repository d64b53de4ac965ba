"""Public-dataset adapters (pandas/pyarrow only, no Spark): MovieLens-100K and KuaiRand-Pure."""

from __future__ import annotations

import calendar
import csv
import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from dualrec.ingest import IngestError, ingest
from dualrec.lake import Lake
from jobs.cli import main as cli_main
from schemas.tables import INPUT_TABLES

FIX = Path(__file__).parent / "fixtures"
UTC = dt.timezone.utc


def _unix(y: int, m: int, d: int, hh: int = 0, mm: int = 0, ss: int = 0) -> int:
    return calendar.timegm((y, m, d, hh, mm, ss, 0, 0, 0))


def _all_valid(lake: Lake) -> int:
    n = 0
    for t in INPUT_TABLES:
        for d in lake.partitions(t):
            rep = lake.validate_dir(t, d)
            assert rep.ok, str(rep)
            n += 1
    return n


def _df(lake: Lake, table: str):
    return lake.read_tables(table, lake.partitions(table)).to_pandas()


# ----------------------------------------------------------------------------- MovieLens
def _write_ml(root: Path, ratings: list[tuple], items: list[tuple], users: list[tuple]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings))
    lines = []
    for mid, title, date, genres in items:
        flags = ["1" if g in genres else "0" for g in range(19)]
        lines.append("|".join([str(mid), title, date, "", "http://x", *flags]))
    (root / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    (root / "u.user").write_text("".join("|".join(map(str, u)) + "\n" for u in users))
    return root


@pytest.fixture(scope="module")
def ml_lake(tmp_path_factory) -> tuple[Lake, dict]:
    root = tmp_path_factory.mktemp("ml") / "lake"
    summary = ingest("movielens", FIX / "movielens", str(root))
    return Lake(str(root)), summary


def test_movielens_fixture_is_a_valid_lake_for_backfill(ml_lake):
    lake, summary = ml_lake
    assert _all_valid(lake) == 4 * summary["days"]
    days = lake.partitions("interactions")
    assert len(days) >= 8 and (days[-1] - days[0]).days == len(days) - 1
    for t in INPUT_TABLES:
        assert lake.partitions(t) == days
    uploads = [lake.read_table("items", d).num_rows for d in days]
    assert min(uploads) >= 10
    assert lake.emb_dim() == 32 and lake.meta()["source"]["kind"] == "movielens"
    assert summary["rows"]["interactions"] == 1329 == sum(lake.read_table("interactions", d).num_rows for d in days)
    assert summary["rows"]["items"] == 120 and summary["users"] == 60  # the user without ratings is dropped
    assert 0 < summary["positive_rates"]["like"] < summary["positive_rates"]["long_view"] < 1


def test_movielens_mapping(tmp_path):
    d1, d2 = _unix(1997, 9, 22, 10), _unix(1997, 9, 23, 5)
    src = _write_ml(
        tmp_path / "src",
        ratings=[(1, 10, 5, d1), (1, 11, 2, d1 + 60), (2, 10, 3, d2), (2, 11, 4, d2 + 1), (3, 12, 1, d2 + 7)],
        items=[(10, "Star Wars (1977)", "01-Jan-1977", {1, 5}), (11, "Heat (1995)", "01-Jan-1995", {6}),
               (12, "unknown", "", set())],
        users=[(1, 30, "F", "engineer", "94110"), (2, 17, "M", "student", "T8H1N"), (3, 60, "X", "astronaut", "")],
    )
    lake = Lake(str(tmp_path / "lake"))
    ingest("movielens", src, lake.root)
    _all_valid(lake)
    it = _df(lake, "interactions").set_index(["user_id", "item_id"])
    assert it.loc[(1, 10), ["is_click", "is_like", "is_long_view"]].tolist() == [1, 1, 1]  # rating 5
    assert it.loc[(1, 11), ["is_click", "is_like", "is_long_view"]].tolist() == [1, 0, 0]  # rating 2
    assert it.loc[(2, 10), ["is_like", "is_long_view"]].tolist() == [0, 1]  # rating 3
    assert it.loc[(2, 11), ["is_like", "is_long_view"]].tolist() == [1, 1]  # rating 4
    assert it[["is_comment", "is_follow", "is_share", "is_profile_enter", "play_time_ms"]].to_numpy().sum() == 0
    assert it.loc[(1, 10), "ts"].to_pydatetime() == dt.datetime.fromtimestamp(d1, UTC)
    assert str(it.loc[(2, 10), "dt"]) == "1997-09-23"

    items = _df(lake, "items").set_index("item_id")
    assert items.loc[10, "upload_ts"].to_pydatetime() == dt.datetime.fromtimestamp(d1, UTC)  # first rating
    assert str(items.loc[12, "dt"]) == "1997-09-23"
    assert items.loc[10, "category"] == 2 and items.loc[11, "category"] == 7 and items.loc[12, "category"] == 0
    assert (items["creator_id"] == items.index).all()

    users1 = lake.read_table("users", "1997-09-22").to_pandas().set_index("user_id")
    users2 = lake.read_table("users", "1997-09-23").to_pandas().set_index("user_id")
    assert list(users1.index) == [1]  # users 2, 3 have not rated yet
    assert sorted(users2.index) == [1, 2, 3]
    assert users2.loc[1, ["age_bucket", "gender", "region", "device"]].tolist() == [3, 2, 10, 5]
    assert users2.loc[2, ["age_bucket", "gender", "region", "device"]].tolist() == [1, 1, 0, 19]
    assert users2.loc[3, ["age_bucket", "gender", "region", "device"]].tolist() == [7, 0, 0, 0]
    assert str(users2.loc[2, "register_dt"]) == "1997-09-23"
    visits = lake.read_table("visits", "1997-09-23").to_pandas().set_index("user_id")
    assert visits.loc[2, "sessions"] == 1 and visits.loc[3, "sessions"] == 1


def test_movielens_gap_day_gives_empty_partitions(tmp_path):
    src = _write_ml(
        tmp_path / "src",
        ratings=[(1, 10, 5, _unix(1997, 9, 22, 3)), (1, 11, 4, _unix(1997, 9, 24, 3))],
        items=[(10, "A (1990)", "01-Jan-1990", {1}), (11, "B (1991)", "01-Jan-1991", {2})],
        users=[(1, 30, "F", "engineer", "94110")],
    )
    lake = Lake(str(tmp_path / "lake"))
    summary = ingest("movielens", src, lake.root)
    assert summary["days"] == 3
    assert set(lake.meta()["allow_empty_tables"]) == {"items", "visits", "interactions"}
    assert lake.read_table("interactions", "1997-09-23").num_rows == 0
    assert lake.read_table("users", "1997-09-23").num_rows == 1
    _all_valid(lake)


def test_movielens_embedding_reflects_attributes(ml_lake):
    lake, _ = ml_lake
    items = _df(lake, "items")
    emb = np.stack(items["content_emb"].to_numpy())
    assert emb.shape == (120, 32) and np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    raw = [line.split("|") for line in (FIX / "movielens" / "u.item").read_text(encoding="latin-1").splitlines()]
    genres = {int(r[0]): tuple(r[5:]) for r in raw}
    gen = np.array([genres[i] for i in items["item_id"]])
    sims = emb @ emb.T
    same = (gen[:, None, :] == gen[None, :, :]).all(-1) & ~np.eye(len(gen), dtype=bool)
    disjoint = ~((gen[:, None, :] == "1") & (gen[None, :, :] == "1")).any(-1)
    assert sims[same].mean() > sims[disjoint].mean() + 0.3


# ----------------------------------------------------------------------------- KuaiRand
LOG_COLS = ["user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like", "is_follow", "is_comment",
            "is_forward", "is_hate", "long_view", "play_time_ms", "duration_ms", "profile_stay_time",
            "comment_stay_time", "is_profile_enter", "is_rand", "tab"]


def _log_row(u, v, date, hourmin, time_ms, click=0, like=0, follow=0, comment=0, forward=0, long_view=0, play=0,
             profile=0):
    return [u, v, date, hourmin, time_ms, click, like, follow, comment, forward, 0, long_view, play, 20000, 0, 0,
            profile, 0, 1]


def _write_kr(root: Path, std1: list, std2: list, rand: list, users: list[dict], videos: list[dict]) -> Path:
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name, rows in (("log_standard_4_08_to_4_21_pure.csv", std1), ("log_standard_4_22_to_5_08_pure.csv", std2),
                       ("log_random_4_22_to_5_08_pure.csv", rand)):
        with open(data / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(LOG_COLS)
            w.writerows(rows)
    ucols = ["user_id", "user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
             "follow_user_num", "fans_user_num", "register_days"] + [f"onehot_feat{k}" for k in range(18)]
    with open(data / "user_features_pure.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ucols, restval=0)
        w.writeheader()
        w.writerows(users)
    vcols = ["video_id", "author_id", "video_type", "upload_dt", "upload_type", "visible_status", "video_duration",
             "server_width", "server_height", "music_id", "music_type", "tag"]
    with open(data / "video_features_basic_pure.csv", "w", newline="") as f:
        w = csv.DictWriter(f, vcols, restval="")
        w.writeheader()
        w.writerows(videos)
    return root


def _ms(y, m, d, hh, mm=0, ss=0) -> int:
    return _unix(y, m, d, hh, mm, ss) * 1000


@pytest.fixture()
def kr_src(tmp_path) -> Path:
    # Beijing = UTC+8: 2022-04-20 16:30 UTC is 2022-04-21 00:30 local
    std1 = [
        _log_row(1, 100, 20220421, 0, _ms(2022, 4, 20, 16, 30), click=1, like=1, play=5000),
        _log_row(1, 101, 20220421, 1500, "", click=1, long_view=1, play=30000),  # no time_ms
        _log_row(2, 100, 20220421, 900, _ms(2022, 4, 21, 1), follow=1, profile=1),
        _log_row(1, 100, 20220421, 300, _ms(2022, 4, 20, 19), forward=1, play=7000),  # same day again
    ]
    std2 = [_log_row(2, 102, 20220422, 1000, _ms(2022, 4, 22, 2), click=1, comment=1)]
    rand = [_log_row(3, 102, 20220422, 2300, _ms(2022, 4, 22, 15, 5), long_view=1)]
    users = [
        {"user_id": 1, "user_active_degree": "full_active", "is_live_streamer": 1, "is_video_author": 1,
         "fans_user_num": 321, "register_days": 10},
        {"user_id": 2, "user_active_degree": "UNKNOWN", "is_live_streamer": 0, "is_video_author": 0,
         "fans_user_num": "", "register_days": ""},
        {"user_id": 4, "user_active_degree": "low_active", "fans_user_num": 5, "register_days": 400},
    ]
    videos = [
        {"video_id": 100, "author_id": 7, "video_type": "NORMAL", "upload_dt": "2021-05-01", "video_duration": 15000.0,
         "server_width": 720, "server_height": 1280, "music_type": 1, "tag": "3,17"},
        {"video_id": 101, "author_id": 8, "video_type": "AD", "upload_dt": "2022-04-21", "video_duration": "",
         "server_width": 1280, "server_height": 720, "tag": ""},
        {"video_id": 102, "author_id": 8, "video_type": "NORMAL", "upload_dt": "2022-04-23", "video_duration": 9000,
         "tag": "5"},  # upload_dt after its first exposure
        {"video_id": 103, "author_id": 9, "video_type": "NORMAL", "upload_dt": "2022-04-22", "video_duration": 9000,
         "tag": "5"},  # uploaded inside the window, never exposed
        {"video_id": 104, "author_id": 9, "video_type": "NORMAL", "upload_dt": "2020-01-01", "video_duration": 9000,
         "tag": "5"},  # old and never exposed: not part of the window
    ]
    return _write_kr(tmp_path / "KuaiRand-Pure", std1, std2, rand, users, videos)


def test_kuairand_mapping(kr_src, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    summary = ingest("kuairand", kr_src, lake.root)
    _all_valid(lake)
    assert lake.partitions("interactions") == [dt.date(2022, 4, 21), dt.date(2022, 4, 22)]
    it = _df(lake, "interactions").set_index(["user_id", "item_id"])
    assert summary["raw_exposures"] == 6 and len(it) == 5
    r = it.loc[(1, 100)]  # two exposures folded: first time, flags OR-ed, play summed
    assert r["ts"].to_pydatetime() == dt.datetime(2022, 4, 21, 0, 30, tzinfo=UTC)  # local wall clock
    assert str(r["dt"]) == "2022-04-21"
    assert [r[f] for f in ("is_click", "is_like", "is_share", "is_long_view")] == [1, 1, 1, 0]
    assert r["play_time_ms"] == 12000
    assert it.loc[(1, 101), "ts"].to_pydatetime() == dt.datetime(2022, 4, 21, 15, 0, tzinfo=UTC)  # from hourmin
    assert it.loc[(1, 101), "is_long_view"] == 1 and it.loc[(1, 101), "is_share"] == 0
    assert it.loc[(2, 100), ["is_follow", "is_profile_enter", "is_click"]].tolist() == [1, 1, 0]
    assert it.loc[(2, 102), ["is_comment", "is_share"]].tolist() == [1, 0]
    assert it.loc[(3, 102), "ts"].to_pydatetime() == dt.datetime(2022, 4, 22, 23, 5, tzinfo=UTC)

    items = _df(lake, "items").set_index("item_id")
    assert sorted(items.index) == [100, 101, 102, 103]
    assert str(items.loc[100, "dt"]) == "2022-04-21"  # old video: catalogue arrives on day one
    assert str(items.loc[102, "dt"]) == "2022-04-22"  # never after its first exposure
    assert str(items.loc[103, "dt"]) == "2022-04-22"
    assert items.loc[100, "upload_ts"] <= it.loc[(1, 100), "ts"]
    assert items.loc[100, ["creator_id", "category", "duration_ms"]].tolist() == [7, 4, 15000]
    assert items.loc[101, ["category", "duration_ms"]].tolist() == [0, 20000]  # no tag; duration from the log
    visits = lake.read_table("visits", "2022-04-21").to_pandas().set_index("user_id")
    assert visits.loc[1, "sessions"] == 3 and visits.loc[1, "watch_ms"] == 42000

    users = lake.read_table("users", "2022-04-21").to_pandas().set_index("user_id")
    assert sorted(users.index) == [1, 2, 4]  # user 3 first appears on 04-22 and has no features
    assert str(users.loc[1, "register_dt"]) == "2022-04-12"  # last log day 04-22 minus 10 days
    assert str(users.loc[2, "register_dt"]) == "2022-04-21"  # no register_days: first exposure
    assert users.loc[1, ["region", "device", "follower_count", "age_bucket", "gender"]].tolist() == [4, 4, 321, 0, 0]
    assert users.loc[2, ["region", "device", "follower_count"]].tolist() == [0, 1, 0]
    assert users.loc[4, "region"] == 1


def test_kuairand_fixture_valid_and_deduped(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    summary = ingest("kuairand", FIX / "kuairand", lake.root)
    assert _all_valid(lake) == 16 and summary["days"] == 4
    assert summary["raw_exposures"] - summary["rows"]["interactions"] == 3  # repeated pairs folded
    assert summary["items"] == 30  # video 29 (old, never exposed) out; video 99 (no features) in
    items = _df(lake, "items").set_index("item_id")
    assert items.loc[99, "creator_id"] == -1
    assert summary["rows"]["users"] == 4 * 21


def test_kuairand_without_random_log(kr_src, tmp_path):
    (kr_src / "data" / "log_random_4_22_to_5_08_pure.csv").unlink()
    with pytest.raises(IngestError, match="log_random_4_22_to_5_08_pure.csv"):
        ingest("kuairand", kr_src, str(tmp_path / "a"))
    summary = ingest("kuairand", kr_src, str(tmp_path / "b"), include_random=False)
    assert summary["raw_exposures"] == 5


@pytest.mark.parametrize("kind", ["movielens", "kuairand"])
def test_point_in_time(kind, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    ingest(kind, FIX / kind, lake.root)
    it = _df(lake, "interactions")
    items = _df(lake, "items").set_index("item_id")
    assert it["item_id"].isin(items.index).all()
    assert (items.loc[it["item_id"], "dt"].to_numpy() <= it["dt"].to_numpy()).all()
    assert (items.loc[it["item_id"], "upload_ts"].to_numpy() <= it["ts"].to_numpy()).all()
    users = _df(lake, "users")
    known = set(zip(users["user_id"], users["dt"]))
    assert all((u, d) in known for u, d in zip(it["user_id"], it["dt"]))
    assert (users["register_dt"] <= users["dt"]).all()
    visits = _df(lake, "visits")
    assert set(zip(visits["user_id"], visits["dt"])) == set(zip(it["user_id"], it["dt"]))


# ----------------------------------------------------------------------------- errors, reruns
@pytest.mark.parametrize("kind,name", [("movielens", "u.item"), ("movielens", "u.data"),
                                       ("kuairand", "user_features_pure.csv"),
                                       ("kuairand", "log_standard_4_22_to_5_08_pure.csv")])
def test_missing_file_is_named_and_nothing_written(kind, name, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIX / kind, src, ignore=shutil.ignore_patterns("*.py"))
    next(src.rglob(name)).unlink()
    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(IngestError, match=name.replace(".", r"\.")):
        ingest(kind, src, lake.root)
    assert lake.meta() == {} and not any(lake.partitions(t) for t in INPUT_TABLES)


def test_missing_column_and_bad_values_are_named(kr_src, tmp_path):
    p = kr_src / "data" / "log_standard_4_08_to_4_21_pure.csv"
    text = p.read_text().replace("is_forward", "is_fwd")
    p.write_text(text)
    with pytest.raises(IngestError, match=r"log_standard_4_08_to_4_21_pure\.csv.*is_forward"):
        ingest("kuairand", kr_src, str(tmp_path / "lake"))
    src = _write_ml(tmp_path / "ml", [(1, 1, 7, _unix(1997, 9, 22))], [(1, "A (1990)", "", {1})],
                    [(1, 20, "M", "other", "1")])
    with pytest.raises(IngestError, match=r"u\.data.*rating"):
        ingest("movielens", src, str(tmp_path / "lake2"))
    with pytest.raises(IngestError, match="unknown dataset kind"):
        ingest("netflix", src, str(tmp_path / "lake3"))
    with pytest.raises(IngestError, match="unknown option"):
        ingest("movielens", src, str(tmp_path / "lake4"), include_random=False)


def _snapshot(lake: Lake) -> dict:
    return {(t, d): lake.read_table(t, d) for t in INPUT_TABLES for d in lake.partitions(t)}


def test_reingest_is_idempotent_and_foreign_lakes_are_refused(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    ingest("kuairand", FIX / "kuairand", lake.root)
    first, meta = _snapshot(lake), json.dumps(lake.meta(), sort_keys=True)
    ingest("kuairand", FIX / "kuairand", lake.root)
    second = _snapshot(lake)
    assert first.keys() == second.keys() and len(first) == 16
    for k in first:
        assert first[k].equals(second[k]), k
    assert json.dumps(lake.meta(), sort_keys=True) == meta
    with pytest.raises(IngestError, match="already holds"):
        ingest("movielens", FIX / "movielens", lake.root)


def test_reingest_drops_stale_days(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    ingest("movielens", FIX / "movielens", lake.root)
    src = _write_ml(tmp_path / "small", [(1, 1, 5, _unix(1997, 9, 22, 1))], [(1, "A (1990)", "", {1})],
                    [(1, 20, "M", "other", "1")])
    ingest("movielens", src, lake.root)
    for t in INPUT_TABLES:
        assert lake.partitions(t) == [dt.date(1997, 9, 22)]
    assert lake.read_table("interactions", "1997-09-22").column("user_id").to_pylist() == [1]
    assert isinstance(lake.read_table("items", "1997-09-22").column("content_emb").type, pa.ListType)


def test_cli_subcommand(tmp_path, capsys):
    assert cli_main(["ingest", "kuairand", "--src", str(FIX / "kuairand"), "--lake", str(tmp_path / "l"),
                     "--no-random-log", "--emb-dim", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["emb_dim"] == 16 and Lake(str(tmp_path / "l")).emb_dim() == 16
    assert out["raw_exposures"] == 278 - 13  # without the random log's 13 rows
