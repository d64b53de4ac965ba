"""Evaluation of a co-diverted experiment day (issue 19, SPEC section 8).

* ``experiment.arms``: by arm, the section-6 figures of that arm alone: the day's inputs are
  cut to the arm's creators' items and the arm's users and passed through the same section
  functions as the whole day (``arm_figures``, supplied by :mod:`dualrec.evaluation.day`).
* ``experiment.difference``: by creator-side figure, treatment - control with a bootstrap
  interval. Creators are the unit (what was randomised): each figure is a ratio of per-creator
  sums (covered items / items, expected feedback / creators ...), the creators of each arm are
  resampled with replacement, independently per arm, with a fixed seed.
* with synthetic truth, ``true``: the same figure when each arm's strategy is run on the *whole*
  population (all items, all available users, the day's ranked pairs, through the NumPy
  :func:`dualrec.dispatch.dispatch_day_arrays`), so an estimate can be checked against it, and
  ``covers``: whether the interval holds it.
* ``experiment.cross_arm_pairs``: dispatched pairs whose user and item creator are in different
  arms (or unassigned); it must be 0.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from dualrec.config import DualRecConfig, step_seed
from dualrec.dispatch import PolicyParams, dispatch_day_arrays, fair_share, paced_curve
from dualrec.evaluation.figures import jf
from dualrec.experiment import BUCKETS, arm_configs, assign, experiment_of, read_manifest
from dualrec.lake import Lake

log = logging.getLogger(__name__)

ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

RATIOS: dict[str, tuple[str, str]] = {
    "dispatch.coverage": ("covered", "items"),
    "dispatch.fair_served": ("fair_served", "items"),
    "dispatch.users_per_item": ("pairs", "items"),
    "quality.expected_feedback_per_creator": ("feedback", "creators"),
    "quality.expected_feedback_per_item": ("feedback", "items"),
    "quality.feedback_per_pair": ("feedback", "pairs"),
    "quality.items_reaching_feedback": ("reaching", "items"),
}
"""Creator-side figures of the difference: numerator / denominator of per-creator sums."""
TRUTH_PARTS = ("feedback", "reaching")


# ============================================================================ pure functions
def item_values(item_ids: np.ndarray, match_items: np.ndarray, match_users: np.ndarray, m: int,
                score_fn: ScoreFn | None = None) -> dict[str, np.ndarray]:
    """Per item (aligned with ``item_ids``): 1, covered, >= m/2 users, pairs, and with truth the
    expected visible feedback of its dispatched users and whether it reaches 1."""
    item_ids = np.asarray(item_ids, dtype=np.int64)
    mi, mu = np.asarray(match_items, dtype=np.int64), np.asarray(match_users, dtype=np.int64)
    pos = pd.Index(item_ids).get_indexer(mi)
    keep = pos >= 0
    n = np.bincount(pos[keep], minlength=item_ids.size).astype(np.float64)
    out = {"items": np.ones(item_ids.size), "covered": (n > 0).astype(np.float64),
           "fair_served": (n >= m / 2).astype(np.float64), "pairs": n}
    if score_fn is not None:
        v = np.asarray(score_fn(mu[keep], mi[keep]), dtype=np.float64) if keep.any() else np.zeros(0)
        fb = np.bincount(pos[keep], weights=v, minlength=item_ids.size)
        out["feedback"], out["reaching"] = fb, (fb >= 1.0).astype(np.float64)
    return out


def creator_sums(creator_of_item: np.ndarray, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per creator (sorted creator ids): the sum of each per-item value, and ``creators`` = 1."""
    creators, idx = np.unique(np.asarray(creator_of_item, dtype=np.int64), return_inverse=True)
    out = {k: np.bincount(idx, weights=v, minlength=creators.size) for k, v in values.items()}
    out["creators"] = np.ones(creators.size)
    return out


