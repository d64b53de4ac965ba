"""What ``dualrec evaluate`` (the ``metrics`` stage) spends its time on: wall, CPU by process, top functions.

    python benchmarks/evaluate_cost.py --lake LAKE --date 2026-02-07 [--profile] [--json OUT] [--top 30]

Runs :func:`dualrec.evaluation.evaluate` once in this process (the stage's own call) with the
:class:`benchmarks.day.TreeSampler` on this process tree, and prints wall seconds, CPU seconds of the
driver (this Python process) and of the Spark JVM, and the load average before and after (the machine
may be shared). ``--profile`` also runs cProfile over the call and prints the top functions by own time
and by cumulative time; cProfile slows Python-heavy code, so take wall/CPU from a run without it.
``--json OUT`` writes the figures ``evaluate --json`` would write (for before/after equality checks).
Writes nothing into the lake except what ``evaluate`` itself may fill (the ranker's per-day caches).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from day import TreeSampler  # noqa: E402

import dualrec.evaluation.day as D  # noqa: E402
import dualrec.evaluation.sizing as S  # noqa: E402
from dualrec.config import DualRecConfig  # noqa: E402

SECTIONS = {
    D: ("quality_section", "quality_figures", "_optimum", "_arrival_baseline", "size_curve", "dispatch_section",
        "no_store_hist", "ranking_section", "experiment_section", "load_day", "cost_figures"),
    S: ("curve_points", "day_edges", "paced_curve", "dispatch_day_arrays"),
}
"""Functions timed one by one (wall and this process's CPU, nested calls counted in each)."""


def _timed(times: dict, name: str, fn):
    def wrap(*a, **k):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return fn(*a, **k)
        finally:
            w, c = times.get(name, (0.0, 0.0, 0))[:2]
            n = times.get(name, (0, 0, 0))[2]
            times[name] = (w + time.perf_counter() - t0, c + time.process_time() - c0, n + 1)
    return wrap


def instrument() -> dict:
    """Wrap :data:`SECTIONS` in their modules; returns the dict the wrappers fill (name -> wall, CPU, calls)."""
    times: dict = {}
    for mod, names in SECTIONS.items():
        for n in names:
            if hasattr(mod, n):
                setattr(mod, n, _timed(times, n, getattr(mod, n)))
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lake", required=True)
    ap.add_argument("--date", required=True)
    ap.add_argument("--profile", action="store_true", help="cProfile the call and print the top functions")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--json", help="write the evaluate figures here")
    ap.add_argument("--skip-ranking", action="store_true",
                    help="leave out ranking_section (the Spark part): the driver's own work only, for quick iterations")
    ap.add_argument("--set", action="append", default=["spark.master=local[2]"], help="config override key=value")
    a = ap.parse_args(argv)
    cfg = DualRecConfig.load(None, dict(kv.split("=", 1) for kv in a.set))
    times = instrument()
    if a.skip_ranking:
        D.ranking_section = lambda *_a, **_k: {"skipped": True}
    load0 = os.getloadavg()
    smp = TreeSampler(os.getpid(), 0.25).start()
    pr = cProfile.Profile() if a.profile else None
    t0, c0 = time.time(), time.process_time()
    if pr:
        pr.enable()
    m = D.evaluate(a.lake, a.date, cfg)
    if pr:
        pr.disable()
    t1, c1 = time.time(), time.process_time()
    time.sleep(0.3)
    smp.stop()
    cpu, peak, kinds = smp.window(t0 - 1e-3, t1 + 0.3)
    load1 = os.getloadavg()
    print(f"evaluate {a.lake} {a.date}: wall {t1 - t0:.1f} s, driver CPU {c1 - c0:.1f} s (process_time), "
          f"tree CPU {cpu:.1f} s by kind {kinds}, peak RSS {peak / 2**20:.0f} MiB, "
          f"load {load0[0]:.1f} -> {load1[0]:.1f}, cProfile {'on' if pr else 'off'}")
    q = m.get("quality", {})
    print(f"optimum: {q.get('optimum_seconds')} s wall / {q.get('optimum_cpu_seconds')} CPU-s; "
          f"all users: {q.get('optimum_all_users_seconds')} s / {q.get('optimum_all_users_cpu_seconds')} CPU-s")
    print("section            wall s   CPU s  calls  (this process; nested sections are counted in each)")
    for n, (w, c, k) in times.items():
        print(f"{n:18s} {w:7.2f} {c:7.2f} {k:5d}")
    if pr:
        for key in ("tottime", "cumulative"):
            s = io.StringIO()
            pstats.Stats(pr, stream=s).sort_stats(key).print_stats(a.top)
            print(f"---- top {a.top} by {key}")
            print("\n".join(ln for ln in s.getvalue().splitlines() if ln.strip()))
    if a.json:
        Path(a.json).write_text(json.dumps(m, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
