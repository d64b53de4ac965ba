"""benchmarks/cost_model.py: the fit of docs/scaling.md §8 over day.py JSONs (no Spark)."""

from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import cost_model as C  # noqa: E402


def _day(path, preset: str, users: int, secs: dict[str, float]) -> str:
    stages = {s: {"seconds": t, "cpu_seconds": 2 * t} for s, t in secs.items()}
    path.write_text(json.dumps({"preset": preset, "users": users, "stages": stages}))
    return str(path)


def test_linear_fit_is_exact_on_linear_days_and_growth_is_the_last_ratio(tmp_path, capsys):
    # rank = 10 + 1e-3 * users; dispatch = 5 + 2e-4 * users
    days = [_day(tmp_path / f"{p}.json", p, u, {"rank": 10 + 1e-3 * u, "dispatch": 5 + 2e-4 * u})
            for p, u in (("large", 1_000_000), ("small", 20_000), ("medium", 200_000))]
    out = tmp_path / "fit.json"
    assert C.main([*days, "--json", str(out), "--paper-users", "1e8"]) == 0
    fits = {(f["stage"], f["kind"]): f for f in json.loads(out.read_text())["fits"]}
    r = fits[("rank", "wall")]
    assert r["a"] == pytest.approx(10, abs=1e-6) and r["b"] == pytest.approx(1e-3)
    assert r["max_rel_residual"] == pytest.approx(0, abs=1e-9)
    assert r["growth_last"] == pytest.approx((10 + 1000) / (10 + 200))  # medium -> large, sorted by users
    assert fits[("rank", "cpu")]["paper_seconds"] == pytest.approx(2 * (10 + 1e-3 * 1e8))
    assert fits[("total", "wall")]["b"] == pytest.approx(1.2e-3)
    assert "medium → large" in capsys.readouterr().out


def test_a_curved_stage_has_a_residual_and_bad_inputs_are_refused(tmp_path):
    days = [_day(tmp_path / f"{p}.json", p, u, {"metrics": 1e-8 * u * u}) for p, u in
            (("small", 10_000), ("medium", 100_000), ("large", 1_000_000))]
    (fit,) = [f for f in C.fit_days(C.load_days(days), 1e8) if f.stage == "metrics" and f.kind == "wall"]
    assert fit.max_rel_residual > 0.1 and fit.k_local == pytest.approx(2.0)
    with pytest.raises(SystemExit, match="same number of users"):
        C.load_days([days[0], days[0]])
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(SystemExit, match="not a benchmarks/day.py"):
        C.load_days([str(tmp_path / "x.json")])


def test_a_resumed_day_without_cpu_figures_gets_wall_fits_only(tmp_path):
    days = [_day(tmp_path / f"{p}.json", p, u, {"rank": 1e-3 * u, "metrics": 2e-3 * u}) for p, u in
            (("small", 10_000), ("large", 1_000_000))]
    d = json.loads(open(days[1]).read())
    d["stages"]["rank"]["cpu_seconds"] = None  # day.py --from-stage metrics: rank ran in the first run
    open(days[1], "w").write(json.dumps(d))
    kinds = {(f.stage, f.kind) for f in C.fit_days(C.load_days(days), 1e8)}
    assert ("rank", "wall") in kinds and ("total", "wall") in kinds and ("metrics", "cpu") in kinds
    assert ("rank", "cpu") not in kinds and ("total", "cpu") not in kinds
