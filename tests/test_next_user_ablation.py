"""benchmarks/next_user_ablation.py: its imports resolve (they once pointed at a removed module,
``dualrec.metrics``, so ``--with-without`` died at its first line) and its recall columns."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import next_user_ablation as B


def test_with_without_reports_the_paths_the_issue_asks_for():
    # the module imports everything at module level: a stale import fails this import, not a 10-minute run
    assert B.evaluate.__module__ == "dualrec.evaluation.day"
    for p in ("quality.expected_feedback", "retrieval.truth_recall", "dispatch.channel_share"):
        assert p in B.WITH_WITHOUT_PATHS


def test_recall_tables_truth_is_over_k_and_logged_over_positives():
    items = np.array([1, 2, 3])
    found = {1: np.array([10, 11, 12, 13]), 2: np.array([20, 99, 98, 97])}  # item 3: nothing retrieved
    true_top = {1: np.array([10, 12, 50, 51]), 2: np.array([20, 21, 22, 23]), 3: np.array([30, 31, 32, 33])}
    positives = {1: {11, 60}, 3: {30}}  # item 2 has no logged positive: not in the logged mean
    r = B.recall_tables(found, items, true_top, positives, (2, 4))
    # truth@2: item1 {10,11}&{10,12} = 1/2, item2 {20,99}&{20,21} = 1/2, item3 0
    assert r["truth@2"] == pytest.approx((0.5 + 0.5 + 0) / 3)
    assert r["truth@4"] == pytest.approx((2 / 4 + 1 / 4 + 0) / 3)
    # logged@2: item1 {10,11} hits 11 of {11,60} = 1/2, item3 0/1
    assert r["logged@2"] == pytest.approx((0.5 + 0.0) / 2)
    assert B.recall_tables(found, np.array([2]), true_top, positives, (2,))["logged@2"] is None


def test_most_active_reference_keeps_only_available_users_by_p_active():
    import pandas as pd

    act = pd.DataFrame({"user_id": [1, 2, 3, 4, 5], "p_active": [0.9, 0.95, 0.5, 0.9, 0.99]})
    got = B.most_active(act, np.array([1, 2, 3, 4]), 3)  # user 5 is not available
    assert got.tolist() == [2, 1, 4]


def test_eval_sample_is_seeded_sorted_and_a_subset():
    ids = np.arange(100, 200)
    a, b = B.eval_sample(ids, 10, 7), B.eval_sample(ids[::-1], 10, 7)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 10 and set(a.tolist()) <= set(ids.tolist())
    assert np.all(np.diff(a) > 0)
    assert B.eval_sample(ids, 500, 7).tolist() == ids.tolist()
