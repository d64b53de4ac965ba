"""Held-out AUC per task of two ranker artefacts of the same day, on the same exposures of D.

Why: comparing ``rank.max_train_rows`` settings (or any two trainings) needs both models scored
on identical rows; the metrics stage scores only the lake's own model. Rows: a hash sample of
D's exposures (``ranking_auc``'s frame, seed 7), features point-in-time from ``--lake``.

    python benchmarks/rank_models_auc.py --lake NEW_LAKE --other-lake OLD_LAKE --date D [--rows 100000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dualrec.config import DualRecConfig  # noqa: E402
from dualrec.lake import Lake  # noqa: E402
from dualrec.ranking import auc_per_task, score_rows_local, training_frame  # noqa: E402
from dualrec.spark import get_spark  # noqa: E402
from models.ranker import labels_of, load_ranker  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lake", required=True, help="lake whose exposures and features are used (and its ranker)")
    ap.add_argument("--other-lake", required=True, help="lake holding the other ranker artefact of the same day")
    ap.add_argument("--date", required=True)
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args(argv)
    day = dt.date.fromisoformat(args.date)
    lake = Lake(args.lake)
    cfg = DualRecConfig.load(None, {})
    spark = get_spark(cfg.spark)
    models = {"lake": load_ranker(lake, day), "other": load_ranker(Lake(args.other_lake), day)}
    t = time.time()
    pdf, _ = training_frame(spark, lake, day, day, cfg, max_rows=args.rows, seed=7)
    secs = time.time() - t
    for name, m in models.items():
        s = score_rows_local(m, pdf, dt.date.fromisoformat(m.manifest["train_end"]))
        print(json.dumps({"model": name, "train_rows": m.manifest["report"]["rows"], "rows": len(pdf),
                          "frame_seconds": round(secs, 1),
                          "auc": {k: (round(v, 4) if v is not None else None) for k, v in auc_per_task(labels_of(pdf), s).items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
