"""Co-diverted A/B experiment on a real pipeline day: estimate vs the true difference (issue 19).

    python benchmarks/experiment.py --lake DIR --date D [--seeds 20] [--control-policy arrival]
                                    [--treatment-policy optimal] [--share 0.5] [--json OUT]

Reads the day's ``ranked``, ``items``, ``activity_scores`` and the synthetic truth (never
writes into the lake). For each salt the creators and users are split into two arms
(:func:`dualrec.experiment.assign`, as the dispatch stage does), each arm is dispatched on its
own creators' items x its own users with its own policy (the product's NumPy day dispatch,
the code the Spark stage runs per batch), and the treatment - control difference of the
creator-side figures is estimated with its 95 % bootstrap interval over creators
(:func:`dualrec.evaluation.experiment.bootstrap_difference`). The true difference runs each
policy on the whole population. Printed: per salt the estimate, interval and whether it covers
the truth; then the coverage rate, the bias and the spread of the estimates.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dualrec.config import DualRecConfig  # noqa: E402
from dualrec.evaluation.day import truth_scorer  # noqa: E402
from dualrec.evaluation.experiment import (  # noqa: E402
    RATIOS,
    arm_edges,
    bootstrap_difference,
    day_edges,
    figure_values,
    population_sums,
)
from dualrec.dispatch import paced_curve  # noqa: E402
from dualrec.experiment import arm_configs  # noqa: E402
from dualrec.lake import Lake, parse_date  # noqa: E402

HEAD = ("quality.expected_feedback_per_creator", "dispatch.coverage")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lake", required=True)
    ap.add_argument("--date", required=True)
    ap.add_argument("--seeds", type=int, default=20, help="salts 0..N-1")
    ap.add_argument("--control-policy", default="arrival")
    ap.add_argument("--treatment-policy", default=None, help="default: the config's dispatch.policy")
    ap.add_argument("--share", type=float, default=0.5, help="treatment share")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    lake, day = Lake(args.lake), parse_date(args.date)
    score_fn = truth_scorer(lake, day + dt.timedelta(days=1))
    if score_fn is None:
        raise SystemExit(f"{args.lake} has no synthetic truth (_truth)")
    base = DualRecConfig()
    treat_over = {"dispatch.policy": args.treatment_policy} if args.treatment_policy else {}
    arms = {"control": {"share": 1 - args.share, "overrides": {"dispatch.policy": args.control_policy}},
            "treatment": {"share": args.share, "overrides": treat_over}}
    t0 = time.time()
    edges = day_edges(lake, day)
    print(f"day {day}: {edges.items.size} items, {np.unique(edges.creators).size} creators, "
          f"{edges.available.size} available users, {edges.g.size:,} ranked pairs ({time.time() - t0:.1f} s)")
    cfg = DualRecConfig.from_dict({"experiment": {"arms": arms, "bootstrap": args.bootstrap}})
    confs = arm_configs(cfg)
    print(f"control: {confs['control'].dispatch.policy}, treatment: {confs['treatment'].dispatch.policy}; "
          f"L={base.dispatch.L} Q={base.dispatch.Q}, share {args.share}")
    t0 = time.time()
    true_fig = {a: figure_values(population_sums(edges, confs[a], score_fn, paced_curve(lake, day, confs[a].dispatch)))
                for a in ("control", "treatment")}
    true = {f: (None if true_fig["treatment"][f] is None else true_fig["treatment"][f] - true_fig["control"][f])
            for f in RATIOS}
    print(f"true (whole population, {time.time() - t0:.0f} s): " + ", ".join(
        f"{f} {true_fig['control'][f]:.4g} -> {true_fig['treatment'][f]:.4g} (diff {true[f]:+.4g})" for f in RATIOS))
    rows = []
    for salt in range(args.seeds):
        t0 = time.time()
        c = DualRecConfig.from_dict({"experiment": {"arms": arms, "salt": salt, "bootstrap": args.bootstrap}})
        sums = {}
        for a in ("control", "treatment"):
            sub = arm_edges(edges, c.experiment, a)
            sums[a] = population_sums(sub, confs[a], score_fn, paced_curve(lake, day, confs[a].dispatch))
        diff = bootstrap_difference(sums["treatment"], sums["control"], args.bootstrap, seed=salt, confidence=0.95)
        row = {"salt": salt, "seconds": round(time.time() - t0, 1),
               "creators": {a: int(sums[a]["creators"].size) for a in sums}}
        for f in RATIOS:
            d = diff[f]
            d["true"] = true[f]
            d["covers"] = bool(d["ci_low"] <= true[f] <= d["ci_high"]) if d["ci_low"] is not None else None
            row[f] = d
        rows.append(row)
        print(f"salt {salt:2d} ({row['seconds']:.0f} s, creators {row['creators']['control']}/{row['creators']['treatment']}): "
              + "; ".join(f"{f.split('.')[1]} {row[f]['estimate']:+.4g} [{row[f]['ci_low']:+.4g}, {row[f]['ci_high']:+.4g}]"
                          f"{'' if row[f]['covers'] else ' MISS'}" for f in HEAD), flush=True)
    summary = {}
    for f in RATIOS:
        est = np.array([r[f]["estimate"] for r in rows], dtype=float)
        half = np.array([(r[f]["ci_high"] - r[f]["ci_low"]) / 2 for r in rows], dtype=float)
        cov = np.mean([r[f]["covers"] for r in rows])
        # the arm-scale estimand: what the split estimates on average (the mean over salts)
        cov_mean = np.mean([r[f]["ci_low"] <= est.mean() <= r[f]["ci_high"] for r in rows])
        arm = {a: float(np.mean([r[f][a] for r in rows])) for a in ("control", "treatment")}
        summary[f] = {"true": true[f], "mean_estimate": float(est.mean()), "bias": float(est.mean() - true[f]),
                      "sd_estimates": float(est.std(ddof=1)) if est.size > 1 else None,
                      "mean_ci_half_width": float(half.mean()), "coverage": float(cov),
                      "coverage_of_mean_estimate": float(cov_mean),
                      "arm_mean": arm, "population": {a: true_fig[a][f] for a in ("control", "treatment")}}
    print("\nfigure | true diff | mean estimate | bias | sd of estimates over salts | mean CI half-width | "
          "coverage of true | coverage of mean estimate | control arm vs population | treatment arm vs population")
    for f, s in summary.items():
        print(f"{f} | {s['true']:+.4g} | {s['mean_estimate']:+.4g} | {s['bias']:+.4g} | {s['sd_estimates']:.4g} | "
              f"{s['mean_ci_half_width']:.4g} | {100 * s['coverage']:.0f} % | {100 * s['coverage_of_mean_estimate']:.0f} % | "
              f"{s['arm_mean']['control']:.4g} vs {s['population']['control']:.4g} | "
              f"{s['arm_mean']['treatment']:.4g} vs {s['population']['treatment']:.4g}")
    if args.json:
        Path(args.json).write_text(json.dumps({"true_figures": true_fig, "true": true, "salts": rows, "summary": summary},
                                              indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
