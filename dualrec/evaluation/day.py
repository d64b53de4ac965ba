"""``dualrec evaluate``: read one day of the lake, compute every SPEC section 6 figure.

Evaluation of day D needs D+1's logs (the dispatched users are expected to visit on D+1), so
on the last day of a lake the D+1 figures are ``null``, never omitted. Truth-based figures
(synthetic worlds only) read ``<lake>/_truth`` through :class:`dualrec.synth.truth.Truth`.

Sampling at scale (it changes what a figure means, so it is reported):

* truth figures and baselines use at most ``metrics.max_items`` of the day's items (uniform
  sample, kept in upload order); every assignment, ours included, is measured on that sample,
  with the caps (item <= L, user <= Q) enforced among those items.
* the optimum is a certified interval (:mod:`dualrec.evaluation.optimum`): a Lagrangian upper
  bound ``quality.optimum_upper_bound`` (valid for every price vector, so a bound at every
  scale) and a feasible min-cost-flow assignment ``quality.optimum_lower_bound``;
  ``quality.expected_feedback_optimum`` is the optimum when the two meet
  (``quality.optimum_exact``), else null, and ``quality.optimum_ratio`` = ours / upper bound
  (conservative: <= the true ratio <= ``quality.optimum_ratio_at_most`` = ours / lower bound).
  Beyond ``metrics.optimum_max_pairs`` scored pairs, the users with the smallest upper bound of
  w are not scored but priced at that bound (``quality.optimum_screened_users``); the bound
  stays a bound. ``retrieval.truth_recall`` uses each item's L best scored users.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from pyspark.sql import Window
from pyspark.sql import functions as F

from dualrec.channels.base import channel_names
from dualrec.config import EXPLICIT_FEEDBACKS, DualRecConfig, step_seed
from dualrec.evaluation import baselines as B
from dualrec.evaluation import optimum as O
from dualrec.evaluation.experiment import DayEdges, day_edges, experiment_section
from dualrec.evaluation.sizing import size_curve
from dualrec.evaluation.figures import (
    PAPER_CHANNEL_SHARE,
    PAPER_HIT_RATE,
    activity_figures,
    channel_shares,
    dispatch_figures,
    du_counts,
    du_histogram,
    feedback_figures,
    jf,
    logged_recall,
    truth_recall,
)
from dualrec.lake import Lake, parse_date
from dualrec.ranking import ranking_auc
from dualrec.registry import headline_outputs
from dualrec.spark import get_spark
from dualrec.stats import roc_auc
from dualrec.synth.truth import load_cached
from schemas.tables import RANK_TASKS, arrow_schema

log = logging.getLogger(__name__)

BASELINES = ("random", "popular", "arrival")


# ============================================================================ lake reading
def _read(lake: Lake, table: str, day: dt.date, columns: list[str] | None = None, filt=None) -> pa.Table | None:
    """A partition (optionally filtered, pushed down to Parquet) or None when it is absent."""
    if not lake.has_partition(table, day):
        return None
    if filt is None:
        return lake.read_table(table, day, columns)
    ds = pads.dataset(lake.fs_path(lake.partition_rel(table, day)), filesystem=lake.fs, format="parquet", schema=arrow_schema(table))
    return ds.to_table(columns=columns, filter=filt)


def _rows(lake: Lake, table: str, day: dt.date) -> int | None:
    """Row count from Parquet metadata (no data read)."""
    if not lake.has_partition(table, day):
        return None
    ds = pads.dataset(lake.fs_path(lake.partition_rel(table, day)), filesystem=lake.fs, format="parquet")
    return int(ds.count_rows())


def _ids(t: pa.Table | None, col: str = "user_id") -> np.ndarray | None:
    return None if t is None else t.column(col).to_numpy().astype(np.int64)


def _read_json(lake: Lake, rel: str) -> Any:
    if not lake.exists(rel):
        return None
    try:
        return json.loads(lake.read_text(rel))
    except (json.JSONDecodeError, OSError) as e:
        log.warning("cannot read %s: %s", lake.uri(rel), e)
        return None


def positives(inter: pa.Table | None) -> pd.DataFrame | None:
    """(item_id, user_id) of logged explicit positive feedback."""
    if inter is None:
        return None
    mask = None
    for f in EXPLICIT_FEEDBACKS:
        m = pc.greater(inter.column(f"is_{f}"), 0)
        mask = m if mask is None else pc.or_(mask, m)
    t = inter.filter(mask) if mask is not None else inter
    return t.select(["item_id", "user_id"]).to_pandas()


def _candidates_long(t: pa.Table) -> pd.DataFrame:
    """Explode the channels list into (item_id, user_id, channel) rows (vectorised)."""
    ch = t.column("channels").combine_chunks() if t.num_rows else pa.array([], pa.list_(pa.string()))
    parents = pc.list_parent_indices(ch).to_numpy(zero_copy_only=False)
    return pd.DataFrame(
        {
            "item_id": t.column("item_id").to_numpy()[parents] if t.num_rows else np.zeros(0, np.int64),
            "user_id": t.column("user_id").to_numpy()[parents] if t.num_rows else np.zeros(0, np.int64),
            "channel": pc.list_flatten(ch).to_numpy(zero_copy_only=False),
        }
    )


def truth_scorer(lake: Lake, eval_day: dt.date) -> B.ScoreFn | None:
    """expected_visible_feedback(u, i, D+1) from the synthetic truth, or None (not synthetic)."""
    if not lake.exists("_truth"):
        return None
    truth = load_cached(lake.root)
    return lambda u, i: np.asarray(truth.expected_visible_feedback(u, i, eval_day), dtype=np.float64)


GridFn = Callable[[np.ndarray, np.ndarray], "O.GridScorer"]
"""(item ids, user ids) -> a block scorer of that grid (for the optimum)."""


def truth_grid_fn(lake: Lake, eval_day: dt.date) -> GridFn | None:
    """Block scorer of the truth's expected visible feedback on D+1 (matrix form), or None."""
    if not lake.exists("_truth"):
        return None
    truth = load_cached(lake.root)
    return lambda items, users: O.FactorScorer(truth.visible_feedback_factors(users, items, eval_day))