def figure_values(sums: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Each :data:`RATIOS` figure from per-creator sums (None when its parts are missing or empty)."""
    out: dict[str, float | None] = {}
    for fig, (num, den) in RATIOS.items():
        if num not in sums or den not in sums or sums[den].sum() <= 0:
            out[fig] = None
        else:
            out[fig] = jf(sums[num].sum() / sums[den].sum())
    return out


def _boot_ratios(rng: np.random.Generator, sums: dict[str, np.ndarray], figs: list[str], B: int,
                 chunk: int = 256) -> dict[str, np.ndarray]:
    """B bootstrap replicates of each ratio figure, creators resampled with replacement."""
    n = sums["creators"].size
    out = {f: np.empty(B) for f in figs}
    for s in range(0, B, chunk):
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, B - s)).astype(np.float64)
        for f in figs:
            num, den = RATIOS[f]
            with np.errstate(invalid="ignore", divide="ignore"):
                out[f][s : s + w.shape[0]] = (w @ sums[num]) / (w @ sums[den])
    return out


def bootstrap_difference(treat: dict[str, np.ndarray], control: dict[str, np.ndarray], B: int = 2000,
                         seed: int = 0, confidence: float = 0.95) -> dict[str, dict[str, float | None]]:
    """Treatment - control of each figure: the estimate and a percentile bootstrap interval over creators."""
    est_t, est_c = figure_values(treat), figure_values(control)
    figs = [f for f in RATIOS if est_t[f] is not None and est_c[f] is not None
            and treat["creators"].size > 1 and control["creators"].size > 1]
    rng = np.random.default_rng(seed)
    bt, bc = _boot_ratios(rng, treat, figs, B), _boot_ratios(rng, control, figs, B)
    a = (1 - confidence) / 2
    out: dict[str, dict[str, float | None]] = {}
    for f in RATIOS:
        if f not in figs:
            out[f] = {"estimate": None, "ci_low": None, "ci_high": None}
            continue
        d = bt[f] - bc[f]
        d = d[np.isfinite(d)]
        out[f] = {"estimate": jf(est_t[f] - est_c[f]), "ci_low": jf(np.quantile(d, a)), "ci_high": jf(np.quantile(d, 1 - a)),
                  "treatment": est_t[f], "control": est_c[f]}
    return out


@dataclasses.dataclass
class DayEdges:
    """The whole day's ranked pairs in dispatch form (for the true difference)."""

    batch: np.ndarray
    item_id: np.ndarray
    user_id: np.ndarray
    g: np.ndarray
    item_rank: np.ndarray
    p_active: np.ndarray
    items: np.ndarray  # every upload of the day, in upload order
    creators: np.ndarray  # creator of each of ``items``
    available: np.ndarray


def population_sums(edges: DayEdges, cfg: DualRecConfig, score_fn: ScoreFn | None,
                    curve: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-creator sums when ``cfg``'s dispatch strategy serves the whole population."""
    d = cfg.dispatch
    mask, _ = dispatch_day_arrays(
        edges.batch, edges.item_id, edges.user_id, edges.g, edges.item_rank, edges.available, d.L, d.Q, d.policy,
        batches_per_day=d.batches_per_day, curve=curve, n_items=edges.items.size, params=PolicyParams.from_config(d),
        p_active=edges.p_active,
    )
    m = fair_share(edges.items.size, np.unique(edges.available).size, d.L, d.Q)
    vals = item_values(edges.items, edges.item_id[mask], edges.user_id[mask], m, score_fn)
    return creator_sums(edges.creators, vals)


def arm_edges(edges: DayEdges, exp: Any, arm: str) -> DayEdges:
    """The cut of the day one arm dispatches: its creators' items x its users (as the stage cuts ``ranked``)."""
    names = sorted(exp.arms)
    k = names.index(arm)
    item_in = assign(edges.creators, "creator", exp) == k
    user_in = assign(edges.available, "user", exp) == k
    mine_items, mine_users = edges.items[item_in], edges.available[user_in]
    keep = np.isin(edges.item_id, mine_items) & np.isin(edges.user_id, mine_users)
    rank = pd.Index(mine_items).get_indexer(edges.item_id[keep])
    return DayEdges(edges.batch[keep], edges.item_id[keep], edges.user_id[keep], edges.g[keep], rank,
                    edges.p_active[keep], mine_items, edges.creators[item_in], mine_users)


# ============================================================================ lake reading
def day_edges(lake: Lake, day: dt.date) -> DayEdges | None:
    """``ranked`` x available users of day D with upload ranks (None without ranked/items/activity_scores)."""
    if not all(lake.has_partition(t, day) for t in ("ranked", "items", "activity_scores")):
        return None
    items = lake.read_table("items", day, ["item_id", "creator_id", "upload_ts"])
    us = pc.cast(items.column("upload_ts").cast(pa.timestamp("us", tz="UTC")), pa.int64()).to_numpy()
    ids = items.column("item_id").to_numpy().astype(np.int64)
    order = np.lexsort((ids, us))
    ids, creators = ids[order], items.column("creator_id").to_numpy().astype(np.int64)[order]
    s = lake.read_table("activity_scores", day)
    av = s.column("available").to_numpy(zero_copy_only=False).astype(bool)
    users, p = s.column("user_id").to_numpy().astype(np.int64), s.column("p_active").to_numpy()
    r = lake.read_table("ranked", day, ["batch", "item_id", "user_id", "g"])
    it, u = r.column("item_id").to_numpy().astype(np.int64), r.column("user_id").to_numpy().astype(np.int64)
    rank = pd.Index(ids).get_indexer(it)
    p_of = pd.Series(p, index=users)
    return DayEdges(r.column("batch").to_numpy().astype(np.int64), it, u, r.column("g").to_numpy(), rank,
                    p_of.reindex(u).fillna(0.0).to_numpy(), ids, creators, users[av])


# ============================================================================ the section
def _isin(t: pa.Table, col: str, ids: np.ndarray) -> pa.Table:
    return t.filter(pc.is_in(t.column(col), value_set=pa.array(ids, pa.int64())))


def experiment_section(lake: Lake, inp: Any, cfg: DualRecConfig,
                       arm_figures: Callable[[Any, DualRecConfig, np.random.Generator], dict[str, Any]],
                       score_fn: ScoreFn | None, edges: DayEdges | None = None) -> dict[str, Any] | None:
    """The ``experiment`` object of ``evaluate`` for a day dispatched as an experiment; None for a plain day.

    ``inp``: the day's :class:`dualrec.evaluation.day.DayInputs`; ``arm_figures(inp_arm, cfg_arm,
    rng)``: the section-6 figures of one arm from its cut of the inputs; ``score_fn``: truth (or None).
    The arms and their overrides come from the day's manifest (what was dispatched), applied over ``cfg``.
    """
    day = inp.day
    manifest = read_manifest(lake, day)
    if manifest is None:
        return None
    exp = experiment_of(manifest)
    confs = arm_configs(cfg.model_copy(update={"experiment": exp}))
    b = lake.read_table(BUCKETS, day).to_pandas()
    users_of = {a: g.id.to_numpy(np.int64) for a, g in b[b.kind == "user"].groupby("arm")}
    creators_of = {a: g.id.to_numpy(np.int64) for a, g in b[b.kind == "creator"].groupby("arm")}
    user_arm = pd.Series(b[b.kind == "user"].arm.to_numpy(), index=b[b.kind == "user"].id.to_numpy())
    creator_arm = pd.Series(b[b.kind == "creator"].arm.to_numpy(), index=b[b.kind == "creator"].id.to_numpy())
    items = lake.read_table("items", day, ["item_id", "creator_id"]) if lake.has_partition("items", day) else None
    item_creator = (pd.Series(items.column("creator_id").to_numpy(), index=items.column("item_id").to_numpy())
                    if items is not None else pd.Series(dtype=np.int64))
    item_arm = creator_arm.reindex(item_creator.to_numpy())
    item_arm.index = item_creator.index
    ua = user_arm.reindex(inp.match["user_id"].to_numpy()).to_numpy()
    ia = item_arm.reindex(inp.match["item_id"].to_numpy()).to_numpy()
    cross = int((pd.isna(ua) | pd.isna(ia) | (ua != ia)).sum())

    arms: dict[str, Any] = {}
    sums: dict[str, dict[str, np.ndarray]] = {}
    for name in sorted(manifest["arms"]):
        c = confs[name]
        users = users_of.get(name, np.zeros(0, np.int64))
        arm_items = item_creator.index.to_numpy()[item_arm.to_numpy() == name] if items is not None else np.zeros(0, np.int64)
        sub = dataclasses.replace(
            inp,
            items=_isin(inp.items, "item_id", arm_items) if inp.items is not None else None,
            scores=_isin(inp.scores, "user_id", users) if inp.scores is not None else None,
            match_t=_isin(inp.match_t, "item_id", arm_items) if inp.match_t is not None else None,
            match=inp.match[inp.match["item_id"].isin(arm_items)],
        )
        rng = np.random.default_rng(step_seed(cfg.seed, day, f"metrics.experiment.{name}"))
        figs = arm_figures(sub, c, rng)
        avail = sub.available if sub.scores is not None else np.zeros(0, np.int64)
        m = fair_share(arm_items.size, np.unique(avail).size, c.dispatch.L, c.dispatch.Q)
        ordered = item_creator.reindex(arm_items)
        vals = item_values(arm_items, sub.match["item_id"].to_numpy(), sub.match["user_id"].to_numpy(), m, score_fn)
        sums[name] = creator_sums(ordered.to_numpy(), vals)
        arms[name] = {
            "share": manifest["arms"][name]["share"], "overrides": manifest["arms"][name]["overrides"],
            "creators": int(creators_of.get(name, np.zeros(0)).size), "users": int(users.size),
            "creator_figures": figure_values(sums[name]), **figs,
        }
    control = exp.control
    edges = (edges if edges is not None else day_edges(lake, day)) if score_fn is not None else None
    true = {}
    if edges is not None:
        for name in arms:
            true[name] = figure_values(population_sums(edges, confs[name], score_fn, paced_curve(lake, day, confs[name].dispatch)))
    differences = {}
    for name in arms:
        if name == control:
            continue
        d = bootstrap_difference(sums[name], sums[control], exp.bootstrap, step_seed(cfg.seed, day, "metrics.experiment.bootstrap"),
                                 exp.confidence)
        for f, v in d.items():
            t = (None if name not in true or true[name][f] is None or true[control][f] is None
                 else jf(true[name][f] - true[control][f]))
            v["true"] = t
            v["covers"] = None if t is None or v["ci_low"] is None else bool(v["ci_low"] <= t <= v["ci_high"])
        differences[name] = d
    treatment = "treatment" if "treatment" in differences else (next(iter(differences)) if len(differences) == 1 else None)
    return {
        "control": control, "treatment": treatment, "salt": exp.salt, "unit": "creator",
        "confidence": exp.confidence, "bootstrap": exp.bootstrap,
        "arms": arms,
        "difference": differences.get(treatment) if treatment else None,
        "differences": differences,
        "true_figures": true or None,
        "cross_arm_pairs": cross,
    }
