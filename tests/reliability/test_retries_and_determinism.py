"""Retries keep |D_u| <= Q and give identical outputs; seeds come from configuration and the date.

The dispatch stage is crashed half-way through the day (an engine failure injected in batch
k) between successful runs, in several orders and with a changed Q; after every attempt the
published tables either are the previous complete ones or the new complete ones, |D_u| <= Q
holds, the store after the last batch equals |D_u| (nothing counted twice) and the match
sets equal those of one clean run.
"""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from dualrec.config import DualRecConfig
from dualrec.lake import parse_date
from dualrec.stages.base import StageContext, run_stage

from relhelpers import DAY, DISPATCH, REPO, dispatch_ctx, dispatch_lake, table_rows

OUT_KEYS = {"match_sets": ["user_id", "item_id"], "available_users": ["batch", "user_id"], "user_match_sets": ["user_id"]}


def _outputs(lake) -> dict[str, pa.Table]:
    return {t: table_rows(lake, t, DAY, k) for t, k in OUT_KEYS.items()}


def _check_invariants(out: dict[str, pa.Table], Q: int, L: int, batches: int) -> None:
    ms, au = out["match_sets"], out["available_users"]
    users, du = np.unique(ms.column("user_id").to_numpy(), return_counts=True)
    assert du.max() <= Q
    assert np.unique(ms.column("item_id").to_numpy(), return_counts=True)[1].max() <= L
    last = au.filter(pc.equal(au.column("batch"), batches - 1))
    matched = dict(zip(last.column("user_id").to_pylist(), last.column("matched").to_pylist()))
    assert {u: matched[u] for u in users.tolist()} == dict(zip(users.tolist(), du.tolist()))  # no double count
    assert sum(matched.values()) == ms.num_rows
    assert all(v <= Q for v in au.column("matched").to_pylist())


