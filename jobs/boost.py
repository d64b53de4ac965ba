"""Combined recommendation (paper 4.2.3, Eq. 14): boost a user-side candidate table with D_u.

    f'_ui = f_ui + lambda * g_ui   if i in D_u (the day's match set of user u)
    f'_ui = f_ui                   otherwise

Usage::

    spark-submit jobs/boost.py --lake DIR --date D --input PATH_OR_TABLE --output PATH [--lambda X]

``--input`` is a Parquet file/directory with at least (user_id, item_id, f), or the name of a
table in the lake (its ``dt=D`` partition is read). D_u comes from ``match_sets`` dt=D (the
items uploaded on D, to be served on D+1). The output is Parquet with every input column plus
``f_prime`` (double), published atomically (written to a staging directory, renamed into
place with a ``_SUCCESS`` marker; an existing output is replaced). ``--lambda`` defaults to
``dispatch.boost_lambda``.
"""

from __future__ import annotations

import argparse
import logging
import posixpath
import sys

from pyspark.errors import AnalysisException

from dualrec.dispatch import apply_boost
from dualrec.lake import Lake
from jobs.common import StageContext, add_common_args, context_from_args, exit_code, setup_logging
from schemas.validate import BadInputError

log = logging.getLogger(__name__)

STAGE = "boost"


def _input_uri(lake: Lake, day, value: str) -> str:
    """A lake table name (a directory under the lake root) or a Parquet path/URI."""
    if "/" not in value and "://" not in value and not value.endswith(".parquet"):
        rel = lake.partition_rel(value, day)
        lake.require_partition(value, day, stage=STAGE)
        return lake.uri(rel)
    return value


def boost(ctx: StageContext, input_ref: str, output: str, lam: float | None = None) -> dict:
    """Read the candidate table, add f_prime from match_sets dt=D, publish the output atomically."""
    lam = ctx.cfg.dispatch.boost_lambda if lam is None else lam
    lake, spark, day = ctx.lake, ctx.spark, ctx.day
    lake.require_partition("match_sets", day, stage=STAGE)
    try:
        cands = spark.read.parquet(_input_uri(lake, day, input_ref))
    except AnalysisException as e:  # a missing or unreadable path is bad input, not a crash
        raise BadInputError(f"boost input {input_ref!r}: cannot read Parquet ({str(e).splitlines()[0]})") from e
    missing = [c for c in ("user_id", "item_id", "f") if c not in cands.columns]
    if missing:
        raise BadInputError(f"boost input {input_ref!r}: missing column(s) {', '.join(missing)}")
    matches = lake.read_df(spark, "match_sets", [day], with_dt=False)
    out = apply_boost(cands, matches, lam).cache()
    stats = {"rows": out.count(), "boosted": out.filter("f_prime != f").count(), "lambda": lam}
    parent, leaf = posixpath.split(output.rstrip("/"))
    target = Lake(parent or ".")
    with target.publish_dir(leaf) as staging:
        out.write.mode("overwrite").parquet(target.uri(staging))
    out.unpersist()
    log.info("boost %s: %s -> %s", day, stats, output)
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jobs/boost.py", description="Apply the Eq. 14 boost f' = f + lambda*g.")
    add_common_args(p)
    p.add_argument("--input", required=True, help="Parquet path, or a lake table name (dt=DATE is read)")
    p.add_argument("--output", required=True, help="output Parquet directory (replaced atomically)")
    p.add_argument("--lambda", dest="lam", type=float, help="boost coefficient (default dispatch.boost_lambda)")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    # not a pipeline stage (it has no place in the stage registry): it checks its own input
    return exit_code(lambda: boost(context_from_args(args), args.input, args.output, args.lam))


if __name__ == "__main__":
    sys.exit(main())
