"""RecBole atomic-file adapter (pandas/pyarrow only, no Spark); the tests write their own small files."""

from __future__ import annotations

import calendar
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dualrec.ingest import IngestError, ingest
from dualrec.ingest.movielens import GENRES
from dualrec.lake import Lake
from schemas.tables import INPUT_TABLES
from test_ingest import _all_valid  # one lake-wide validity check for both adapters' tests

FIX = Path(__file__).parent / "fixtures"
UTC = dt.timezone.utc


def _unix(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> int:
    return calendar.timegm((y, m, d, hh, mm, 0, 0, 0, 0))


def _atomic(path: Path, header: str, rows: list[tuple]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _df(lake: Lake, table: str) -> pd.DataFrame:
    return lake.read_tables(table, lake.partitions(table)).to_pandas()



D1, D2 = _unix(2020, 3, 1, 10), _unix(2020, 3, 2, 5)


@pytest.fixture()
def src(tmp_path) -> Path:
    root = tmp_path / "src" / "shop"
    _atomic(root / "shop.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float", [
        ("alice", "B0A", 5, D1), ("alice", "B0B", 2.5, D1 + 60.5), ("bob", "B0A", 3, D2), ("bob", "B0B", 4, D2 + 1),
        ("carol", "B0C", 1, D2 + 7), ("alice", "B0A", 1, D1 + 3600),  # same-day repeat: folds into one row
    ])
    _atomic(root / "shop.item", "item_id:token\ttitle:token_seq\tyear:token\tclass:token_seq\tbrand:token\tprice:float", [
        ("B0A", "Red Shoe", 1999, "Shoes Sport", "acme", 10.0), ("B0B", "Blue Shoe", 2001, "Shoes", "acme", 12.0),
        ("B0C", "Hat", "", "Hats", "", ""), ("B0Z", "Never Sold", 2005, "Hats", "zed", 1.0),
    ])
    _atomic(root / "shop.user", "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token", [
        ("alice", 30, "F", "engineer", "94110"), ("bob", 17, "male", "student", "T8H1N"), ("dave", 40, "M", "x", "1"),
    ])
    return root.parent


def test_recbole_mapping(src, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    summary = ingest("recbole", src, lake.root, creator_field="brand")
    assert _all_valid(lake) == 4 * 2 and summary["kind"] == "recbole" and summary["dataset"] == "shop"
    assert summary["feedback"] == "rating" and summary["item_ids"].startswith("tokens numbered")
    assert summary["raw_exposures"] == 6 and summary["rows"]["interactions"] == 5
    assert summary["unused_items_dropped"] == 1 and summary["undescribed_items"] == 0

    # tokens of .inter and the side file share one sorted id space: alice 1, bob 2, carol 3, dave 4; B0A 1 ...
    it = _df(lake, "interactions").set_index(["user_id", "item_id"])
    assert it.loc[(1, 1), ["is_click", "is_like", "is_long_view"]].tolist() == [1, 1, 1]  # 5, OR-ed with the repeat
    assert it.loc[(1, 1), "ts"].to_pydatetime() == dt.datetime.fromtimestamp(D1, UTC)  # first time of the day
    assert it.loc[(1, 2), ["is_like", "is_long_view"]].tolist() == [0, 0]  # 2.5
    assert it.loc[(2, 1), ["is_like", "is_long_view"]].tolist() == [0, 1]  # 3
    assert it.loc[(2, 2), ["is_like", "is_long_view"]].tolist() == [1, 1]  # 4
    assert it.loc[(1, 2), "ts"].to_pydatetime() == dt.datetime.fromtimestamp(D1 + 60.5, UTC)  # sub-second kept
    assert it[["is_comment", "is_follow", "is_share", "is_profile_enter", "play_time_ms"]].to_numpy().sum() == 0

    items = _df(lake, "items").set_index("item_id")
    assert sorted(items.index) == [1, 2, 3]  # B0Z never interacted with
    assert items.loc[1, "upload_ts"].to_pydatetime() == dt.datetime.fromtimestamp(D1, UTC)
    assert str(items.loc[3, "dt"]) == "2020-03-02"
    # category: first token of `class` ranked among first tokens (Hats 1, Shoes 2)
    assert items.loc[1, "category"] == 2 and items.loc[2, "category"] == 2 and items.loc[3, "category"] == 1
    # creator from `brand`: both acme items share one creator; the brandless hat is its own creator
    assert items.loc[1, "creator_id"] == items.loc[2, "creator_id"] != items.loc[3, "creator_id"]
    assert items.loc[3, "creator_id"] == 3

    users = lake.read_table("users", "2020-03-02").to_pandas().set_index("user_id")
    assert sorted(users.index) == [1, 2, 3]  # dave never interacted
    assert lake.read_table("users", "2020-03-01").column("user_id").to_pylist() == [1]
    assert users.loc[1, ["age_bucket", "gender", "region"]].tolist() == [3, 2, 10]
    assert users.loc[2, ["age_bucket", "gender", "region"]].tolist() == [1, 1, 0]
    assert users.loc[3, ["age_bucket", "gender", "region", "device"]].tolist() == [0, 0, 0, 0]  # not in .user
    assert users.loc[1, "device"] != users.loc[2, "device"] and min(users.loc[[1, 2], "device"]) > 0
    assert str(users.loc[2, "register_dt"]) == "2020-03-02"


def test_recbole_embedding_reflects_attributes(src, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    ingest("recbole", src, lake.root, emb_dim=16)
    items = _df(lake, "items").set_index("item_id")
    emb = np.stack(items["content_emb"].to_numpy())
    assert emb.shape == (3, 16) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[1, 2]  # the two acme shoes are closer than shoe and hat
    again = Lake(str(tmp_path / "lake2"))
    ingest("recbole", src, again.root, emb_dim=16)
    assert _df(again, "items")["content_emb"].map(list).tolist() == items["content_emb"].map(list).tolist()


def test_recbole_implicit_and_label_feedback_and_integer_ids(tmp_path):
    root = tmp_path / "imp"
    _atomic(root / "clicks.inter", "uid:token\tiid:token\tts:float", [(7, 70, D1), (8, 80, D2)])
    lake = Lake(str(tmp_path / "l1"))
    s = ingest("recbole", root, lake.root, user_field="uid", item_field="iid", time_field="ts", tz_offset_hours=-12)
    assert s["feedback"] == "implicit" and s["user_ids"] == "integer tokens kept" and s["files"] == ["clicks.inter"]
    it = _df(lake, "interactions")
    assert sorted(it["user_id"]) == [7, 8] and sorted(it["item_id"]) == [70, 80]
    assert (it[["is_click", "is_like", "is_long_view"]].to_numpy() == 1).all()
    assert str(it.set_index("user_id").loc[7, "dt"]) == "2020-02-29"  # 10:00 UTC - 12 h
    assert _df(lake, "items")["category"].tolist() == [0, 0]

    lab = tmp_path / "lab"
    _atomic(lab / "ctr.inter", "user_id:token\titem_id:token\tlabel:float\ttimestamp:float", [(1, 1, 1, D1), (1, 2, 0, D1)])
    lake2 = Lake(str(tmp_path / "l2"))
    assert ingest("recbole", lab, lake2.root)["feedback"] == "label"
    it = _df(lake2, "interactions").set_index("item_id")
    assert it.loc[1, "is_like"] == 1 and it.loc[2, "is_like"] == 0 and it["is_click"].tolist() == [1, 1]


def _to_atomic(ml: Path, out: Path) -> Path:
    """The GroupLens MovieLens fixture rewritten as RecBole's ml-100k atomic files (same layout as the wheel's)."""
    data = pd.read_csv(ml / "u.data", sep="\t", header=None, names=["u", "i", "r", "t"])
    _atomic(out / "ml-100k.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float",
            list(data.itertuples(index=False)))
    item = pd.read_csv(ml / "u.item", sep="|", header=None, encoding="latin-1", dtype=str, keep_default_na=False)
    rows = []
    for r in item.itertuples(index=False):
        genres = " ".join(g for g, flag in zip(GENRES, r[5:24]) if flag == "1")
        rows.append((r[0], r[1].rsplit(" (", 1)[0], r[2][-4:], genres))
    _atomic(out / "ml-100k.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq", rows)
    user = pd.read_csv(ml / "u.user", sep="|", header=None, dtype=str, keep_default_na=False)
    _atomic(out / "ml-100k.user", "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token",
            list(user.itertuples(index=False)))
    return out


def test_recbole_ml100k_layout_agrees_with_movielens_adapter(tmp_path):
    """RecBole's ml-100k and GroupLens' files of the same ratings give the same lake (but for derived codes)."""
    _to_atomic(FIX / "movielens", tmp_path / "dataset" / "ml-100k")
    a, b = Lake(str(tmp_path / "rb")), Lake(str(tmp_path / "ml"))
    sa = ingest("recbole", tmp_path / "dataset", a.root)
    sb = ingest("movielens", FIX / "movielens", b.root)
    assert sa["days"] == sb["days"] and sa["rows"] == sb["rows"] and sa["positive_rates"] == sb["positive_rates"]
    assert _all_valid(a) == 4 * sa["days"]
    for table, cols in (("interactions", None), ("visits", None),
                        ("users", ["user_id", "dt", "register_dt", "age_bucket", "gender", "region"]),
                        ("items", ["item_id", "dt", "upload_ts", "creator_id", "duration_ms"])):
        x, y = _df(a, table), _df(b, table)
        cols = cols or list(y.columns)
        key = [c for c in ("dt", "user_id", "item_id") if c in cols]
        pd.testing.assert_frame_equal(x[cols].sort_values(key).reset_index(drop=True),
                                      y[cols].sort_values(key).reset_index(drop=True))


def test_recbole_errors_name_file_and_field(tmp_path, src):
    bad = tmp_path / "bad"
    _atomic(bad / "x.inter", "user_id:token\titem_id:tok\ttimestamp:float", [(1, 1, D1)])
    with pytest.raises(IngestError, match=r"x\.inter.*item_id:tok"):
        ingest("recbole", bad, str(tmp_path / "l1"))
    _atomic(bad / "x.inter", "user_id:token\titem_id:token\trating:float", [(1, 1, 5)])
    with pytest.raises(IngestError, match=r"x\.inter.*missing field.*timestamp"):
        ingest("recbole", bad, str(tmp_path / "l2"))
    _atomic(bad / "x.inter", "user_id:token\titem_id:token\ttimestamp:float", [(1, 1, D1), (1, 2, "soon")])
    with pytest.raises(IngestError, match=r"x\.inter.*'timestamp'.*soon"):
        ingest("recbole", bad, str(tmp_path / "l3"))
    _atomic(bad / "y.inter", "user_id:token\titem_id:token\ttimestamp:float", [(1, 1, D1)])
    with pytest.raises(IngestError, match="several.*--dataset"):
        ingest("recbole", bad, str(tmp_path / "l4"))
    assert ingest("recbole", bad, str(tmp_path / "l5"), dataset="y")["rows"]["interactions"] == 1
    with pytest.raises(IngestError, match=r"missing file 'z\.inter'"):
        ingest("recbole", bad, str(tmp_path / "l6"), dataset="z")
    with pytest.raises(IngestError, match="no RecBole '.inter' file"):
        ingest("recbole", tmp_path / "l5", str(tmp_path / "l7"))
    with pytest.raises(IngestError, match="missing category field 'genre'"):
        ingest("recbole", src, str(tmp_path / "l8"), category_field="genre")
    for i in range(1, 5):
        lake = Lake(str(tmp_path / f"l{i}"))
        assert lake.meta() == {} and not any(lake.partitions(t) for t in INPUT_TABLES)


def test_cli_ingest_recbole(src, tmp_path, capsys):
    from jobs.cli import main

    lake = tmp_path / "lake"
    assert main(["ingest", "recbole", "--src", str(src), "--lake", str(lake), "--dataset", "shop",
                 "--like-threshold", "5", "--creator-field", "brand", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "recbole" and out["positive_rates"]["like"] == pytest.approx(1 / 5)
    assert Lake(str(lake)).meta()["source"]["options"]["creator_field"] == "brand"
    assert main(["ingest", "recbole", "--src", str(tmp_path / "nowhere"), "--lake", str(tmp_path / "l2")]) == 2
    assert "does not exist" in capsys.readouterr().err
