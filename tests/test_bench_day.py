"""benchmarks/day.py plumbing: history length, the world overlay, the process-tree sampler (no Spark)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import day as B  # noqa: E402

from dualrec.config import DualRecConfig


def test_history_covers_every_lookback_window():
    cfg = DualRecConfig()
    h = B.history_days(cfg)
    assert h >= cfg.activity.lookback_days + cfg.activity.train_target_days
    assert h >= cfg.two_tower.train_window_days and h >= cfg.similarity.positives_window_days
    assert h >= cfg.rank.train_window_days + cfg.rank.item_history_days + cfg.rank.user_window_days
    w = B.world_for(B.Path("/x"), "tiny", 11, dt.date(2026, 1, 1), h + 2)
    assert w.day == dt.date(2026, 1, 1) + dt.timedelta(days=h)  # D has h days before it and D+1 after


def test_overlay_leaves_the_cached_world_pristine(tmp_path):
    w = B.World("tiny", 1, dt.date(2026, 1, 1), 3, tmp_path / "world")
    part = w.lake / "items" / "dt=2026-01-01"
    part.mkdir(parents=True)
    (part / "part-0.parquet").write_bytes(b"data")
    (w.lake / "_lake.json").write_text(json.dumps({"emb_dim": 8}))
    lake = B.overlay(w, tmp_path / "run")
    linked = lake / "items" / "dt=2026-01-01" / "part-0.parquet"
    assert os.stat(linked).st_ino == os.stat(part / "part-0.parquet").st_ino  # shared, not copied
    # what a run does: new partitions, replaced metadata; the cache does not see any of it
    (lake / "ranked" / "dt=2026-01-02").mkdir(parents=True)
    (lake / "ranked" / "dt=2026-01-02" / "part-0.parquet").write_bytes(b"new")
    (lake / "_lake.json").write_text("{}")
    assert not (w.lake / "ranked").exists()
    assert json.loads((w.lake / "_lake.json").read_text()) == {"emb_dim": 8}
    assert not os.stat(part / "part-0.parquet").st_mode & 0o222  # cached files are read-only


def test_tree_sampler_counts_children_cpu():
    code = "import subprocess,sys; subprocess.run([sys.executable,'-c','import time\\nwhile time.process_time()<1.0: pass\\ntime.sleep(0.5)'])"
    p = subprocess.Popen([sys.executable, "-c", code])
    s = B.TreeSampler(p.pid, 0.1).start()
    t0 = time.time()
    p.wait()
    s.stop()
    cpu, peak, kinds = s.window(t0 - 1, time.time())
    assert cpu > 0.7 and peak > 0
    assert kinds.get("workers", 0) > 0.7  # the busy grandchild is not the driver


def test_progress_lines_parse():
    m = B.PROGRESS.search("[2026-02-07] 5/7 rank done in 12.0s candidates=10")
    assert m and m.group(4) == "rank" and m.group(5) == "done in"
    assert B.PROGRESS.search("[2026-02-07] 1/7 activity ...").group(5) == "..."
    m = B.PROGRESS.search("[2026-02-07] stage 2/7 two_tower done in 3.1s (elapsed 0:10, ~1:00 left)")
    assert m and m.group(4) == "two_tower" and m.group(5) == "done in"


@pytest.mark.parametrize("text,n", [("1g", 1 << 30), ("512m", 512 << 20)])
def test_sizes(text, n):
    from dualrec.ranking import parse_bytes

    assert parse_bytes(text) == n


def test_snapshot_of_a_warm_lake_shares_partitions_but_not_locks_or_metadata(tmp_path):
    lake = tmp_path / "run" / "lake"
    (lake / "items" / "dt=2026-01-01").mkdir(parents=True)
    (lake / "_locks").mkdir()
    part = lake / "items" / "dt=2026-01-01" / "part-0.parquet"
    part.write_bytes(b"rows")
    (lake / "_locks" / "dt=2026-01-01.lock").write_text("")
    (lake / "_lake.json").write_text("{}")
    snap = B.snapshot_lake(lake, tmp_path / "run_contended")
    assert snap == tmp_path / "run_contended" / "lake"
    assert os.stat(snap / "items" / "dt=2026-01-01" / "part-0.parquet").st_ino == os.stat(part).st_ino
    assert not (snap / "_locks").exists()  # a lock file shared by two lakes would serialise them
    assert os.stat(snap / "_lake.json").st_ino != os.stat(lake / "_lake.json").st_ino
