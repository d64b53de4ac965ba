"""Fit the per-stage cost model of docs/scaling.md §8 to ``benchmarks/day.py --json`` figures.

    python benchmarks/cost_model.py small.json medium.json large.json [tiny.json] [--json OUT]
        [--paper-users 100000000] [--cores 400] [--efficiency 0.5]

For every stage, wall seconds and CPU seconds are fitted as ``t = a + b * users`` by least squares
over the given days (two days: exact through both, no error estimate; three or more: the largest
relative residual is printed), and as a power law ``t ∝ users^k`` between the two largest days (the
local exponent). Then:

- the growth of each stage and of the whole day from the second-largest to the largest day (issue 14
  asks for ≤ 5.5× from medium to large);
- the paper-scale extrapolation: CPU-seconds at ``--paper-users`` from the linear fit, in core-hours,
  and the wall time on ``--cores`` cores at ``--efficiency`` parallel efficiency.

Users is the scale variable because every preset keeps per-user and per-item rates fixed, so every
row count of a day (uploads, candidates, exposures) is proportional to it. The linear form treats the
superlinear parts (min-cost flow, IVF builds) as linear, which is optimistic; the intercept a is the
fixed per-stage cost of this machine. Only the JSONs are read: nothing is run.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class StageFit:
    """One stage's fit; ``kind`` is "wall" or "cpu" seconds."""

    stage: str
    kind: str
    a: float
    b: float
    max_rel_residual: float | None
    k_local: float | None
    growth_last: float | None
    paper_seconds: float


def fit_linear(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float | None]:
    """Least-squares a + b·x; the largest |residual| / y when there are more points than unknowns."""
    A = np.column_stack([np.ones_like(x), x])
    (a, b), *_ = np.linalg.lstsq(A, y, rcond=None)
    resid = None
    if len(x) > 2:
        resid = float(np.max(np.abs(A @ np.array([a, b]) - y) / np.maximum(np.abs(y), 1e-9)))
    return float(a), float(b), resid


def load_days(paths: list[str]) -> list[dict]:
    """day.py JSONs sorted by users; each must hold ``users`` and per-stage ``stages`` figures."""
    days = []
    for p in paths:
        with open(p) as f:
            d = json.load(f)
        if "stages" not in d or "users" not in d:
            raise SystemExit(f"{p}: not a benchmarks/day.py --json output (no 'stages'/'users')")
        days.append(d)
    users = [d["users"] for d in days]
    if len(set(users)) != len(users):
        raise SystemExit(f"two inputs have the same number of users {users}: one day per scale")
    return sorted(days, key=lambda d: d["users"])


def fit_days(days: list[dict], paper_users: float) -> list[StageFit]:
    """Per stage and for the whole day ("total"), wall and CPU fits."""
    if len(days) < 2:
        raise SystemExit("need at least two days of different scale")
    stages = [s for s in days[-1]["stages"] if all(s in d["stages"] for d in days)]
    x = np.array([d["users"] for d in days], np.float64)
    out = []
    for kind, key in (("wall", "seconds"), ("cpu", "cpu_seconds")):
        # a resumed day (day.py --from-stage) has no CPU figure for the stages of its first run: such a
        # stage gets no fit of that kind, and the total of that kind is left out
        known = [s for s in stages if all(d["stages"][s].get(key) is not None for d in days)]
        series = {s: np.array([d["stages"][s][key] for d in days], np.float64) for s in known}
        if len(known) == len(stages):
            series["total"] = np.sum(list(series.values()), axis=0)
        for s, y in series.items():
            a, b, resid = fit_linear(x, y)
            k = growth = None
            if y[-2] > 0 and y[-1] > 0:
                growth = float(y[-1] / y[-2])
                k = float(np.log(growth) / np.log(x[-1] / x[-2]))
            out.append(StageFit(s, kind, a, b, resid, k, growth, max(a + b * paper_users, 0.0)))
    return out


def format_table(days: list[dict], fits: list[StageFit], paper_users: float, cores: int, eff: float) -> str:
    scale = " / ".join(f"{d['preset']} {d['users']:,}" for d in days)
    last = f"{days[-2]['preset']} → {days[-1]['preset']} ({days[-1]['users'] / days[-2]['users']:.2f}× users)"
    lines = [f"cost model over {scale} users", "",
             f"| stage | kind | measured s ({' / '.join(d['preset'] for d in days)}) | a (s) | b (s per user) "
             f"| max rel. residual | k (last two) | growth {last} | paper CPU core-h | paper wall on {cores} cores × {eff:.0%} |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for f in fits:
        key = "seconds" if f.kind == "wall" else "cpu_seconds"
        meas = " / ".join(
            f"{(sum(v[key] for v in d['stages'].values()) if f.stage == 'total' else d['stages'][f.stage][key]):.1f}"
            for d in days)
        paper = (f"{f.paper_seconds / 3600:.1f}" if f.kind == "cpu" else "")
        wall = (f"{f.paper_seconds / (cores * eff) / 60:.1f} min" if f.kind == "cpu" else "")
        lines.append(
            f"| {f.stage} | {f.kind} | {meas} | {f.a:.1f} | {f.b:.3e} | "
            f"{'' if f.max_rel_residual is None else f'{f.max_rel_residual:.0%}'} | "
            f"{'' if f.k_local is None else f'{f.k_local:.2f}'} | {'' if f.growth_last is None else f'{f.growth_last:.2f}×'} | "
            f"{paper} | {wall} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("days", nargs="+", help="benchmarks/day.py --json outputs, one per scale")
    p.add_argument("--paper-users", type=float, default=1e8)
    p.add_argument("--cores", type=int, default=400)
    p.add_argument("--efficiency", type=float, default=0.5)
    p.add_argument("--json", help="also write the fits to this file")
    args = p.parse_args(argv)
    days = load_days(args.days)
    fits = fit_days(days, args.paper_users)
    print(format_table(days, fits, args.paper_users, args.cores, args.efficiency))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"days": [{"preset": d["preset"], "users": d["users"], "mode": d.get("mode")} for d in days],
                       "paper_users": args.paper_users, "fits": [asdict(x) for x in fits]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