def dense_grid_fn(score_fn: B.ScoreFn, chunk_pairs: int = 2_000_000) -> GridFn:
    """A block scorer from a pair scorer by scoring the whole grid (hand-made truths, small grids)."""
    return lambda items, users: O.DenseScorer(B.truth_grid(score_fn, items, users, chunk_pairs))


@dataclass
class DayInputs:
    """What evaluation reads of day D and D+1 (None = partition absent)."""

    day: dt.date
    items: pa.Table | None
    scores: pa.Table | None
    match_t: pa.Table | None
    match: pd.DataFrame
    visits_d: np.ndarray | None
    visits_n: np.ndarray | None
    inter_n: pa.Table | None

    @property
    def available(self) -> np.ndarray | None:
        if self.scores is None:
            return None
        return self.scores.column("user_id").to_numpy()[self.available_mask]

    @property
    def available_mask(self) -> np.ndarray:
        return self.scores.column("available").to_numpy(zero_copy_only=False).astype(bool)


def load_day(lake: Lake, day: dt.date) -> DayInputs:
    nxt = day + dt.timedelta(days=1)
    match_t = _read(lake, "match_sets", day, ["item_id", "user_id", "batch", "channels"])
    match = (
        match_t.select(["item_id", "user_id"]).to_pandas()
        if match_t is not None
        else pd.DataFrame({"item_id": pd.Series([], dtype=np.int64), "user_id": pd.Series([], dtype=np.int64)})
    )
    return DayInputs(
        day=day,
        items=_read(lake, "items", day, ["item_id", "upload_ts"]),
        scores=_read(lake, "activity_scores", day),
        match_t=match_t,
        match=match,
        visits_d=_ids(_read(lake, "visits", day, ["user_id"])),
        visits_n=_ids(_read(lake, "visits", nxt, ["user_id"])),
        inter_n=_read(lake, "interactions", nxt),
    )