def _crash_in_batch(monkeypatch, k: int) -> None:
    """The k-th batch assignment of the next run raises (a lost executor, an OOM ...)."""
    import dualrec.dispatch.store as d

    real = d.assign_edges
    calls = {"n": 0}

    def flaky(edges, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == k:
            raise RuntimeError(f"injected failure in batch call {k}")
        return real(edges, *args, **kwargs)

    monkeypatch.setattr(d, "assign_edges", flaky)


def test_dispatch_retries_keep_q_and_converge(tmp_path, spark, monkeypatch):
    from dualrec.stages.dispatch import run

    lake = dispatch_lake(tmp_path / "lake")
    L, Q, B = DISPATCH["L"], DISPATCH["Q"], DISPATCH["batches_per_day"]

    # 1. crash in the last batch (2) of the first attempt, after batch 1 was assigned: nothing published
    with monkeypatch.context() as m:
        _crash_in_batch(m, 2)
        with pytest.raises(Exception, match="injected failure"):
            run_stage("dispatch", run, dispatch_ctx(lake, spark))
    assert not any(lake.has_partition(t, DAY) for t in OUT_KEYS)
    # 2. retry succeeds: a complete day obeying every invariant, the store replayable batch by batch
    run_stage("dispatch", run, dispatch_ctx(lake, spark))
    expected = _outputs(lake)
    _check_invariants(expected, Q, L, B)
    assert np.unique(expected["match_sets"].column("user_id").to_numpy(), return_counts=True)[1].max() == Q  # Q binds
    _replay_store(lake, expected)
    # 3. a rerun crashing in its first batch: the previous complete outputs stay
    with monkeypatch.context() as m:
        _crash_in_batch(m, 1)
        with pytest.raises(Exception, match="injected failure"):
            run_stage("dispatch", run, dispatch_ctx(lake, spark))
    got = _outputs(lake)
    assert all(got[t].equals(expected[t]) for t in OUT_KEYS)
    # 4. a rerun with a tighter Q replaces the day (never adds to it), then the original Q again
    run_stage("dispatch", run, dispatch_ctx(lake, spark, Q=2))
    tight = _outputs(lake)
    _check_invariants(tight, 2, L, B)
    run_stage("dispatch", run, dispatch_ctx(lake, spark))
    got = _outputs(lake)
    assert all(got[t].equals(expected[t]) for t in OUT_KEYS)
    _check_invariants(got, Q, L, B)


def _replay_store(lake, out: dict[str, pa.Table]) -> None:
    """Replaying the published store batch by batch reproduces it: each batch's state is the previous
    batch's plus that batch's matches, so a retried batch cannot count twice."""
    ms, au = out["match_sets"], out["available_users"]
    avail = lake.read_table("activity_scores", DAY)
    state = {u: 0 for u, a in zip(avail.column("user_id").to_pylist(), avail.column("available").to_pylist()) if a}
    for b in range(DISPATCH["batches_per_day"]):
        for u in ms.filter(pc.equal(ms.column("batch"), b)).column("user_id").to_pylist():
            assert state[u] < DISPATCH["Q"]  # only users still in U~ were matched in batch b
            state[u] += 1
        snap = au.filter(pc.equal(au.column("batch"), b))
        assert dict(zip(snap.column("user_id").to_pylist(), snap.column("matched").to_pylist())) == state
        assert snap.column("available").to_pylist() == [state[u] < DISPATCH["Q"] for u in snap.column("user_id").to_pylist()]


# ------------------------------------------------------------------------------ determinism
def test_stage_seeds_come_from_config_date_and_step_and_are_process_independent():
    def seed(cfg_seed: int, day: str, step: str) -> int:
        ctx = StageContext(lake=None, day=parse_date(day), cfg=DualRecConfig(seed=cfg_seed))  # type: ignore[arg-type]
        return ctx.seed(step)

    base = seed(0, "2026-01-11", "activity.xgb")
    assert base == seed(0, "2026-01-11", "activity.xgb")
    assert len({base, seed(1, "2026-01-11", "activity.xgb"), seed(0, "2026-01-12", "activity.xgb"),
                seed(0, "2026-01-11", "two_tower.train")}) == 4
    code = ("from dualrec.config import DualRecConfig; from dualrec.stages.base import StageContext; import datetime as d;"
            "print(StageContext(None, d.date(2026,1,11), DualRecConfig()).seed('activity.xgb'))")
    for hashseed in ("1", "2"):  # not Python's randomised hash(): the same in every process
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
        assert int(out.stdout.strip()) == base


def unseeded_rng(source: str) -> list[str]:
    """Random draws that do not take a seed: the global NumPy RNG, an unseeded Generator, ``random``."""
    found = []
    legacy_ok = {"default_rng", "Generator", "PCG64", "SeedSequence", "RandomState"}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if "random" in mods:
                found.append(f"{node.lineno}: stdlib random")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = ast.unparse(node.func.value)
            if owner in ("np.random", "numpy.random"):
                if node.func.attr not in legacy_ok:
                    found.append(f"{node.lineno}: np.random.{node.func.attr} (global RNG)")
                elif node.func.attr in ("default_rng", "RandomState") and not node.args and not node.keywords:
                    found.append(f"{node.lineno}: np.random.{node.func.attr}() without a seed")
            if owner == "torch" and node.func.attr == "seed":
                found.append(f"{node.lineno}: torch.seed() (random seed)")
    return found


def test_rng_scanner_catches_unseeded_draws():
    src = ("import random\nimport numpy as np\nnp.random.rand(3)\nnp.random.default_rng()\nnp.random.shuffle(x)\n"
           "np.random.default_rng(seed)\nrng.random(3)\n")
    assert len(unseeded_rng(src)) == 4


def test_product_code_draws_only_from_seeded_generators():
    offenders = []
    for d in ("dualrec", "jobs", "models"):
        for path in sorted(pathlib.Path(REPO, d).rglob("*.py")):
            offenders += [f"{path.relative_to(REPO)}:{h}" for h in unseeded_rng(path.read_text())]
    assert not offenders, offenders
