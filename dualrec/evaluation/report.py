"""HTML report of a day's metrics (``<lake>/_reports/dt=D/index.html``) and the trend page.

Plots are matplotlib PNGs (Agg, no pyplot global state) written beside the HTML through the
lake's filesystem, so a report on ``s3a://`` works like a local one. A figure whose inputs are
missing is still rendered, as a "not available" panel, so every ``<img>`` resolves.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import math
import posixpath
import uuid
from collections.abc import Callable
from typing import Any

import jinja2
import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from dualrec.evaluation.day import REQUIRED_PATHS, flatten, get_path, unflatten  # noqa: E402
from dualrec.evaluation.figures import PAPER_CHANNEL_SHARE, PAPER_HIT_RATE, PAPER_RANK_AUC  # noqa: E402
from dualrec.lake import Lake, parse_date  # noqa: E402

log = logging.getLogger(__name__)

REPORTS = "_reports"

TREND_SERIES: dict[str, list[str]] = {
    "Activity": ["activity.auc", "activity.auc_baseline_last_day", "activity.hit_rate", "activity.hit_rate_all_users"],
    "Expected visible feedback (total)": [
        "quality.expected_feedback",
        "quality.expected_feedback_random",
        "quality.expected_feedback_popular",
        "quality.expected_feedback_arrival",
        "quality.expected_feedback_optimum",
        "quality.optimum_upper_bound",
    ],
    "Creator side": ["dispatch.coverage", "dispatch.fair_served", "quality.items_reaching_feedback", "quality.optimum_ratio"],
    "Recall of logged positives": ["quality.recall_at_l", "quality.recall_at_l_random", "quality.recall_at_l_popular"],
    "Dispatch coverage": ["dispatch.coverage", "dispatch.full_share", "dispatch.share_available_used"],
    "Truth recall of retrieval": [
        "retrieval.truth_recall.two_tower",
        "retrieval.truth_recall.i2i2u",
        "retrieval.truth_recall.i2u2u",
        "retrieval.truth_recall.merged",
    ],
}


def trend_series(history: dict[dt.date, dict]) -> dict[str, list[str]]:
    """:data:`TREND_SERIES` with one truth-recall series per channel found in the metrics (the
    channel list comes from the data, so a new channel shows up without an edit here)."""
    chans = list(dict.fromkeys(c for m in history.values() for c in (_g(m, "retrieval.truth_recall") or {})))
    out = dict(TREND_SERIES)
    if chans:
        out["Truth recall of retrieval"] = [f"retrieval.truth_recall.{c}" for c in chans]
    return out


def _lake(lake: Lake | str) -> Lake:
    return lake if isinstance(lake, Lake) else Lake(str(lake))


def _g(m: dict, path: str) -> Any:
    try:
        return get_path(m, path)
    except KeyError:
        return None


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def _na(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}: not available", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _bars(ax, labels: list[str], values: list[float | None], title: str, fmt: str = "{:.3f}") -> None:
    vals = [v if v is not None else 0.0 for v in values]
    bars = ax.bar(range(len(labels)), vals, color=["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"][: len(labels)])
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=20, ha="right")
    ax.set_title(title)
    for b, v in zip(bars, values):
        ax.annotate("n/a" if v is None else fmt.format(v), (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=8)


# ============================================================================ day plots
def plot_du_hist(m: dict) -> Figure:
    """Paper Figure 9: |D_u| distribution with the store, and without it when available."""
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    hist = _g(m, "dispatch.du_hist")
    none = _g(m, "dispatch.du_hist_no_store")
    if not hist:
        _na(ax, "|D_u| histogram")
        return fig
    ax.plot(range(len(hist)), hist, marker="o", ms=3, drawstyle="steps-mid", color="#4c72b0", label="with store (ours)")
    if none:
        ax.plot(range(len(none)), none, marker="o", ms=3, drawstyle="steps-mid", color="#c44e52",
                label="without store (top-L per item)")
    if max(len(hist), len(none or [])) > 40:
        ax.set_xscale("symlog", linthresh=10)
    q = _g(m, "dispatch.q")
    if q is not None:
        ax.axvline(q, color="black", ls="--", lw=1, label=f"Q = {int(q)}")
    ax.set_yscale("symlog")
    ax.set_ylim(bottom=0)  # counts: no negative half of the symlog axis
    ax.set_xlabel("|D_u| (items matched to a user)")
    ax.set_ylabel("users")
    ax.set_title("Match set size distribution (paper Fig. 9)")
    ax.legend(fontsize=8)
    return fig


def plot_channels(m: dict) -> Figure:
    """Paper Table 3: exposure share per retrieval channel, ours beside the paper's."""
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    ours = _g(m, "dispatch.channel_share") or {}
    chans = list(dict.fromkeys([*PAPER_CHANNEL_SHARE, *ours]))
    if not any(v is not None for v in ours.values()):
        _na(ax, "channel exposure shares")
        return fig
    x = range(len(chans))
    ax.bar([i - 0.2 for i in x], [ours.get(c) or 0 for c in chans], width=0.4, label="ours", color="#4c72b0")
    ax.bar([i + 0.2 for i in x], [PAPER_CHANNEL_SHARE.get(c, 0) for c in chans], width=0.4, label="paper Table 3", color="#bbbbbb")
    ax.set_xticks(list(x))
    ax.set_xticklabels(chans)
    ax.set_ylabel("share of dispatched pairs")
    ax.set_title("Channel exposure share")
    ax.legend(fontsize=8)
    return fig


