"""Cost of the input checks of a day (issue 16): every partition of every read window.

    python benchmarks/validation.py --lake /work/worlds/small_seed11_2026-01-01_39d/lake --date 2026-02-01

The lake is hard-link copied to --work (the validation cache is written there, never into
the source lake). Prints, per stage and in total, the wall time of the checks in three
situations:

* ``cold``: empty cache (the first day ever run on a lake: every window validated);
* ``daily``: the previous day was run (its cache exists), so only the new partitions of D
  are validated: the steady-state cost of a daily run;
* ``rerun``: the same day again (everything from the cache).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dualrec.config import DualRecConfig  # noqa: E402
from dualrec.lake import Lake, parse_date  # noqa: E402
from dualrec.registry import STAGES  # noqa: E402
from dualrec.stages.base import check_stage_inputs  # noqa: E402


def _copy(src: str, dst: str) -> None:
    if os.path.exists(dst):
        shutil.rmtree(dst)
    # hard links: same bytes and mtimes (same fingerprints), no copy cost, source untouched
    subprocess.run(["cp", "-al", src, dst], check=True)
    shutil.rmtree(os.path.join(dst, "_validation"), ignore_errors=True)


def _day(lake: Lake, day: dt.date, cfg: DualRecConfig, stages: list[str]) -> dict[str, dict]:
    memo: set = set()  # one day's run shares it across stages, as run_day does
    out = {}
    for s in stages:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            c = check_stage_inputs(lake, s, day, memo, cfg)
            out[s] = {**c.as_dict(), "wall": round(time.perf_counter() - t0, 3), "cpu": round(time.process_time() - c0, 3)}
        except Exception as e:  # noqa: BLE001 - a derived input missing in the source lake
            out[s] = {"error": str(e).splitlines()[0][:160], "wall": round(time.perf_counter() - t0, 3),
                      "cpu": round(time.process_time() - c0, 3)}
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lake", required=True)
    p.add_argument("--date", required=True)
    p.add_argument("--work", default="/work/worlds/trust/bench_lake")
    p.add_argument("--config")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    day = parse_date(a.date)
    cfg = DualRecConfig.load(a.config)
    _copy(a.lake, a.work)
    lake = Lake(a.work)
    # derived day-D inputs are not under test: run the checks of upstream tables only (what reads() declares)
    stages = [s for s in STAGES if s != "metrics"]
    import dualrec.stages.base as B

    orig = B.stage_spec

    def upstream_only(name):
        spec = orig(name)
        return type(spec)(spec.name, tuple(t for t in spec.inputs if t in ("users", "items", "visits", "interactions")),
                          spec.outputs, spec.artifacts, spec.module)

    B.stage_spec = upstream_only
    import importlib

    for s in stages:  # imports (xgboost, torch ...) are not validation cost
        importlib.import_module(orig(s).module_path)
    res = {"cold": _day(lake, day, cfg, stages)}
    _copy(a.lake, a.work)
    _day(lake, day - dt.timedelta(days=1), cfg, stages)
    res["daily"] = _day(lake, day, cfg, stages)
    res["rerun"] = _day(lake, day, cfg, stages)
    if a.json:
        print(json.dumps(res, indent=2))
        return
    print(f"lake {a.lake} day {day}")
    print(f"{'stage':<12}" + "".join(f"{k:>30}" for k in res))
    for s in stages:
        cells = []
        for k in res:
            r = res[k][s]
            cells.append(f"{r['wall']:>7.2f}s {r['cpu']:>6.2f}cpu {r.get('validated', '-'):>3}v/{r.get('partitions', '-'):>3}p"
                         if "error" not in r else f"{'error':>26}")
        print(f"{s:<12}" + "".join(f"{c:>30}" for c in cells))
    for k in res:
        print(f"total {k}: wall {sum(r['wall'] for r in res[k].values()):.2f}s, "
              f"cpu {sum(r['cpu'] for r in res[k].values()):.2f}s")
    print("(v = partitions validated, p = partitions checked; the rest came from the cache)")


if __name__ == "__main__":
    main()
