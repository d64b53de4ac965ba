"""Benchmark of the synthetic-world generator: rows/s and peak memory per table.

    python benchmarks/synth.py                       # medium (3 days) and large (1 day)
    python benchmarks/synth.py --preset medium --days 1

Each configuration runs in its own subprocess so that ru_maxrss (a process-lifetime peak)
belongs to that configuration only. The lake is written to a temporary directory that is
removed afterwards unless --keep / --lake is given.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile

DEFAULT_RUNS = (("medium", 3), ("large", 1))


def run_one(preset: str, days: int, seed: int, lake: str | None, keep: bool) -> dict:
    """Generate one world in this process and return its profiled summary."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from dualrec.synth import generate

    root = lake or tempfile.mkdtemp(prefix=f"dualrec-synth-{preset}-")
    try:
        summary = generate(root, preset=preset, start="2026-01-01", days=days, seed=seed, profile=True)
    finally:
        if not (keep or lake):
            shutil.rmtree(root, ignore_errors=True)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    summary["peak_rss_mb"] = ru.ru_maxrss / 1024
    summary["cpu_seconds"] = round(ru.ru_utime + ru.ru_stime, 2)
    summary["preset"], summary["days"] = preset, days
    return summary


def _print(s: dict) -> None:
    print(f"\n== preset {s['preset']}, {s['days']} day(s): {s['seconds']:.1f}s wall ({s['cpu_seconds']:.1f}s CPU), "
          f"peak RSS {s['peak_rss_mb']:.0f} MiB, users {s['users']}, uploads/day {s['uploads_per_day']:.0f}, "
          f"impressions/day {s['impressions_per_day']:.0f}, active share {s['daily_active_share']:.3f}")
    print(f"{'table':<14}{'rows':>12}{'seconds':>10}{'rows/s':>12}{'peak RSS MiB':>14}")
    for t, r in s["tables"].items():
        print(f"{t:<14}{r['rows']:>12,}{r['seconds']:>10.2f}{r['rows_per_s']:>12,.0f}{r['peak_rss_mb']:>14.0f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["tiny", "small", "medium", "large"], help="one preset (default: medium and large)")
    ap.add_argument("--days", type=int, default=None, help="days to generate (default 3 for medium, 1 for large)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--lake", help="write here and keep it (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary lake")
    ap.add_argument("--json", action="store_true", help="print summaries as JSON")
    ap.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.in_process:
        print(json.dumps(run_one(args.preset, args.days, args.seed, args.lake, args.keep)))
        return 0
    runs = [(args.preset, args.days or dict(DEFAULT_RUNS).get(args.preset, 1))] if args.preset else list(DEFAULT_RUNS)
    if args.days and not args.preset:
        runs = [(p, args.days) for p, _ in runs]
    results = []
    for preset, days in runs:
        cmd = [sys.executable, os.path.abspath(__file__), "--in-process", "--preset", preset, "--days", str(days),
               "--seed", str(args.seed)] + (["--lake", args.lake] if args.lake else []) + (["--keep"] if args.keep else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        s = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(s)
        if not args.json:
            _print(s)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
