"""FAISS wrappers: exact vs IVF choice, recall measured against exact search, save/load."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from dualrec.config import TwoTowerConfig
from dualrec.lake import Lake, LakeError
from models.ann import build_index, exact_search, load_index, recall_vs_exact, tune_nprobe


def _clustered(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    """Clustered vectors with unequal norms (what trained user embeddings look like)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(40, d))
    x = centers[rng.integers(0, 40, n)] + 0.4 * rng.normal(size=(n, d))
    return (x * rng.lognormal(0, 0.4, (n, 1))).astype(np.float32)


def test_small_sets_get_an_exact_index_with_external_ids():
    x = _clustered(500)
    ids = np.arange(500, dtype=np.int64) * 7 + 3
    idx = build_index(x, ids, TwoTowerConfig(exact_max=1000))
    assert idx.meta["kind"] == "flat_ip" and idx.n == 500 and idx.dim == 16
    q = _clustered(5, seed=1)
    scores, got = idx.search(q, 10)
    es, ep = exact_search(x, q, 10)
    assert (got == ids[ep]).all()
    np.testing.assert_allclose(scores, es, rtol=1e-5)
    assert recall_vs_exact(idx, x, q, 10) == 1.0
    # fewer than k vectors: the tail is -1 / -inf
    s2, i2 = idx.search(q[:1], 600)
    assert (i2[0, 500:] == -1).all() and np.isneginf(s2[0, 500:]).all() and (i2[0, :500] >= 0).all()
    with pytest.raises(ValueError, match="dimension"):
        idx.search(np.zeros((1, 3), np.float32), 1)


def test_ivf_recall_vs_exact_is_high_with_enough_nprobe():
    x = _clustered(20_000)
    q = _clustered(100, seed=2)
    cfg = TwoTowerConfig(exact_max=1000, ivf_nprobe=1, ivf_nlist=256)
    idx = build_index(x, np.arange(len(x)), cfg, seed=3)
    assert idx.meta["kind"] == "ivf_flat_ip" and idx.meta["nlist"] == 256 and idx.nprobe == 1
    low = recall_vs_exact(idx, x, q, 100)
    idx.set_nprobe(32)
    high = recall_vs_exact(idx, x, q, 100)
    assert high >= 0.9 and high > low
    # tuning doubles nprobe until the target is met and the stored nprobe is the one measured
    idx.set_nprobe(1)
    r = tune_nprobe(idx, x, q, 100, 0.97)
    assert r >= 0.97 and idx.meta["nprobe"] == idx.nprobe > 1
    assert r == recall_vs_exact(idx, x, q, 100)


def test_ivf_build_is_deterministic_given_seed():
    x = _clustered(5_000)
    q = _clustered(20, seed=5)
    cfg = TwoTowerConfig(exact_max=100, ivf_nprobe=4)
    a = build_index(x, np.arange(len(x)), cfg, seed=1).search(q, 20)
    b = build_index(x, np.arange(len(x)), cfg, seed=1).search(q, 20)
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("exact_max", [10_000, 100])
def test_save_load_roundtrip(tmp_path, exact_max):
    lake = Lake(str(tmp_path / "lake"))
    day = dt.date(2026, 1, 2)
    x = _clustered(2_000)
    ids = np.arange(2_000, dtype=np.int64) + 10**9
    idx = build_index(x, ids, TwoTowerConfig(exact_max=exact_max, ivf_nprobe=8), seed=0)
    with lake.publish_dir(Lake.model_rel("user_index", day)) as staging:
        manifest = idx.save(lake, staging, {"recall_at_k": 0.99})
    back = load_index(lake, "user_index", day)
    q = _clustered(10, seed=9)
    for a, b in zip(idx.search(q, 50), back.search(q, 50)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(back.ids, ids)
    assert back.meta["recall_at_k"] == 0.99 and back.meta["kind"] == manifest["kind"]
    assert back.nprobe == idx.nprobe
    text = (tmp_path / "lake" / "_models/user_index/dt=2026-01-02/manifest.json").read_text()
    assert str(tmp_path) not in text
    with pytest.raises(LakeError, match="item_index"):
        load_index(lake, "item_index", day)
