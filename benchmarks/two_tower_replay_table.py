"""Print the figures of benchmarks/two_tower_replay.sh arms: pairs, two_tower seconds, recall, feedback, AUCs.

    python benchmarks/two_tower_replay_table.py OUT_DIR/r0 OUT_DIR/r1 OUT_DIR/full
"""

from __future__ import annotations

import json
import os
import re
import sys


def _last(path: str, pattern: str) -> str | None:
    try:
        with open(path) as f:
            found = re.findall(pattern, f.read())
    except OSError:
        return None
    return found[-1] if found else None


def arm_figures(arm: str) -> dict:
    """One arm's figures from its stage log and its ``evaluate --json`` output."""
    with open(os.path.join(arm, "eval.json")) as f:
        e = json.load(f)
    out = os.path.join(arm, "tt.out")
    if not os.path.exists(out):
        out = os.path.join(arm, "run.out")
    user, sys_ = _last(out, r"User time \(seconds\): ([\d.]+)"), _last(out, r"System time \(seconds\): ([\d.]+)")
    tr = e["retrieval"]["truth_recall"]
    auc = e["ranking"].get("auc") or {}
    return {
        "arm": os.path.basename(arm.rstrip("/")),
        "pairs": _last(out, r"two_tower done in.* pairs=(\d+)"),
        "two_tower_s": _last(out, r"two_tower done in ([\d.]+)s"),
        "fit_s": _last(out, r"seconds_fit=([\d.]+)"),
        "process_cpu_s": round(float(user) + float(sys_), 1) if user and out.endswith("tt.out") else None,
        "truth_recall_two_tower": round(tr["two_tower"], 4),
        "truth_recall_merged": round(tr["merged"], 4),
        "expected_feedback": round(e["quality"]["expected_feedback"], 1),
        "feedback_per_pair": round(e["quality"]["feedback_per_pair"], 4),
        "activity_auc": round(e["activity"]["auc"], 4),
        "ranking_auc": {k: round(v, 4) for k, v in auc.items() if isinstance(v, float)},
    }


if __name__ == "__main__":
    for a in sys.argv[1:]:
        print(json.dumps(arm_figures(a)))
