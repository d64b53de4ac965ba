"""Stage ``metrics``: the day's SPEC section 6 figures -> table ``metrics`` dt=D and the HTML report.

``spark-submit jobs/metrics.py --lake DIR --date D``. Figures that need D+1's logs are null
when D+1 has not happened yet; rerunning the stage later (or ``dualrec evaluate``) fills them.
"""

from __future__ import annotations


from dualrec.evaluation import evaluate, metrics_table
from dualrec.evaluation.report import write_report, write_trend
from dualrec.stages.base import StageContext


def run(ctx: StageContext) -> dict:
    """Compute the day's metrics, publish them as rows of ``metrics`` and write the reports."""
    m = evaluate(ctx.lake, ctx.day, ctx.cfg, spark=ctx._spark)
    table = metrics_table(m)
    ctx.lake.write_table("metrics", ctx.day, table)
    report = write_report(ctx.lake, ctx.day, m)
    write_trend(ctx.lake)
    return {
        "rows": table.num_rows,
        "hit_rate": m["activity"]["hit_rate"],
        "items_covered": m["dispatch"]["items_covered"],
        "max_du": m["dispatch"]["max_du"],
        "report": report,
    }

