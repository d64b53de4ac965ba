"""HTML report of a day's metrics (``<lake>/_reports/dt=D/index.html``) and the trend page.

Plots are matplotlib PNGs (Agg, no pyplot global state) written beside the HTML through the
lake's filesystem, so a report on ``s3a://`` works like a local one. A figure whose inputs are
missing is still rendered, as a "not available" panel, so every ``<img>`` resolves.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import json
import logging
import posixpath
import uuid
from collections.abc import Callable
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from dualrec.lake import Lake, parse_date  # noqa: E402
from dualrec.metrics import (  # noqa: E402
    PAPER_CHANNEL_SHARE,
    PAPER_HIT_RATE,
    PAPER_RANK_AUC,
    REQUIRED_PATHS,
    flatten,
    get_path,
    unflatten,
)

log = logging.getLogger(__name__)

REPORTS = "_reports"

TREND_SERIES: dict[str, list[str]] = {
    "Activity": ["activity.auc", "activity.auc_baseline_last_day", "activity.hit_rate", "activity.hit_rate_all_users"],
    "Expected visible feedback per pair": [
        "quality.feedback_per_pair",
        "quality.feedback_per_pair_random",
        "quality.feedback_per_pair_popular",
        "quality.feedback_per_pair_oracle",
    ],
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
    """Ours vs random-available, popular and oracle under the same caps."""
    fig = Figure(figsize=(9, 3.6))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    names = ["ours", "random", "popular", "oracle"]
    fb = [_g(m, "quality.feedback_per_pair"), *[_g(m, f"quality.feedback_per_pair_{n}") for n in names[1:]]]
    if any(v is not None for v in fb):
        _bars(ax1, names, fb, "Expected visible feedback / pair (truth)")
    else:
        _na(ax1, "truth feedback")
    rc = [_g(m, "quality.recall_at_l"), *[_g(m, f"quality.recall_at_l_{n}") for n in names[1:]]]
    if any(v is not None for v in rc):
        _bars(ax2, names, rc, "Recall of logged D+1 positives")
    else:
        _na(ax2, "logged recall")
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


DAY_PLOTS: list[tuple[str, str, Callable[[dict], Figure]]] = [
    ("du_hist.png", "|D_u| distribution with and without the available-user store", plot_du_hist),
    ("channels.png", "Channel exposure shares vs paper Table 3", plot_channels),
    ("coverage.png", "Item coverage", plot_coverage),
    ("activity.png", "Activity calibration and hit rate", plot_activity),
    ("baselines.png", "Comparison with baselines", plot_baselines),
    ("truth_recall.png", "Retrieval recall of the true best users", plot_truth_recall),
    ("ranking_auc.png", "Ranking AUC per task", plot_ranking),
    ("stages.png", "Stage timings", plot_stages),
]


# ============================================================================ html
_CSS = """body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}td.v{text-align:right;font-family:monospace}
.na{color:#999}figure{display:inline-block;margin:0.5em}figcaption{font-size:13px;color:#555}"""


def _fmt(v: Any) -> str:
    if v is None:
        return '<span class="na">null</span>'
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        text = json.dumps(v)
        return html.escape(text if len(text) < 160 else text[:157] + "...")
    return html.escape(str(v))


def render_day_html(day: dt.date, metrics: dict, images: list[tuple[str, str]]) -> str:
    """The day page: headline SPEC figures, plots, then every metric."""
    head = "".join(f"<tr><td>{html.escape(p)}</td><td class=v>{_fmt(_g(metrics, p))}</td></tr>" for p in REQUIRED_PATHS)
    figs = "".join(
        f'<figure><img src="{html.escape(f)}" alt="{html.escape(c)}"><figcaption>{html.escape(c)}</figcaption></figure>'
        for f, c in images
    )
    rows = "".join(
        f"<tr><td>{html.escape(r['metric'])}</td><td class=v>"
        f"{_fmt(json.loads(r['detail']) if r['detail'] not in (None, 'bool') else r['value'])}</td></tr>"
        for r in flatten(metrics)
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>DualRec {day}</title><style>{_CSS}</style></head>"
        f"<body><h1>DualRec day report {day}</h1><p>Dispatch of items uploaded on {day}, evaluated against "
        f"{html.escape(str(metrics.get('eval_day', day + dt.timedelta(days=1))))} logs. "
        f"<a href='../index.html'>trend across days</a></p>"
        f"<h2>Headline (SPEC section 6)</h2><table><tr><th>metric</th><th>value</th></tr>{head}</table>"
        f"<h2>Plots</h2>{figs}<h2>All metrics</h2><table><tr><th>metric</th><th>value</th></tr>{rows}</table>"
        f"</body></html>"
    )


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
    cols = ["activity.hit_rate", "activity.auc", "dispatch.items", "dispatch.items_covered", "dispatch.items_full",
            "dispatch.max_du", "quality.feedback_per_pair", "quality.feedback_per_pair_oracle", "quality.recall_at_l",
            "cost.total_seconds"]
    rows = []
    for d in sorted(history):
        has = lake.exists(f"{REPORTS}/dt={d.isoformat()}/index.html")
        link = f"<a href='dt={d.isoformat()}/index.html'>{d}</a>" if has else str(d)
        rows.append(f"<tr><td>{link}</td>" + "".join(f"<td class=v>{_fmt(_g(history[d], c))}</td>" for c in cols) + "</tr>")
    figs = "".join(
        f'<figure><img src="{html.escape(f)}" alt="{html.escape(c)}"><figcaption>{html.escape(c)}</figcaption></figure>'
        for f, c in images
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>DualRec trend</title><style>{_CSS}</style></head>"
        f"<body><h1>DualRec across days</h1><p>{len(history)} day(s) with metrics.</p>{figs}"
        f"<table><tr><th>day</th>{''.join(f'<th>{html.escape(c)}</th>' for c in cols)}</tr>{''.join(rows)}</table>"
        f"</body></html>"
    )
    rel = f"{REPORTS}/index.html"
    tmp = f"{REPORTS}/.index-{uuid.uuid4().hex}.html"
    lake.write_text(tmp, page)
    lake.fs.move(lake.fs_path(tmp), lake.fs_path(rel))  # replace in one step: readers never see half a page
    return lake.uri(rel)
