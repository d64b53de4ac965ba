"""The ranker's per-day caches (dualrec.rank_inputs): same rows as aggregating the exposures directly,
recomputed when an input partition is republished, and reused otherwise."""

from __future__ import annotations

import datetime as dt
import shutil

import numpy as np
import pytest

from dualrec import daycache as DC
from dualrec import rank_inputs as RI
from dualrec.config import DualRecConfig
from dualrec.lake import Lake, date_range
from models.ranker import TASKS

D0 = dt.date(2026, 1, 1)


@pytest.fixture()
def lake(tiny_world, tmp_path) -> Lake:
    """A private copy of the session's tiny world (these tests write caches and republish partitions)."""
    root = tmp_path / "lake"
    shutil.copytree(tiny_world, root)
    return Lake(str(root))


def _rows(df, cols) -> list[tuple]:
    return sorted(tuple(round(r[c], 4) if isinstance(r[c], float) else r[c] for c in cols) for r in df.collect())


def _direct(spark, lake: Lake, first: dt.date, last: dt.date, cfg) -> dict[str, list[tuple]]:
    """The aggregates computed straight from the exposures (no cache): the reference."""
    p = cfg.rank.profile_dim
    items = RI.item_table(spark, lake, D0, last, p)
    enr = RI.enriched_interactions(spark, lake, first, last, items)
    out = {}
    for kind, key in RI.KINDS.items():
        df = RI.daily_aggregates(enr, key, p, items if kind == "user" else None)
        out[kind] = _rows(df, [f.name for f in RI._daily_schema(kind, p).fields])
    return out


def test_cached_daily_equals_direct_aggregation_and_a_republished_day_is_recomputed(spark, lake):
    cfg = DualRecConfig()
    first, last = D0 + dt.timedelta(days=6), D0 + dt.timedelta(days=10)
    ref = _direct(spark, lake, first, last, cfg)
    assert all(ref[k] for k in RI.KINDS)

    def cached():
        got = RI.cached_daily(spark, lake, first, last, cfg)
        return {k: _rows(df, [f.name for f in RI._daily_schema(k, cfg.rank.profile_dim).fields]) for k, df in got.items()}

    assert cached() == ref  # cold: every day computed
    roots = [f"{RI.DAILY_CACHE}/{k}" for k in RI.KINDS]
    keys = RI._daily_keys(lake, date_range(first, last), cfg)
    assert DC.missing_days(lake, roots, keys) == []  # every entry written, for every kind
    assert cached() == ref  # warm: read back

    # republish day 8's interactions with half the rows: only that day's key changes
    d8 = D0 + dt.timedelta(days=8)
    t = lake.read_table("interactions", d8)
    lake.write_table("interactions", d8, t.slice(0, t.num_rows // 2))
    new_keys = RI._daily_keys(lake, date_range(first, last), cfg)
    assert [d for d in keys if keys[d] != new_keys[d]] == [d8]
    assert DC.missing_days(lake, roots, new_keys) == [d8]
    fresh = _direct(spark, lake, first, last, cfg)
    assert fresh != ref
    assert cached() == fresh


def test_global_rates_from_the_daily_counts_equal_counting_the_exposures(spark, lake):
    cfg = DualRecConfig()
    first, last = D0 + dt.timedelta(days=3), D0 + dt.timedelta(days=9)
    g = RI.global_rates(RI.cached_daily(spark, lake, first, last, cfg)["user"])
    inter = lake.read_tables("interactions", date_range(first, last)).to_pandas()
    assert g["like"] == pytest.approx(inter["is_like"].mean(), rel=1e-12)
    explicit = inter[[f"is_{t}" for t in RI.EXPLICIT]].any(axis=1).mean()
    assert g["explicit"] == pytest.approx(explicit, rel=1e-12)
    assert set(g) == set(TASKS) | {"explicit"}


def test_cached_item_table_equals_the_spark_projection(spark, lake):
    cfg = DualRecConfig()
    p = cfg.rank.profile_dim
    lo, hi = D0, D0 + dt.timedelta(days=4)
    got = RI.item_table(spark, lake, lo, hi, p).toPandas().sort_values("item_id").reset_index(drop=True)
    items = lake.read_df(spark, "items", date_range(lo, hi))
    ref = RI.add_projection(items, "content_emb", "i_proj", p, lake.emb_dim()).toPandas()
    ref = ref.sort_values("item_id").reset_index(drop=True)
    assert len(got) == len(ref) > 0
    assert (got["upload_day"].astype(str) == ref["dt"].astype(str)).all()
    proj = [f"i_proj_{k}" for k in range(p)]
    assert np.abs(got[proj].to_numpy() - ref[proj].to_numpy()).max() < 1e-5
    assert np.allclose(got["i_log_duration"], np.log1p(ref["duration_ms"] / 1000.0))
    assert DC.missing_days(lake, [RI.ITEMS_CACHE], {d: "x" for d in date_range(lo, hi)})  # keyed: a wrong key misses