def plot_coverage(m: dict) -> Figure:
    """Users per item (each item wants L) and coverage counts."""
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    h = _g(m, "dispatch.users_per_item_hist")
    n = _g(m, "dispatch.items")
    if not h or not n:
        _na(ax, "item coverage")
        return fig
    edges, counts = h["edges"], h["counts"]
    ax.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges[:-1], edges[1:])], align="edge", color="#55a868")
    ax.set_xlabel("users dispatched per item")
    ax.set_ylabel("items")
    cov, full = _g(m, "dispatch.items_covered"), _g(m, "dispatch.items_full")
    ax.set_title(f"Item coverage: {int(cov or 0)}/{int(n)} covered, {int(full or 0)} full (L={int(_g(m, 'dispatch.l') or 0)})")
    return fig


def plot_activity(m: dict) -> Figure:
    """Reliability of p_active vs actual D+1 activity, and hit rates vs the paper's."""
    fig = Figure(figsize=(9, 3.6))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    cal = _g(m, "activity.calibration")
    if cal:
        ax1.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
        ax1.plot([c["p_mean"] for c in cal], [c["rate"] for c in cal], marker="o", color="#4c72b0")
        ax1.set_xlabel("predicted p_active")
        ax1.set_ylabel("active on D+1")
        auc = _g(m, "activity.auc")
        ax1.set_title("Calibration" + (f" (AUC {auc:.3f})" if auc is not None else ""))
    else:
        _na(ax1, "calibration")
    vals = [_g(m, "activity.hit_rate"), _g(m, "activity.hit_rate_all_users"),
            PAPER_HIT_RATE["with_activity_model"], PAPER_HIT_RATE["without_activity_model"]]
    _bars(ax2, ["ours", "all users", "paper: with", "paper: without"], vals, "Hit rate (dispatched users active D+1)")
    ax2.set_ylim(0, 1.1)
    return fig


