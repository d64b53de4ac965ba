"""Sizing the available set (issue 15 item 3): the N curve and each activity policy's N, from evaluate outputs.

    python benchmarks/sizing.py LABEL=evaluate.json [LABEL=evaluate.json ...]

Each JSON is what ``dualrec evaluate --json`` wrote for one run of a day (e.g. the day run with
``activity.policy=top_n`` and again with ``activity.policy=value``). Printed per run: the headline
figures of the dispatch that was published (available users, hit rate, coverage, fair served,
expected feedback, share of the optimum's upper bound), then the ``activity.size_curve`` points
(the day's dispatch re-run offline on the top-N available users; n/a above the available set).
Reads only the JSON files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _f(v, kind: str = "num") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if kind == "pct":
        return f"{100 * v:.1f} %"
    if kind == "int":
        return f"{int(v):,}"
    return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.4g}"


def headline(m: dict) -> list[str]:
    a, d, q = m.get("activity", {}), m.get("dispatch", {}), m.get("quality", {})
    sc = a.get("size_curve") or {}
    return [_f(a.get("available_users"), "int"), _f(sc.get("n_top_n"), "int"), _f(sc.get("n_value"), "int"),
            _f(a.get("hit_rate"), "pct"), _f(d.get("coverage"), "pct"), _f(d.get("fair_served"), "pct"),
            _f(q.get("expected_feedback")), _f(q.get("optimum_upper_bound")), _f(q.get("optimum_ratio"), "pct"),
            _f(q.get("optimum_all_users_upper_bound")), _f(q.get("items_reaching_feedback"), "pct")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="LABEL=path/to/evaluate.json")
    args = ap.parse_args(argv)
    runs = []
    for r in args.runs:
        label, _, path = r.partition("=")
        runs.append((label, json.loads(Path(path).read_text())))
    cols = ["run", "available", "N top_n", "N value", "hit rate", "coverage", "fair served", "expected feedback",
            "optimum (upper)", "of optimum", "optimum any user (upper)", "items reaching 1"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for label, m in runs:
        print(f"| {label} | " + " | ".join(headline(m)) + " |")
    for label, m in runs:
        sc = m.get("activity", {}).get("size_curve") or {}
        print(f"\n{label}: size curve, dispatch {sc.get('dispatch_policy')} re-run on the top-N available users "
              f"(fractions {sc.get('fractions')} of {sc.get('n_available')}, plus N top_n / value)")
        print("| N | computable | hit rate | coverage | fair served | pairs | expected feedback | items reaching 1 | model V(N) |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        for p in sc.get("points") or []:
            print(f"| {_f(p['n'], 'int')} | {_f(p['computable'])} | {_f(p['hit_rate'], 'pct')} | {_f(p['coverage'], 'pct')} | "
                  f"{_f(p['fair_served'], 'pct')} | {_f(p['pairs'], 'int')} | {_f(p['expected_feedback'])} | "
                  f"{_f(p['items_reaching_feedback'], 'pct')} | {_f(p['model_value'])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