def _upload_order(items: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(item ids in upload order, their upload hour UTC)."""
    us = items.column("upload_ts").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
    order = np.lexsort((items.column("item_id").to_numpy(), us))
    hour = ((us // 1_000_000) % 86_400) // 3_600
    return items.column("item_id").to_numpy().astype(np.int64)[order], hour[order].astype(np.int64)


# ============================================================================ sections
def activity_section(inp: DayInputs, cfg: DualRecConfig) -> dict[str, Any]:
    s = inp.scores
    out = activity_figures(
        _ids(s) if s is not None else np.zeros(0, np.int64),
        s.column("p_active").to_numpy() if s is not None else np.zeros(0),
        inp.available_mask if s is not None else np.zeros(0, bool),
        inp.visits_d,
        inp.visits_n,
        inp.match["user_id"].to_numpy() if inp.match_t is not None else None,
        cfg.metrics.calibration_bins,
    )
    out["available_users"] = None if s is None else int(inp.available.size)
    out["active_next_day"] = None if inp.visits_n is None else int(np.unique(inp.visits_n).size)
    out["paper_hit_rate"] = dict(PAPER_HIT_RATE)
    return out


def no_store_hist(lake: Lake, day: dt.date, L: int, spark=None, edges: DayEdges | None = None,
                  spark_rows: int = 5_000_000) -> list[int] | None:
    """|D_u| histogram if each item took its top-L ranked users with no store (paper Figure 9).

    ``edges``: the day's ``ranked`` pairs already in memory (:func:`day_edges`): counted here, with no
    read; otherwise a Spark window when the table is large and a session is given, else NumPy."""
    if edges is not None:
        return du_histogram(du_counts(edges.user_id[B.dispatch_without_store(edges.item_id, edges.user_id, edges.g, L)]))
    n = _rows(lake, "ranked", day)
    if n is None:
        return None
    if spark is not None and n > spark_rows:
        df = lake.read_df(spark, "ranked", [day], with_dt=False).select("item_id", "user_id", "g")
        w = Window.partitionBy("item_id").orderBy(F.col("g").desc(), F.col("user_id"))
        per_user = df.withColumn("r", F.row_number().over(w)).where(F.col("r") <= L).groupBy("user_id").count()
        rows = per_user.groupBy("count").count().collect()
        hist = np.zeros(max([r[0] for r in rows], default=0) + 1, dtype=np.int64)
        for r in rows:
            hist[r[0]] = r[1]
        return [int(v) for v in hist]
    t = lake.read_table("ranked", day, ["item_id", "user_id", "g"])
    items, users, g = (t.column(c).to_numpy() for c in ("item_id", "user_id", "g"))
    return du_histogram(du_counts(users[B.dispatch_without_store(items, users, g, L)]))


def dispatch_section(lake: Lake, inp: DayInputs, cfg: DualRecConfig, chans: list[str], spark=None,
                     no_store: bool = True, edges: DayEdges | None = None) -> dict[str, Any]:
    L, Q = cfg.dispatch.L, cfg.dispatch.Q
    ordered, hours = _upload_order(inp.items) if inp.items is not None else (None, None)
    out = dispatch_figures(inp.match, ordered, inp.available, L, Q, hours)
    if inp.match_t is None:
        for k in ("items_covered", "items_full", "max_du", "users_matched", "pairs", "coverage", "full_share",
                  "fair_served", "users_per_item_gini", "coverage_by_hour", "du_hist"):
            out[k] = None
    has = inp.match_t is not None and len(inp.match)
    share, share_any = channel_shares(inp.match_t.column("channels")) if inp.match_t is not None else ({}, {})
    out["channel_share"] = {c: share.get(c, 0.0 if has else None) for c in chans}
    out["channel_share_any"] = {c: share_any.get(c, 0.0 if has else None) for c in chans}
    out["paper_channel_share"] = dict(PAPER_CHANNEL_SHARE)
    out["batches"] = int(pc.count_distinct(inp.match_t.column("batch")).as_py()) if has else None
    out["policy"] = cfg.dispatch.policy
    out["du_hist_no_store"] = no_store_hist(lake, inp.day, L, spark, edges) if no_store else None
    out["max_du_no_store"] = len(out["du_hist_no_store"]) - 1 if out["du_hist_no_store"] else None
    return out


def _arrival_baseline(lake: Lake, day: dt.date, sample: np.ndarray, available: np.ndarray, L: int, Q: int,
                      edges: DayEdges | None = None) -> pd.DataFrame | None:
    """Algorithm 1 on our ranked scores over the sampled items (None without ``ranked``); ``edges``:
    the day's ranked pairs already in memory (the same rows in the same order as a filtered read)."""
    if edges is not None:
        sel = np.isin(edges.item_id, sample)
        batch, items, users, g = edges.batch[sel], edges.item_id[sel], edges.user_id[sel], edges.g[sel]
    else:
        r = _read(lake, "ranked", day, ["item_id", "user_id", "g", "batch"], pads.field("item_id").isin(pa.array(sample)))
        if r is None:
            return None
        batch, items, users, g = (r.column(c).to_numpy() for c in ("batch", "item_id", "user_id", "g"))
    rank = pd.Series(np.arange(sample.size), index=sample).reindex(items).to_numpy().astype(np.int64)
    mask = B.arrival_assign(batch, items, users, g, rank, available, L, Q)
    return pd.DataFrame({"item_id": items[mask], "user_id": users[mask]})


@dataclass(frozen=True)
class OptimumParams:
    """``metrics`` knobs of the optimum (:func:`dualrec.evaluation.optimum.certified_optimum`)."""

    max_pairs: int = 250_000_000
    top_m: int | None = None
    top_k: int | None = None
    rounds: int = 3
    tol: float = 1e-4
    cache_pairs: int = 64_000_000

    @classmethod
    def from_config(cls, mc) -> "OptimumParams":
        return cls(mc.optimum_max_pairs, mc.optimum_top_m, mc.optimum_top_k, mc.optimum_rounds, mc.optimum_tolerance,
                   mc.optimum_cache_pairs)


def _optimum(grid_fn: GridFn, sample: np.ndarray, users: np.ndarray, L: int, Q: int, op: OptimumParams) -> O.OptimumResult:
    """The certified optimum of the sampled items over a user set."""
    scorer = grid_fn(sample, users)
    upper = scorer.user_upper() if sample.size * users.size > op.max_pairs else None
    return O.certified_optimum(scorer, L, Q, max_pairs=op.max_pairs, top_m=op.top_m, top_k=op.top_k, rounds=op.rounds, tol=op.tol,
                               user_upper=upper, cache_pairs=op.cache_pairs)


def optimum_figures(res: O.OptimumResult, ours: float | None, suffix: str = "") -> dict[str, Any]:
    """quality.* figures of one optimum interval (``suffix`` "" for available users, "_all_users")."""
    p = "optimum" + suffix
    out = {
        f"expected_feedback_{p}": res.lower if res.exact else None,
        f"{p}_upper_bound": res.upper, f"{p}_lower_bound": res.lower, f"{p}_gap": jf(res.gap),
        f"{p}_exact": res.exact, f"{p}_pool_users": res.scored_users, f"{p}_screened_users": res.screened_users,
        f"{p}_screened_slack": res.slack, f"{p}_rounds": res.rounds, f"{p}_seconds": jf(res.seconds), f"{p}_cpu_seconds": jf(res.cpu_seconds),
    }
    if not suffix:
        out["optimum_ratio"] = jf(ours / res.upper) if ours is not None and res.upper > 0 else None
        out["optimum_ratio_at_most"] = jf(ours / res.lower) if ours is not None and res.lower > 0 else None
    return out


OPTIMUM_KEYS = ("expected_feedback_{p}", "{p}_upper_bound", "{p}_lower_bound", "{p}_gap", "{p}_exact", "{p}_pool_users",
                "{p}_screened_users", "{p}_screened_slack", "{p}_rounds", "{p}_seconds", "{p}_cpu_seconds")


def quality_figures(
    score_fn: B.ScoreFn | None,
    sample: np.ndarray,
    ours: pd.DataFrame,
    available: np.ndarray,
    popularity: np.ndarray,
    everyone: np.ndarray,
    positives_df: pd.DataFrame | None,
    candidates_long: pd.DataFrame | None,
    arrival: pd.DataFrame | None,
    chans: list[str],
    L: int,
    Q: int,
    rng: np.random.Generator,
    optimum: OptimumParams = OptimumParams(),
    chunk_pairs: int = 2_000_000,
    grid_fn: GridFn | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ours vs random / popular / arrival and the optimum on the same items under the same caps.

    ``sample``: item ids in upload order; ``ours``/``arrival``: (item_id, user_id) assignments;
    ``available``/``popularity``: available users and their p_active; ``everyone``: every known
    user (for ``optimum_all_users``). ``score_fn`` None (no truth) leaves the feedback figures
    null; ``positives_df`` None (no D+1 logs) leaves the recall figures null. Returns
    (quality, retrieval).
    """
    sample = np.asarray(sample, dtype=np.int64)
    available = np.asarray(available, dtype=np.int64)
    q: dict[str, Any] = {}
    for n in ["", *[f"_{b}" for b in BASELINES]]:
        q.update({f"expected_feedback{n}": None, f"feedback_per_pair{n}": None, f"items_reaching_feedback{n}": None,
                  f"recall_at_l{n}": None})
    for p in ("optimum", "optimum_all_users"):
        q.update({k.format(p=p): None for k in OPTIMUM_KEYS})
    q.update({"optimum_ratio": None, "optimum_ratio_at_most": None, "items_reaching_feedback_optimum": None,
              "recall_at_l_macro": None, "truth_available": score_fn is not None})
    q["sampled_items"] = int(sample.size)
    retrieval: dict[str, Any] = {"truth_recall": {c: None for c in [*chans, "merged"]}}
    ours = ours[ours["item_id"].isin(sample)][["item_id", "user_id"]]
    q["pairs"] = int(len(ours))
    assigned: dict[str, pd.DataFrame] = {"": ours}
    if sample.size and available.size:
        it, us = B.random_assign(rng, sample.size, available.size, L, Q)
        assigned["_random"] = pd.DataFrame({"item_id": sample[it], "user_id": available[us]})
        by_pop = available[np.lexsort((available, -np.asarray(popularity, dtype=np.float64)))]
        it, us = B.popular_assign(sample.size, available.size, L, Q)
        assigned["_popular"] = pd.DataFrame({"item_id": sample[it], "user_id": by_pop[us]})
        if arrival is not None:
            assigned["_arrival"] = arrival[arrival["item_id"].isin(sample)][["item_id", "user_id"]]
    for n, df in assigned.items():
        if n:
            q[f"pairs{n}"] = int(len(df))
    if score_fn is not None and sample.size and available.size:
        for n, df in assigned.items():
            u, i = df["user_id"].to_numpy(np.int64), df["item_id"].to_numpy(np.int64)
            for k, v in feedback_figures(i, sample, B.score_pairs(score_fn, u, i, chunk_pairs)).items():
                q[f"{k}{n}"] = v
        gfn = grid_fn or dense_grid_fn(score_fn, chunk_pairs)
        opt = _optimum(gfn, sample, available, L, Q, optimum)
        q.update(optimum_figures(opt, q["expected_feedback"]))
        per_item = np.bincount(opt.items, weights=score_fn(available[opt.users], sample[opt.items]) if opt.items.size
                               else None, minlength=sample.size)
        q["items_reaching_feedback_optimum"] = jf((per_item >= 1.0).mean())
        kb = opt.best_users.shape[1]
        top = pd.DataFrame({"item_id": np.repeat(sample, kb), "user_id": available[opt.best_users.ravel()]})
        if candidates_long is not None:
            retrieval["truth_recall"] = truth_recall(top, candidates_long, chans, sample)
        retrieval["truth_best_users_per_item"] = int(kb)
        q["truth_recall_dispatched"] = truth_recall(top, ours.assign(channel="dispatched"), [], sample)["merged"]
        if everyone is not None and len(everyone):
            everyone = np.asarray(everyone, dtype=np.int64)
            q.update(optimum_figures(_optimum(gfn, sample, everyone, L, Q, optimum), None, "_all_users"))
    if positives_df is not None:
        r = logged_recall(ours, positives_df, sample)
        q["recall_at_l"], q["recall_at_l_macro"], q["recall_items_with_positives"] = r["micro"], r["macro"], r["items"]
        for n, df in assigned.items():
            if n:
                q[f"recall_at_l{n}"] = logged_recall(df, positives_df, sample)["micro"]
    return q, retrieval


def horizon_interactions(lake: Lake, inp: DayInputs, horizon_days: int) -> pa.Table | None:
    """Interactions of D+1..D+H (the days of the window present in the lake; None without D+1).

    Sparse real logs have too few next-day positives to rank methods, so the logged recall may
    count a longer horizon; every other figure stays on D+1.
    """
    if horizon_days < 1:
        raise ValueError(f"horizon_days must be >= 1, got {horizon_days}")
    if inp.inter_n is None:
        return None
    later = [_read(lake, "interactions", inp.day + dt.timedelta(days=1 + k)) for k in range(1, horizon_days)]
    return pa.concat_tables([inp.inter_n, *[x for x in later if x is not None]])


def quality_section(lake: Lake, inp: DayInputs, cfg: DualRecConfig, chans: list[str], rng,
                    horizon_days: int = 1, edges: DayEdges | None = None) -> tuple[dict, dict]:
    """Read what :func:`quality_figures` needs (item sample, ranked, candidates, truth, D+1..D+H positives);
    ``edges``: the day's ranked pairs when already read (:func:`day_edges`)."""
    L, Q, mc = cfg.dispatch.L, cfg.dispatch.Q, cfg.metrics
    sample = np.zeros(0, np.int64)
    if inp.items is not None and inp.items.num_rows:
        sample, _ = _upload_order(inp.items)
        if sample.size > mc.max_items:
            sample = sample[np.sort(rng.choice(sample.size, size=mc.max_items, replace=False))]
    available = inp.available if inp.available is not None else np.zeros(0, np.int64)
    popularity = inp.scores.column("p_active").to_numpy()[inp.available_mask] if inp.scores is not None else np.zeros(0)
    arrival = _arrival_baseline(lake, inp.day, sample, available, L, Q, edges) if sample.size and available.size else None
    cand = None
    if lake.has_partition("candidates", inp.day) and sample.size:
        ct = _read(lake, "candidates", inp.day, ["item_id", "user_id", "channels"], pads.field("item_id").isin(pa.array(sample)))
        cand = _candidates_long(ct)
        chans = list(dict.fromkeys([*chans, *pd.unique(cand["channel"])]))
    score_fn = truth_scorer(lake, inp.day + dt.timedelta(days=1)) if inp.scores is not None else None
    grid_fn = truth_grid_fn(lake, inp.day + dt.timedelta(days=1)) if score_fn is not None else None
    q, retrieval = quality_figures(
        score_fn, sample, inp.match, available, popularity, _ids(inp.scores) if inp.scores is not None else None,
        positives(horizon_interactions(lake, inp, horizon_days)), cand, arrival, chans, L, Q, rng,
        OptimumParams.from_config(mc), mc.truth_chunk_pairs, grid_fn,
    )
    q["recall_horizon_days"] = horizon_days
    if cand is not None and sample.size:
        per = cand.drop_duplicates(["item_id", "user_id"]).groupby("item_id").size().reindex(sample, fill_value=0)
        retrieval["candidates_per_item"] = jf(per.mean())
    return q, retrieval


def arm_sections(lake: Lake, inp: DayInputs, cfg: DualRecConfig, chans: list[str], rng, horizon_days: int = 1) -> dict:
    """The section-6 figures of one experiment arm (``inp`` cut to its items and users; shared stages excluded)."""
    quality, retrieval = quality_section(lake, inp, cfg, chans, rng, horizon_days)
    return {"activity": activity_section(inp, cfg), "dispatch": dispatch_section(lake, inp, cfg, chans, no_store=False),
            "quality": quality, "retrieval": retrieval}


def ranking_section(spark_get: Callable[[], Any], lake: Lake, day: dt.date, cfg: DualRecConfig, inter: pa.Table | None) -> dict[str, Any]:
    """ranking.auc by task (the ranker's own held-out evaluation), plus AUC on D+1 exposures."""
    out: dict[str, Any] = {"auc": {t: None for t in RANK_TASKS}, "auc_logged": {t: None for t in RANK_TASKS}}
    if lake.has_partition("ranked", day) and not _rows(lake, "ranked", day):
        # a day without uploads ranked nothing and kept its model: no Spark session (a JVM start and a
        # feature build) for a figure about a ranking that did not happen; null, as SPEC 6 says
        out["auc_skipped"] = "nothing ranked on the day (no uploads)"
    elif lake.has_partition("interactions", day):
        out["auc"].update({str(k): jf(v) for k, v in (ranking_auc(spark_get(), lake, day, cfg) or {}).items()})
    if inter is not None and lake.has_partition("ranked", day) and inter.num_rows:
        items = pc.unique(inter.column("item_id"))
        cols = ["item_id", "user_id", *[f"s_{t}" for t in RANK_TASKS]]
        r = _read(lake, "ranked", day, cols, pads.field("item_id").isin(items))
        if r is not None and r.num_rows:
            j = r.join(inter.select(["item_id", "user_id", *[f"is_{t}" for t in RANK_TASKS]]), ["item_id", "user_id"], join_type="inner")
            for t in RANK_TASKS:
                out["auc_logged"][t] = roc_auc(j.column(f"is_{t}").to_numpy() > 0, j.column(f"s_{t}").to_numpy())
            out["logged_pairs"] = int(j.num_rows)
    return out


def index_recall(lake: Lake, day: dt.date) -> dict[str, Any]:
    """ANN-vs-exact recall from ``_models/user_index/dt=D/manifest.json`` (``recall_at_k``, ``k``, ``index_type``)."""
    rel = Lake.model_rel("user_index", day)
    m = _read_json(lake, f"{rel}/manifest.json") if lake.is_complete(rel) else None
    out: dict[str, Any] = {"recall_at_k": None, "k": None, "index_type": None}
    if not isinstance(m, dict):
        return out
    sub = m.get("metrics") if isinstance(m.get("metrics"), dict) else {}
    out["recall_at_k"] = jf(m.get("recall_at_k", sub.get("recall_at_k", m.get("recall"))))
    k = m.get("k", m.get("recall_k", sub.get("k", sub.get("recall_k"))))
    out["k"] = int(k) if isinstance(k, (int, float)) and not isinstance(k, bool) else None
    kind = m.get("index_type", m.get("kind", m.get("type")))
    out["index_type"] = str(kind) if kind is not None else None
    return out


def cost_figures(lake: Lake, day: dt.date) -> dict[str, Any]:
    """Stage wall times (``_runs/dt=D/stages.json`` by the orchestrator) and rows per second."""
    st = _read_json(lake, f"_runs/dt={day.isoformat()}/stages.json")
    seconds = {str(k): jf(v) for k, v in st.items()} if isinstance(st, dict) else {}
    rows = {t: _rows(lake, t, day) for t in headline_outputs().values()}
    rps = {}
    for stage, table in headline_outputs().items():
        s, n = seconds.get(stage), rows.get(table)
        if s and n is not None:
            rps[stage] = jf(n / s)
    return {"stage_seconds": seconds, "total_seconds": jf(sum(v for v in seconds.values() if v)) if seconds else None,
            "rows": rows, "rows_per_second": rps}


# ============================================================================ evaluate
def evaluate(lake_root_or_Lake: str | Lake, day: dt.date | str, cfg: DualRecConfig | None = None, spark=None,
             horizon_days: int = 1) -> dict:
    """All SPEC section 6 figures for day D as one nested JSON-ready dict (null where unknown).

    ``horizon_days`` H: the logged recall (``quality.recall_at_l*``) counts positives over D+1..D+H.

    Reads only D's outputs and D+1's logs (plus the synthetic truth when present); writes
    nothing. A Spark session is created only if the ranking AUC needs one and none was passed.
    """
    lake = lake_root_or_Lake if isinstance(lake_root_or_Lake, Lake) else Lake(str(lake_root_or_Lake))
    day = parse_date(day)
    cfg = cfg or DualRecConfig()
    nxt = day + dt.timedelta(days=1)
    rng = np.random.default_rng(step_seed(cfg.seed, day, "metrics.baselines"))
    box: list[Any] = [spark]

    def spark_get():
        if box[0] is None:
            box[0] = get_spark(cfg.spark)
        return box[0]

    inputs = {f"{t}@{'D' if d == day else 'D+1'}": lake.has_partition(t, d) for t, d in
              [("items", day), ("activity_scores", day), ("candidates", day), ("ranked", day), ("match_sets", day),
               ("user_match_sets", day), ("available_users", day), ("visits", day), ("visits", nxt), ("interactions", nxt)]}
    inp = load_day(lake, day)
    share, _ = channel_shares(inp.match_t.column("channels")) if inp.match_t is not None else ({}, {})
    chans = list(dict.fromkeys([*channel_names(cfg), *share]))  # configured channels, then any in the data
    # the day's ranked pairs, read once for the arrival baseline, the size curve, the no-store histogram and
    # the experiment's true figures
    edges = day_edges(lake, day) if inp.items is not None and inp.items.num_rows else None
    quality, retrieval = quality_section(lake, inp, cfg, chans, rng, horizon_days, edges)
    act = activity_section(inp, cfg)
    act["size_curve"] = size_curve(lake, day, cfg, inp.scores, None if inp.items is None else inp.items.num_rows,
                                   inp.visits_n, truth_scorer(lake, nxt) if quality["truth_available"] else None, edges)
    disp = dispatch_section(lake, inp, cfg, chans, spark, edges=edges)
    experiment = experiment_section(lake, inp, cfg, lambda i, c, r: arm_sections(lake, i, c, chans, r, horizon_days),
                                    quality["truth_available"] and truth_scorer(lake, nxt) or None, edges)
    del edges  # hundreds of MB at scale: not held through the ranking section's Spark work
    result = {
        "date": day.isoformat(),
        "eval_day": nxt.isoformat(),
        "inputs": inputs,
        "activity": act,
        "dispatch": disp,
        "quality": quality,
        "index": index_recall(lake, day),
        "retrieval": retrieval,
        "ranking": ranking_section(spark_get, lake, day, cfg, inp.inter_n),
        "cost": cost_figures(lake, day),
        "experiment": experiment,
    }
    return json.loads(json.dumps(result, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return jf(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (dt.date, dt.datetime)):
        return o.isoformat()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ============================================================================ metrics table rows
REQUIRED_PATHS: tuple[str, ...] = (
    "activity.auc", "activity.auc_baseline_last_day", "activity.hit_rate", "activity.hit_rate_all_users",
    "activity.size_curve",
    "dispatch.items", "dispatch.items_covered", "dispatch.items_full", "dispatch.max_du", "dispatch.q",
    "dispatch.l", "dispatch.users_matched", "dispatch.channel_share",
    "dispatch.coverage", "dispatch.fair_share", "dispatch.fair_served", "dispatch.users_per_item_gini",
    "quality.feedback_per_pair", "quality.feedback_per_pair_random", "quality.feedback_per_pair_popular",
    "quality.expected_feedback", "quality.expected_feedback_random", "quality.expected_feedback_popular",
    "quality.expected_feedback_arrival", "quality.expected_feedback_optimum",
    "quality.expected_feedback_optimum_all_users", "quality.optimum_pool_users", "quality.optimum_ratio",
    "quality.optimum_upper_bound", "quality.optimum_lower_bound", "quality.optimum_gap", "quality.optimum_exact",
    "quality.optimum_all_users_upper_bound",
    "quality.items_reaching_feedback",
    "quality.recall_at_l", "quality.recall_at_l_random", "quality.recall_at_l_popular",
    "index.recall_at_k", "retrieval.truth_recall", "ranking.auc", "cost.stage_seconds",
)
"""The SPEC section 6 paths ``evaluate --json`` must always contain."""


def flatten(metrics: dict, prefix: str = "") -> list[dict[str, Any]]:
    """Nested metrics -> rows (metric, value, detail) for the ``metrics`` table.

    Numbers go to ``value``; lists, strings and empty objects go to ``detail`` (JSON), so
    :func:`unflatten` can rebuild the nested object.
    """
    rows: list[dict[str, Any]] = []
    for k, v in metrics.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            rows.extend(flatten(v, path + "."))
        elif isinstance(v, bool):
            rows.append({"metric": path, "value": float(v), "detail": "bool"})
        elif isinstance(v, (int, float)) or v is None:
            rows.append({"metric": path, "value": jf(v), "detail": None})
        else:
            rows.append({"metric": path, "value": None, "detail": json.dumps(v)})
    return rows


def unflatten(rows: list[dict[str, Any]]) -> dict:
    """Inverse of :func:`flatten` (ints come back as floats)."""
    out: dict = {}
    for r in rows:
        node = out
        *parents, leaf = str(r["metric"]).split(".")
        for p in parents:
            node = node.setdefault(p, {})
        detail = r.get("detail")
        if detail == "bool":
            node[leaf] = bool(r["value"])
        elif detail is not None:
            node[leaf] = json.loads(detail)
        else:
            v = r.get("value")
            node[leaf] = None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
    return out


def metrics_table(metrics: dict) -> pa.Table:
    """The ``metrics`` partition of a day."""
    return pa.Table.from_pylist(flatten(metrics), schema=arrow_schema("metrics"))


def get_path(metrics: dict, path: str) -> Any:
    """Value at a dotted path; KeyError names the missing part."""
    node: Any = metrics
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(path)
        node = node[part]
    return node