def plot_ranking(m: dict) -> Figure:
    """Per-task ranking AUC (model's own evaluation and on D+1 exposures)."""
    fig = Figure(figsize=(7, 3.6))
    ax = fig.add_subplot()
    auc = _g(m, "ranking.auc") or {}
    logged = _g(m, "ranking.auc_logged") or {}
    tasks = list(dict.fromkeys([*auc, *logged]))
    if not any(v is not None for v in [*auc.values(), *logged.values()] if not isinstance(v, dict)):
        _na(ax, "ranking AUC")
        return fig
    x = range(len(tasks))
    ax.bar([i - 0.2 for i in x], [auc.get(t) or 0 for t in tasks], width=0.4, label="model eval", color="#4c72b0")
    ax.bar([i + 0.2 for i in x], [logged.get(t) or 0 for t in tasks], width=0.4, label="D+1 exposures", color="#dd8452")
    ax.axhline(PAPER_RANK_AUC["with_sa_ef"], color="grey", ls="--", lw=1, label="paper 0.913")
    ax.axhline(0.5, color="black", ls=":", lw=1)
    ax.set_xticks(list(x))
    ax.set_xticklabels(tasks, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_title("Ranking AUC per task")
    ax.legend(fontsize=8)
    return fig


def plot_stages(m: dict) -> Figure:
    """Wall time per stage."""
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    st = _g(m, "cost.stage_seconds") or {}
    if not st:
        _na(ax, "stage timings")
        return fig
    names = list(st)
    ax.barh(names, [st[n] or 0 for n in names], color="#8172b3")
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("Stage wall time")
    return fig


def plot_baselines(m: dict) -> Figure:
    """Total expected feedback of ours, the baselines and the optimum; logged recall."""
    fig = Figure(figsize=(10, 3.6))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    names = ["ours", "random", "popular", "arrival", "optimum"]
    fb = [_g(m, "quality.expected_feedback"), *[_g(m, f"quality.expected_feedback_{n}") for n in names[1:4]],
          _optimum_value(m)]
    if any(v is not None for v in fb):
        _bars(ax1, names, fb, "Expected visible feedback, total (truth)", "{:.0f}")
    else:
        _na(ax1, "truth feedback")
    rc = [_g(m, "quality.recall_at_l"), *[_g(m, f"quality.recall_at_l_{n}") for n in names[1:4]]]
    if any(v is not None for v in rc):
        _bars(ax2, names[:4], rc, "Recall of logged D+1 positives")
    else:
        _na(ax2, "logged recall")
    return fig


def plot_coverage_by_hour(m: dict) -> Figure:
    """Share of items with at least one user, by upload hour: late uploads must not starve."""
    fig = Figure(figsize=(7, 3.4))
    ax = fig.add_subplot()
    cov = _g(m, "dispatch.coverage_by_hour")
    if not cov or not any(v is not None for v in cov):
        _na(ax, "coverage by upload hour")
        return fig
    ax.bar(range(len(cov)), [v if v is not None else 0 for v in cov], color="#55a868")
    ax.set_xlabel("upload hour (UTC)")
    ax.set_ylabel("items covered")
    ax.set_ylim(0, 1.05)
    ax.set_xticks(range(0, len(cov), 2))
    pol = _g(m, "dispatch.policy")
    ax.set_title("Coverage by upload hour" + (f" (policy {pol})" if pol else ""))
    return fig


def plot_truth_recall(m: dict) -> Figure:
    """Share of each item's true-best L users that each retrieval channel found."""
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    tr = _g(m, "retrieval.truth_recall") or {}
    if not any(v is not None for v in tr.values()):
        _na(ax, "truth recall")
        return fig
    _bars(ax, list(tr), list(tr.values()), "Retrieval truth recall (top-L true users)")
    ax.set_ylim(0, 1.1)
    return fig


def plot_size_curve(m: dict) -> Figure:
    """Issue 15 item 3: N (available users) against hit rate, coverage and expected feedback, the
    day's dispatch re-run offline for each N; the N of each activity policy marked."""
    fig = Figure(figsize=(10, 3.6))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    sc = _g(m, "activity.size_curve") or {}
    pts = [p for p in (sc.get("points") or []) if p.get("computable")]
    if not pts:
        _na(ax1, "size curve")
        _na(ax2, "size curve")
        return fig
    n = [p["n"] for p in pts]

    def ys(k):
        return [p[k] if p.get(k) is not None else float("nan") for p in pts]

    ax1.plot(n, ys("hit_rate"), marker="o", color="#4c72b0", label="hit rate")
    ax1.plot(n, ys("coverage"), marker="s", color="#55a868", label="coverage")
    ax1.plot(n, ys("fair_served"), marker="^", color="#8172b3", label="fair served")
    ax1.set_ylim(0, 1.05)
    ax1.set_xlabel("available users N")
    ax1.set_title("Hit rate and coverage against N")
    ax1.legend(fontsize=8)
    fb = ys("expected_feedback")
    if any(not math.isnan(v) for v in fb):
        ax2.plot(n, fb, marker="o", color="#c44e52", label="expected feedback (truth)")
        ax2.set_title("Expected visible feedback against N")
    else:
        ax2.plot(n, ys("model_value"), marker="o", color="#937860", label="sizing model V(N)")
        ax2.set_title("Sizing model V(N) (no truth)")
    ax2.set_xlabel("available users N")
    for ax in (ax1, ax2):
        for key, label, style in (("n_available", "today", "-"), ("n_top_n", "top_n", "--"), ("n_value", "value", ":")):
            if sc.get(key):
                ax.axvline(sc[key], color="grey", ls=style, lw=1, label=f"N {label} = {sc[key]:,}")
    ax2.legend(fontsize=8)
    return fig


DAY_PLOTS: list[tuple[str, str, Callable[[dict], Figure]]] = [
    ("du_hist.png", "|D_u| distribution with and without the available-user store", plot_du_hist),
    ("channels.png", "Channel exposure shares vs paper Table 3", plot_channels),
    ("coverage.png", "Item coverage", plot_coverage),
    ("coverage_by_hour.png", "Coverage by upload hour", plot_coverage_by_hour),
    ("activity.png", "Activity calibration and hit rate", plot_activity),
    ("size_curve.png", "Size of the available set N against hit rate, coverage and expected feedback", plot_size_curve),
    ("baselines.png", "Comparison with baselines", plot_baselines),
    ("truth_recall.png", "Retrieval recall of the true best users", plot_truth_recall),
    ("ranking_auc.png", "Ranking AUC per task", plot_ranking),
    ("stages.png", "Stage timings", plot_stages),
]


# ============================================================================ html
_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("dualrec.evaluation", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def fmt(v: Any, kind: str = "num") -> str:
    """A figure for people: shares as percentages, counts with separators, 'n/a' for null."""
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (dict, list)):
        text = json.dumps(v)
        return text if len(text) < 160 else text[:157] + "..."
    if not isinstance(v, (int, float)):
        return str(v)
    if kind == "pct":
        return f"{100 * v:.1f} %"
    if kind == "int" or (isinstance(v, int) and kind == "num"):
        return f"{int(round(v)):,}"
    if kind == "sec":
        return f"{v:,.1f} s"
    return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"


_ENV.filters["fmt"] = fmt

HEADLINE: list[tuple[str, list[tuple[str, str, str]]]] = [
    ("Activity (who comes back on D+1)", [
        ("activity.auc", "activity model AUC", "num"),
        ("activity.auc_baseline_last_day", "AUC of 'active today' (baseline)", "num"),
        ("activity.hit_rate", "dispatched users active on D+1", "pct"),
        ("activity.hit_rate_all_users", "all users active on D+1", "pct"),
    ]),
    ("Dispatch (creator side)", [
        ("dispatch.policy", "policy", "str"),
        ("dispatch.items", "items uploaded", "int"),
        ("dispatch.coverage", "items with >= 1 user (coverage)", "pct"),
        ("dispatch.fair_share", "fair share m = min(L, Q|U|/items)", "int"),
        ("dispatch.fair_served", "items with >= m/2 users", "pct"),
        ("dispatch.items_full", "items with L users", "int"),
        ("dispatch.users_per_item_gini", "Gini of users per item", "num"),
        ("dispatch.users_matched", "users matched", "int"),
        ("dispatch.max_du", "max |D_u| (must be <= Q)", "int"),
        ("dispatch.q", "Q", "int"),
        ("dispatch.l", "L", "int"),
    ]),
    ("Quality (synthetic truth and logged positives)", [
        ("quality.expected_feedback", "expected visible feedback, total", "num"),
        ("quality.optimum_ratio", "share of the optimum (ours / its upper bound)", "pct"),
        ("quality.optimum_gap", "optimum: relative gap of its bounds", "pct"),
        ("quality.items_reaching_feedback", "items expecting >= 1 visible feedback", "pct"),
        ("quality.feedback_per_pair", "expected feedback per pair", "num"),
        ("quality.recall_at_l", "recall of logged D+1 positives", "pct"),
        ("index.recall_at_k", "ANN recall vs exact", "pct"),
    ]),
]

ASSIGNMENTS = [("ours", ""), ("random", "_random"), ("popular", "_popular"), ("Algorithm 1 (arrival)", "_arrival"),
               ("optimum", "_optimum"), ("optimum, any user", "_optimum_all_users")]


def _optimum_value(m: dict, sfx: str = "_optimum") -> float | None:
    """The optimum when certified, else its upper bound (what a share is taken of: conservative)."""
    v = _g(m, f"quality.expected_feedback{sfx}")
    return v if v is not None else _g(m, f"quality.{sfx[1:]}_upper_bound")


EXPERIMENT_ROWS: list[tuple[str, str, str]] = [
    ("share", "traffic share", "pct"), ("creators", "creators", "int"), ("users", "users", "int"),
    ("dispatch.policy", "policy", "str"), ("dispatch.l", "L", "int"), ("dispatch.q", "Q", "int"),
    ("dispatch.items", "items", "int"), ("dispatch.coverage", "coverage", "pct"), ("dispatch.fair_served", "fair served", "pct"),
    ("dispatch.max_du", "max |D_u|", "int"), ("activity.hit_rate", "hit rate", "pct"),
    ("quality.expected_feedback", "expected feedback, total", "num"), ("quality.feedback_per_pair", "per pair", "num"),
    ("quality.items_reaching_feedback", "items reaching 1 feedback", "pct"), ("quality.optimum_ratio", "share of optimum", "pct"),
]


def experiment_context(metrics: dict) -> dict[str, Any] | None:
    """Per-arm table and the treatment - control differences with their intervals (issue 19)."""
    exp = metrics.get("experiment")
    if not isinstance(exp, dict) or not exp.get("arms"):
        return None
    names = list(exp["arms"])
    rows = [(label, [fmt(_g(exp["arms"][a], p), kind) if kind != "str" else fmt(_g(exp["arms"][a], p)) for a in names])
            for p, label, kind in EXPERIMENT_ROWS]
    for f in (exp["arms"][names[0]].get("creator_figures") or {}):
        rows.append((f"{f} (by creator)", [fmt((exp["arms"][a].get("creator_figures") or {}).get(f)) for a in names]))
    diff = []
    for f, d in (exp.get("difference") or {}).items():
        diff.append({"figure": f, "estimate": fmt(d.get("estimate")),
                     "ci": f"[{fmt(d.get('ci_low'))}, {fmt(d.get('ci_high'))}]", "true": fmt(d.get("true")),
                     "covers": fmt(d.get("covers"))})
    return {"arms": names, "rows": rows, "difference": diff, "treatment": exp.get("treatment"),
            "control": exp.get("control"), "cross": exp.get("cross_arm_pairs"), "confidence": fmt(exp.get("confidence"), "pct")}


def day_context(day: dt.date, metrics: dict, images: list[tuple[str, str]]) -> dict[str, Any]:
    """Everything the day template shows, as plain rows."""
    headline = [(title, [(label, fmt(_g(metrics, p), kind) if kind != "str" else fmt(_g(metrics, p)), p)
                         for p, label, kind in rows]) for title, rows in HEADLINE]
    opt = _optimum_value(metrics)
    assignments = []
    for name, sfx in ASSIGNMENTS:
        total = _g(metrics, f"quality.expected_feedback{sfx}")
        shown = fmt(total)
        if sfx.startswith("_optimum") and total is None and _g(metrics, f"quality.{sfx[1:]}_upper_bound") is not None:
            lo, hi = _g(metrics, f"quality.{sfx[1:]}_lower_bound"), _g(metrics, f"quality.{sfx[1:]}_upper_bound")
            shown, total = f"{fmt(lo)} .. {fmt(hi)}", hi
        assignments.append({
            "name": name,
            "total": shown,
            "per_pair": fmt(_g(metrics, f"quality.feedback_per_pair{sfx}")),
            "reach": fmt(_g(metrics, f"quality.items_reaching_feedback{sfx}"), "pct"),
            "recall": fmt(_g(metrics, f"quality.recall_at_l{sfx}"), "pct"),
            "of_opt": fmt(total / opt, "pct") if isinstance(total, (int, float)) and opt else "n/a",
        })
    share = _g(metrics, "dispatch.channel_share") or {}
    anyc = _g(metrics, "dispatch.channel_share_any") or {}
    tr = _g(metrics, "retrieval.truth_recall") or {}
    chans = list(dict.fromkeys([*share, *PAPER_CHANNEL_SHARE]))
    channels = [{"name": c, "share": fmt(share.get(c), "pct"), "any": fmt(anyc.get(c), "pct"),
                 "paper": fmt(PAPER_CHANNEL_SHARE.get(c), "pct"), "truth_recall": fmt(tr.get(c), "pct")} for c in chans]
    if "merged" in tr:
        channels.append({"name": "merged", "share": "", "any": "", "paper": "", "truth_recall": fmt(tr["merged"], "pct")})
    auc = _g(metrics, "ranking.auc") or {}
    logged = _g(metrics, "ranking.auc_logged") or {}
    tasks = [{"name": t, "auc": fmt(auc.get(t)), "logged": fmt(logged.get(t))}
             for t in dict.fromkeys([*auc, *logged]) if not isinstance(auc.get(t), dict)]
    stages = [{"name": k, "seconds": fmt(v, "sec")} for k, v in (_g(metrics, "cost.stage_seconds") or {}).items()]
    missing = [p for p in REQUIRED_PATHS if _g(metrics, p) is None]
    all_rows = [(r["metric"], fmt(json.loads(r["detail"]) if r["detail"] not in (None, "bool") else r["value"]))
                for r in flatten(metrics)]
    return {
        "day": day, "eval_day": metrics.get("eval_day", (day + dt.timedelta(days=1)).isoformat()),
        "headline": headline, "assignments": assignments, "channels": channels, "tasks": tasks, "stages": stages,
        "paper_auc": PAPER_RANK_AUC["with_sa_ef"], "images": images, "missing": missing, "all_rows": all_rows,
        "pool": _g(metrics, "quality.optimum_pool_users"), "exact": _g(metrics, "quality.optimum_exact"),
        "screened": _g(metrics, "quality.optimum_screened_users"), "gap": fmt(_g(metrics, "quality.optimum_gap"), "pct"),
        "experiment": experiment_context(metrics),
        "size": size_context(metrics),
    }


def size_context(metrics: dict) -> dict[str, Any] | None:
    """The size curve as table rows (null points shown as n/a; nothing when the day has no scores)."""
    sc = _g(metrics, "activity.size_curve")
    if not isinstance(sc, dict) or sc.get("n_available") is None:
        return None
    rows = [{"n": fmt(p.get("n"), "int"), "computable": fmt(p.get("computable")), "hit": fmt(p.get("hit_rate"), "pct"),
             "coverage": fmt(p.get("coverage"), "pct"), "fair": fmt(p.get("fair_served"), "pct"),
             "pairs": fmt(p.get("pairs"), "int"), "feedback": fmt(p.get("expected_feedback")),
             "reach": fmt(p.get("items_reaching_feedback"), "pct"), "model": fmt(p.get("model_value"))}
            for p in sc.get("points") or []]
    return {"rows": rows, "available": fmt(sc.get("n_available"), "int"), "top_n": fmt(sc.get("n_top_n"), "int"),
            "value": fmt(sc.get("n_value"), "int"), "policy": fmt(sc.get("policy")), "dispatch": fmt(sc.get("dispatch_policy")),
            "users": fmt(sc.get("n_users"), "int"), "sum_p": fmt(sc.get("sum_p_active"))}


def render_day_html(day: dt.date, metrics: dict, images: list[tuple[str, str]]) -> str:
    """The day page: headline tables, per-assignment, per-channel and per-task tables, plots, every metric."""
    return _ENV.get_template("day.html.j2").render(**day_context(day, metrics, images))


def write_report(lake: Lake | str, day: dt.date | str, metrics: dict) -> str:
    """Write ``_reports/dt=D/`` (index.html, PNGs, metrics.json) atomically; returns the HTML path."""
    lake = _lake(lake)
    day = parse_date(day)
    rel = f"{REPORTS}/dt={day.isoformat()}"
    images = []
    with lake.publish_dir(rel) as staging:
        for fname, caption, fn in DAY_PLOTS:
            _write_bytes(lake, posixpath.join(staging, fname), _png(fn(metrics)))
            images.append((fname, caption))
        lake.write_text(posixpath.join(staging, "metrics.json"), json.dumps(metrics, indent=2, sort_keys=True))
        lake.write_text(posixpath.join(staging, "index.html"), render_day_html(day, metrics, images))
    return lake.uri(f"{rel}/index.html")


def _write_bytes(lake: Lake, rel: str, data: bytes) -> None:
    with lake.fs.open_output_stream(lake.fs_path(rel)) as f:
        f.write(data)


# ============================================================================ trend
def load_history(lake: Lake) -> dict[dt.date, dict]:
    """Nested metrics of every day that has a ``metrics`` partition."""
    out = {}
    for d in lake.partitions("metrics"):
        t = lake.read_table("metrics", d)
        out[d] = unflatten(t.to_pylist())
    return out


def plot_trend(history: dict[dt.date, dict], title: str, paths: list[str]) -> Figure:
    fig = Figure(figsize=(7, 3.4))
    ax = fig.add_subplot()
    days = sorted(history)
    drawn = False
    for p in paths:
        ys = [_g(history[d], p) for d in days]
        if any(isinstance(y, (int, float)) for y in ys):
            ax.plot(days, [y if isinstance(y, (int, float)) else float("nan") for y in ys], marker="o", label=p.split(".", 1)[1])
            drawn = True
    if not drawn:
        _na(ax, title)
        return fig
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.autofmt_xdate()
    return fig


def write_trend(lake: Lake | str) -> str:
    """``_reports/index.html``: key figures of every day of the lake with links to day reports."""
    lake = _lake(lake)
    history = load_history(lake)
    images = []
    with lake.publish_dir(f"{REPORTS}/trend") as staging:
        for i, (title, paths) in enumerate(trend_series(history).items()):
            fname = f"trend_{i}.png"
            _write_bytes(lake, posixpath.join(staging, fname), _png(plot_trend(history, title, paths)))
            images.append((f"trend/{fname}", title))
    cols = [("activity.hit_rate", "hit rate", "pct"), ("dispatch.items", "items", "int"),
            ("dispatch.coverage", "coverage", "pct"), ("dispatch.fair_served", "fair served", "pct"),
            ("dispatch.max_du", "max |D_u|", "int"), ("quality.expected_feedback", "expected feedback", "num"),
            ("quality.optimum_ratio", "of optimum", "pct"), ("quality.recall_at_l", "recall@L", "pct"),
            ("cost.total_seconds", "wall time", "sec")]
    rows = []
    for d in sorted(history):
        has = lake.exists(f"{REPORTS}/dt={d.isoformat()}/index.html")
        rows.append({"day": d, "link": f"dt={d.isoformat()}/index.html" if has else None,
                     "cells": [fmt(_g(history[d], p), kind) for p, _, kind in cols]})
    page = _ENV.get_template("trend.html.j2").render(
        n_days=len(history), images=images, columns=[c[1] for c in cols], rows=rows
    )
    rel = f"{REPORTS}/index.html"
    tmp = f"{REPORTS}/.index-{uuid.uuid4().hex}.html"
    lake.write_text(tmp, page)
    lake.fs.move(lake.fs_path(tmp), lake.fs_path(rel))  # replace in one step: readers never see half a page
    return lake.uri(rel)
