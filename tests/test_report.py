"""HTML report and trend page: they render, and every <img> they reference is a real PNG."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from dualrec.evaluation import day as M
from dualrec.evaluation.report import fmt, write_report, write_trend
from dualrec.lake import Lake

from test_metrics import DAY, _cfg, _write_day

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_images(html_path: Path) -> list[str]:
    html = html_path.read_text()
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert srcs, "report has no images"
    for src in srcs:
        f = html_path.parent / src
        assert f.is_file(), f"missing image {src}"
        data = f.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC), f"{src} is not a non-empty PNG"
    return srcs


@pytest.fixture()
def lake(tmp_path):
    lk = Lake(str(tmp_path / "lake"))
    lk.write_meta({"emb_dim": 4})
    return lk


def test_day_report_renders_with_all_images(lake, spark):
    _write_day(lake)
    m = M.evaluate(lake, DAY, _cfg(), spark=spark)
    m["dispatch"]["du_hist_no_store"] = [0, 40, 5, 3, 2, 1] + [0] * 50 + [1]  # long tail: log x axis
    path = Path(write_report(lake, DAY, m))
    assert path == Path(lake.root) / "_reports" / f"dt={DAY}" / "index.html"
    srcs = _check_images(path)
    assert {"du_hist.png", "channels.png", "coverage.png", "coverage_by_hour.png", "activity.png", "baselines.png",
            "ranking_auc.png", "stages.png"} <= set(srcs)
    html = path.read_text()
    for p in M.REQUIRED_PATHS:  # every SPEC figure is on the page
        assert p in html, p
    assert "97.0 %" in html  # index recall, formatted for people
    assert "<td>two_tower</td><td class=\"v\">57.1 %</td>" in html  # per-channel table: 4 of 7 pairs
    assert "<td>like</td>" in html  # per-task table
    assert "{" not in html.split("<body>")[1].split("<details>")[0]  # no raw JSON above the full listing
    assert (path.parent / "metrics.json").is_file()


def test_report_with_all_nulls_still_has_every_image(lake, spark):
    m = M.evaluate(lake, DAY, _cfg(), spark=spark)  # empty lake
    path = Path(write_report(lake, DAY, m))
    _check_images(path)
    assert "n/a" in path.read_text()
    # rewriting the report replaces it atomically
    path2 = Path(write_report(lake, DAY, m))
    assert path2 == path and path.is_file()


def test_trend_page_lists_days(lake):
    days = [DAY + dt.timedelta(days=k) for k in range(3)]
    for k, d in enumerate(days):
        m = {
            "date": d.isoformat(),
            "activity": {"hit_rate": 0.5 + 0.1 * k, "auc": 0.7},
            "quality": {"feedback_per_pair": 0.1 * (k + 1), "feedback_per_pair_random": 0.05, "recall_at_l": None},
            "dispatch": {"items": 10, "items_covered": 9, "max_du": 3},
            "cost": {"stage_seconds": {}},
        }
        lake.write_table("metrics", d, M.metrics_table(m))
    write_report(lake, days[1], {"date": days[1].isoformat()})  # one day with a day report
    path = Path(write_trend(lake))
    assert path == Path(lake.root) / "_reports" / "index.html"
    html = path.read_text()
    for d in days:
        assert d.isoformat() in html
    assert f'href="dt={days[1]}/index.html"' in html and f'href="dt={days[0]}/index.html"' not in html
    assert "70.0 %" in html and "3 day(s)" in html
    _check_images(path)


def test_trend_on_lake_without_metrics(lake):
    path = Path(write_trend(lake))
    assert "0 day(s)" in path.read_text()
    _check_images(path)


def test_fmt_is_for_people():
    assert fmt(None) == "n/a" and fmt(0.1234, "pct") == "12.3 %" and fmt(12345, "int") == "12,345"
    assert fmt(0.05523) == "0.05523" and fmt(3.5, "sec") == "3.5 s" and fmt(True) == "yes"
