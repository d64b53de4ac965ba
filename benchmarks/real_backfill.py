"""Backfill a public dataset's last N days through the whole pipeline and print per-day metrics.

    python benchmarks/real_backfill.py --src /work/datasets/ml-100k [--kind recbole] \
        [--lake /work/worlds/real_ml100k] [--days 90] [--horizons 1,7] [--set key=value ...]

Ingests ``--src`` into ``--lake`` when the lake holds no input yet (the files are never
downloaded here: get them yourself, e.g. RecBole's ml-100k from ``pip download recbole``),
then runs ``dualrec.pipeline.run_day`` for each of the last ``--days`` days in order, exactly
as ``dualrec backfill`` does (complete days are skipped, so an interrupted run resumes), and
stops at the first failing day unless ``--keep-going``. Afterwards every day is evaluated
with ``dualrec.evaluation.evaluate`` at each recall horizon (positives over D+1..D+H) and one
line per day is printed: the users/uploads of the day, what was dispatched, the logged
recall of ours / popular / random under the same caps, the ranker's AUC on D+1's logged
exposures, which stages kept their previous model, and the day's wall time. ``--out``
gets everything as JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dualrec.config import DualRecConfig  # noqa: E402
from dualrec.ingest import KINDS, ingest  # noqa: E402
from dualrec.lake import Lake  # noqa: E402
from dualrec.evaluation import evaluate  # noqa: E402
from dualrec.pipeline import is_day_done, run_day, stage_timings  # noqa: E402
from schemas.tables import INPUT_TABLES  # noqa: E402

log = logging.getLogger("real_backfill")


def _parse_sets(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise SystemExit(f"--set wants KEY=VALUE, got {item!r}")
        out[k.strip()] = v.strip()
    return out


def _num(x) -> str:
    if x is None:
        return "   -  "
    if isinstance(x, float):
        return f"{x:6.3f}"
    return f"{x:6d}" if isinstance(x, int) else str(x)


def kept_models(lake: Lake, day: dt.date) -> list[str]:
    """Stages whose model manifest for ``day`` says the previous model was kept (a quiet day)."""
    out = []
    root = lake.fs_path("_models")
    if not os.path.isdir(root):
        return out
    for name in sorted(os.listdir(root)):
        rel = f"_models/{name}/dt={day.isoformat()}/manifest.json"
        if lake.exists(rel):
            m = json.loads(lake.read_text(rel))
            if m.get("kept_previous"):
                out.append(name)
    return out


def day_row(lake: Lake, day: dt.date, by_h: dict[int, dict]) -> dict:
    """The per-day figures printed and saved (``by_h``: evaluate() output per horizon)."""
    m1 = by_h[min(by_h)]
    a, d, r = m1["activity"], m1["dispatch"], m1["ranking"]
    row = {
        "date": day.isoformat(),
        "active_users": lake.read_table("visits", day).num_rows,
        "uploads": lake.read_table("items", day).num_rows,
        "available": a.get("available_users"),
        "active_next_day": a.get("active_next_day"),
        "hit_rate": a.get("hit_rate"),
        "items_covered": d.get("items_covered"),
        "pairs": d.get("pairs"),
        "max_du": d.get("max_du"),
        "auc_like": (r.get("auc_logged") or {}).get("like"),
        "kept_previous": kept_models(lake, day),
        "seconds": sum(stage_timings(lake, day).values()),
    }
    for h, m in by_h.items():
        qh = m["quality"]
        row[f"items_with_positives_h{h}"] = qh.get("recall_items_with_positives")
        for who in ("", "_popular", "_random"):
            row[f"recall{who}_h{h}"] = qh.get(f"recall_at_l{who}")
    return row


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--src", required=True, help="folder with the dataset's files")
    p.add_argument("--kind", default="recbole", choices=KINDS)
    p.add_argument("--lake", help="default: /tmp/dualrec_real_<kind>_<src folder name>")
    p.add_argument("--days", type=int, default=90, help="backfill the last N days of the dataset")
    p.add_argument("--horizons", default="1,7", help="recall horizons H (days D+1..D+H), comma separated")
    p.add_argument("--config", help="YAML/TOML/JSON config file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, e.g. spark.master=local[2]")
    p.add_argument("--keep-going", action="store_true", help="continue after a failing day (default: stop)")
    p.add_argument("--skip-eval", action="store_true", help="only backfill")
    p.add_argument("--out", help="write all figures as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    # Spark's console progress bars would bury the per-day lines
    os.environ.setdefault("PYSPARK_SUBMIT_ARGS", "--conf spark.ui.showConsoleProgress=false pyspark-shell")

    cfg = DualRecConfig.load(args.config, _parse_sets(args.set))
    horizons = sorted({int(h) for h in args.horizons.split(",") if h.strip()})
    lake = Lake(args.lake or f"/tmp/dualrec_real_{args.kind}_{os.path.basename(os.path.normpath(args.src))}")
    t_all = time.time()
    if not any(lake.partitions(t) for t in INPUT_TABLES):
        s = ingest(args.kind, args.src, lake.root)
        print(f"ingest {args.kind}: {s['start']} .. {s['end']} ({s['days']} days), {s['users']} users, "
              f"{s['items']} items, {s['rows']['interactions']} interactions in {s['seconds']:.1f} s", flush=True)
    all_days = lake.partitions("interactions")
    days = all_days[-args.days:]
    print(f"lake {lake.root}: {len(all_days)} days of logs; backfilling {days[0]} .. {days[-1]} ({len(days)} days)",
          flush=True)

    prior: dict[str, dict] = {}
    if args.out and os.path.exists(args.out):  # a resumed run keeps the figures it already has
        with open(args.out) as fh:
            prior = {r["date"]: r for r in json.load(fh).get("days", []) if r.get("horizons") == horizons}
    status: dict[str, str] = {}
    rows: list[dict] = []
    t0 = time.time()
    eval_s = 0.0
    for n, day in enumerate(days, 1):
        key = day.isoformat()
        if is_day_done(lake, day):
            status[key] = "skipped (complete)"
        else:
            t_day = time.time()
            try:
                run_day(lake, day, cfg, progress=lambda msg: log.debug("%s", msg))
            except Exception as e:  # noqa: BLE001 - reported per day; the backfill stops unless --keep-going
                status[key] = f"failed: {type(e).__name__}: {e}"
                print(f"day {n}/{len(days)} {day}: FAILED after {time.time() - t_day:.0f} s: {e}", flush=True)
                if not args.keep_going:
                    break
                continue
            status[key] = "done"
            done = sum(v == "done" for v in status.values())
            eta = (time.time() - t0) / done * (len(days) - n)
            print(f"day {n}/{len(days)} {day}: done in {time.time() - t_day:.0f} s (ETA {eta / 60:.0f} min)",
                  flush=True)
        if args.skip_eval:
            continue
        if key in prior and status[key].startswith("skipped"):
            rows.append(prior[key])
        else:
            t1 = time.time()
            rows.append(day_row(lake, day, {h: evaluate(lake, day, cfg, horizon_days=h) for h in horizons}))
            rows[-1]["horizons"] = horizons
            eval_s += time.time() - t1
        print("  " + ", ".join(f"{k}={_num(v).strip()}" for k, v in rows[-1].items() if k not in ("date", "horizons")),
              flush=True)
        if args.out:
            _save(args.out, {"days": rows, "status": status})
    backfill_s = time.time() - t0 - eval_s
    failed = {d: s for d, s in status.items() if s.startswith("failed")}
    completed = [d for d in days if status.get(d.isoformat(), "").startswith(("done", "skipped"))]

    hcols = [f"{who}_h{h}" for h in horizons for who in ("recall", "recall_popular", "recall_random")]
    head = ["date", "active_users", "uploads", "available", "items_covered", "pairs", "hit_rate",
            *[f"items_with_positives_h{h}" for h in horizons], *hcols, "auc_like", "seconds"]
    short = {"active_users": "act", "uploads": "upl", "available": "avail", "items_covered": "cov", "pairs": "pairs",
             "hit_rate": "hit", "auc_like": "aucL", "seconds": "sec"}
    for h in horizons:
        short.update({f"items_with_positives_h{h}": f"pos{h}", f"recall_h{h}": f"R{h}",
                      f"recall_popular_h{h}": f"Rpop{h}", f"recall_random_h{h}": f"Rrnd{h}"})
    print("\n" + " ".join(f"{short.get(c, c):>10s}" if c != "date" else f"{c:<10s}" for c in head) + "  kept_previous")
    for r in rows:
        cells = [f"{r['date']:<10s}"] + [f"{_num(r[c]):>10s}" for c in head[1:]]
        print(" ".join(cells) + "  " + ",".join(r["kept_previous"]))

    summary = {
        "lake": lake.root,
        "days_requested": len(days),
        "days_completed": len(completed),
        "days_failed": failed,
        "first_day": days[0].isoformat(),
        "last_day": days[-1].isoformat(),
        "backfill_seconds_this_run": round(backfill_s, 1),
        "day_seconds_total": round(sum(r["seconds"] for r in rows), 1),
        "day_seconds_mean": _mean([r["seconds"] for r in rows]),
        "evaluate_seconds": round(eval_s, 1),
        "days_with_kept_model": sum(bool(r["kept_previous"]) for r in rows),
        "kept_model_by_stage": {s: sum(s in r["kept_previous"] for r in rows)
                                for s in sorted({s for r in rows for s in r["kept_previous"]})},
        "mean_active_users": _mean([r["active_users"] for r in rows]),
        "mean_uploads": _mean([r["uploads"] for r in rows]),
        "mean_hit_rate": _mean([r["hit_rate"] for r in rows]),
        "mean_auc_like": _mean([r["auc_like"] for r in rows]),
    }
    for h in horizons:
        summary[f"days_with_recall_h{h}"] = sum(r[f"recall_h{h}"] is not None for r in rows)
        summary[f"items_with_positives_h{h}"] = sum(r[f"items_with_positives_h{h}"] or 0 for r in rows)
        for who in ("", "_popular", "_random"):
            summary[f"mean_recall{who}_h{h}"] = _mean([r[f"recall{who}_h{h}"] for r in rows])
    summary["wall_seconds"] = round(time.time() - t_all, 1)
    print("\nsummary:")
    for k, v in summary.items():
        print(f"  {k}: {round(v, 4) if isinstance(v, float) else v}")
    if args.out:
        _save(args.out, {"summary": summary, "days": rows, "status": status})
    return 1 if failed else 0


def _save(path: str, data: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, default=str)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
