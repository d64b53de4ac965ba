"""Dispatch benchmarks: the policy table on a real day, assignment speed, the stage, Figure 9.

    python benchmarks/dispatch.py policies --lake DIR --date D      # policy x creator figures (needs a run day)
    python benchmarks/dispatch.py assign --preset medium            # NumPy kernels, whole day
    python benchmarks/dispatch.py spark --items 1000                # the Spark stage, every policy
    python benchmarks/dispatch.py figure9 --lake /tmp/small --date 2026-01-10   # |D_u| with/without store

``policies`` reads the day's ``ranked``, ``activity_scores`` and ``items`` (and earlier days'
``items`` for the paced forecast), runs every policy with the product's NumPy code (the same
kernels the Spark stage runs) and scores each with the synthetic truth: coverage, fair_served,
items_reaching_feedback, expected_feedback, optimum_ratio (against the upper bound of the
certified optimum over every (item, available user) pair, ``dualrec.evaluation.optimum``: a
ratio that is never above the true one) and the hit rate on D+1's visits.

``assign`` and ``spark`` use SYNTHETIC candidate edges with realistic skew (not a ranked table):
user popularity is lognormal (heavy users sit in many candidate lists, as retrieval favours
them), g = item quality x user factor x pair noise (all lognormal), ~1000 candidates per item,
uploads spread over ``batches_per_day`` micro-batches. ``figure9`` needs a synthetic world
(``dualrec synth``); if the lake has no ``ranked`` table for the date it builds one from the
hidden truth (candidates = noisy truth top among available users, g = beta-weighted truth
feedback / theta), and says so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import pyarrow as pa

from dualrec.dispatch import POLICIES, PolicyParams, assign_arrays, dispatch_day_arrays
from dualrec.evaluation.baselines import dispatch_without_store
from schemas.feedback import RANK_TASKS, VISIBLE_FEEDBACKS

SIZES = {  # items/day, registered users, available users, mean candidates per item
    "small": (1_000, 20_000, 12_000, 1000),
    "medium": (10_000, 200_000, 120_000, 1000),
    "large": (50_000, 1_000_000, 600_000, 1000),
}


def synthetic_edges(n_items: int, n_avail: int, cands: int, batches: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Candidate edges with popularity skew; returns columns sorted by item (upload order)."""
    rng = np.random.default_rng(seed)
    pop = rng.lognormal(0.0, 1.2, n_avail)
    cdf = np.cumsum(pop) / pop.sum()
    k = np.clip(rng.normal(cands, cands * 0.3, n_items), cands * 0.2, cands * 2).astype(np.int64)
    item = np.repeat(np.arange(n_items, dtype=np.int64), k)
    user = np.searchsorted(cdf, rng.random(len(item))).astype(np.int64)
    key = np.unique(item * n_avail + user)  # drop duplicate (item, user) draws
    item, user = key // n_avail, key % n_avail
    q_item = rng.lognormal(0.0, 0.5, n_items)
    f_user = rng.lognormal(0.0, 0.5, n_avail)
    g = (q_item[item] * f_user[user] * rng.lognormal(0.0, 0.7, len(item))).astype(np.float32)
    batch = (item * batches // n_items).astype(np.int64)
    return {"batch": batch, "item": item, "user": user + 1, "g": g, "users": np.arange(1, n_avail + 1)}


def summarize(mask: np.ndarray, e: dict[str, np.ndarray], n_items: int, L: int) -> dict:
    per_item = np.bincount(e["item"][mask], minlength=n_items)
    du = np.bincount(np.searchsorted(e["users"], e["user"][mask]), minlength=len(e["users"]))
    return {
        "pairs": int(mask.sum()),
        "total_g": float(e["g"][mask].astype(np.float64).sum()),
        "items_covered": int((per_item > 0).sum()),
        "items_full": int((per_item >= L).sum()),
        "users_matched": int((du > 0).sum()),
        "max_du": int(du.max()) if len(du) else 0,
        "du_hist": du_histogram(du),
    }


def du_histogram(du: np.ndarray) -> dict[str, int]:
    edges = [(0, 0), (1, 5), (6, 10), (11, 20), (21, 50), (51, 10**12)]
    return {(f"{a}-{b}" if b < 10**12 else f">{a - 1}") if a else "0": int(((du >= a) & (du <= b)).sum()) for a, b in edges}


def cmd_assign(args) -> list[dict]:
    n_items, _, n_avail, cands = SIZES[args.preset]
    t0 = time.time()
    e = synthetic_edges(n_items, n_avail, cands, args.batches, args.seed)
    n = len(e["g"])
    print(f"# {args.preset}: {n_items} items, {n_avail} available users, {n:,} edges "
          f"(synthetic, generated in {time.time() - t0:.1f}s); L={args.L} Q={args.Q} batches={args.batches}",
          flush=True)
    out = []
    for policy in args.policies.split(","):
        t0 = time.time()
        mask, _ = dispatch_day_arrays(e["batch"], e["item"], e["user"], e["g"], e["item"], e["users"], args.L, args.Q, policy,
                                      batches_per_day=args.batches, n_items=n_items)
        secs = time.time() - t0
        row = {"preset": args.preset, "engine": "numpy", "policy": policy, "edges": n, "seconds": round(secs, 2),
               "edges_per_s": round(n / secs), **summarize(mask, e, n_items, args.L)}
        out.append(row)
        print(json.dumps(row), flush=True)
    t0 = time.time()
    mask = dispatch_without_store(e["item"], e["user"], e["g"], args.L)
    row = {"preset": args.preset, "engine": "numpy", "policy": "no_store", "edges": n,
           "seconds": round(time.time() - t0, 2), **summarize(mask, e, n_items, args.L)}
    out.append(row)
    print(json.dumps(row), flush=True)
    a, m = out[0], out[1]
    print(f"# matching vs arrival: total g {m['total_g'] / a['total_g'] - 1:+.2%}, "
          f"fully served items {m['items_full'] - a['items_full']:+d} ({a['items_full']} -> {m['items_full']}), "
          f"covered {a['items_covered']} -> {m['items_covered']}")
    return out


def _write_world(lake, day: dt.date, e: dict[str, np.ndarray], n_items: int, batches: int) -> None:
    """Hand the synthetic edges to the real stage: items, activity_scores and ranked tables."""
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
    width = 86_400 / batches
    item_batch = np.arange(n_items) * batches // n_items  # same rule as synthetic_edges
    first = np.searchsorted(item_batch, item_batch)  # index of the batch's first item
    count = np.bincount(item_batch, minlength=batches)[item_batch]
    secs = (item_batch * width + (np.arange(n_items) - first) * (width / count)).astype(np.int64)
    lake.write_meta({"emb_dim": 4})
    lake.write_table("items", day, pa.table({
        "item_id": pa.array(np.arange(n_items), pa.int64()),
        "creator_id": pa.array(np.arange(n_items) % 97, pa.int64()),
        "upload_ts": pa.array((start.timestamp() + secs) * 1_000_000, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "category": pa.array(np.zeros(n_items), pa.int32()),
        "duration_ms": pa.array(np.full(n_items, 10_000), pa.int64()),
        "content_emb": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(n_items * 4, np.float32)), 4).cast(pa.list_(pa.float32())),
    }))
    users = e["users"]
    lake.write_table("activity_scores", day, pa.table({
        "user_id": pa.array(users, pa.int64()), "p_active": pa.array(np.full(len(users), 0.9)),
        "available": pa.array(np.ones(len(users), bool)),
    }))
    n = len(e["g"])
    const = pa.array(np.full(n, 0.1, np.float32))
    lake.write_table("ranked", day, pa.table({
        "batch": pa.array(e["batch"], pa.int32()), "item_id": pa.array(e["item"], pa.int64()),
        "user_id": pa.array(e["user"], pa.int64()),
        "channels": pa.array([["two_tower"]] * n, pa.list_(pa.string())),
        **{f"s_{t}": const for t in ("like", "comment", "follow", "share", "profile_enter", "long_view")},
        "theta": const, "g": pa.array(e["g"], pa.float32()),
    }), validate=False)


def cmd_spark(args) -> list[dict]:
    """The real stage on a tmp lake, every policy (same edges), checked against the NumPy driver."""
    from dualrec.config import DualRecConfig, SparkConfig
    from dualrec.lake import Lake
    from dualrec.spark import get_spark
    from dualrec.stages.base import StageContext
    from dualrec.stages.dispatch import run

    n_avail = int(args.items * SIZES["medium"][2] / SIZES["medium"][0])
    e = synthetic_edges(args.items, n_avail, args.cands, args.batches, args.seed)
    day = dt.date(2026, 1, 5)
    spark = get_spark(SparkConfig(master=args.master, shuffle_partitions=args.partitions, driver_memory="6g"))
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        lake = Lake(tmp)
        _write_world(lake, day, e, args.items, args.batches)
        print(f"# spark stage: {args.items} items, {n_avail} users, {len(e['g']):,} edges, batches={args.batches}", flush=True)
        for engine in ("numpy",):
            for policy in args.policies.split(","):
                cfg = DualRecConfig.from_dict({"dispatch": {"L": args.L, "Q": args.Q, "batches_per_day": args.batches,
                                                            "policy": policy}})
                t0 = time.time()
                stats = run(StageContext(lake=lake, day=day, cfg=cfg, _spark=spark))
                secs = time.time() - t0
                mask, _ = dispatch_day_arrays(e["batch"], e["item"], e["user"], e["g"], e["item"], e["users"],
                                              args.L, args.Q, policy, batches_per_day=args.batches, n_items=args.items)
                ref = summarize(mask, e, args.items, args.L)
                row = {"engine": engine, "policy": policy, "edges": len(e["g"]), "stage_seconds": round(secs, 1),
                       "edges_per_s": round(len(e["g"]) / secs), "pairs": stats["pairs"],
                       "items_full": stats["items_full"], "total_g": round(stats["total_g"], 1),
                       "equals_numpy_reference": stats["pairs"] == ref["pairs"] and abs(stats["total_g"] - ref["total_g"]) < 1e-3 * ref["total_g"]}
                out.append(row)
                print(json.dumps(row), flush=True)
    return out


def truth_ranked(lake_root: str, day: dt.date, n_avail: int, n_cands: int, pool: int, seed: int = 0) -> pa.Table:
    """A realistic stand-in for ``ranked`` built from the hidden truth (used when none exists)."""
    from dualrec.batches import batch_of_seconds
    from dualrec.config import RankConfig
    from dualrec.lake import Lake
    from dualrec.synth.truth import Truth

    lake = Lake(lake_root)
    truth = Truth.load(lake_root)
    beta = RankConfig().beta
    rng = np.random.default_rng(seed)
    users = lake.read_table("users", day, ["user_id"]).column("user_id").to_numpy()
    p = truth.activity_prob(users, day + dt.timedelta(days=1))
    avail = np.sort(users[np.argsort(-(p + rng.normal(0, 0.1, len(p))))[:n_avail]])  # a noisy activity model
    items = lake.read_table("items", day, ["item_id", "upload_ts"])
    item_ids = items.column("item_id").to_numpy()
    ts = items.column("upload_ts").cast(pa.int64()).to_numpy() // 1_000_000
    secs = ts - int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp())
    batch = batch_of_seconds(secs, 24)
    pop = truth.activity_prob(avail, day)  # retrieval favours active users
    cdf = np.cumsum(pop + 1e-3) / (pop + 1e-3).sum()
    cols = {"batch": [], "item_id": [], "user_id": [], "g": []}
    for i, b in zip(item_ids, batch):
        u = np.unique(avail[np.searchsorted(cdf, rng.random(pool))])
        fb = truth.feedback_prob(u, np.full(len(u), i))
        s = sum(beta[t] * fb[t] for t in beta)
        noisy = s * rng.lognormal(0, 0.5, len(u))  # a model's error
        top = np.argsort(-noisy)[:n_cands]
        cols["batch"].append(np.full(len(top), b))
        cols["item_id"].append(np.full(len(top), i))
        cols["user_id"].append(u[top])
        cols["g"].append(noisy[top].astype(np.float32))
    return pa.table({k: np.concatenate(v) for k, v in cols.items()}), avail


def _pipeline_day(lake, day: dt.date):
    """(ranked, activity_scores, sorted available user ids) of a day the pipeline ran, else None."""
    if not (lake.has_partition("ranked", day) and lake.has_partition("activity_scores", day)):
        return None
    cols = ["batch", "item_id", "user_id", "g"] + [f"s_{t}" for t in RANK_TASKS]
    r = lake.read_table("ranked", day, cols)
    a = lake.read_table("activity_scores", day)
    return r, a, np.sort(a.filter(a.column("available")).column("user_id").to_numpy())


def cmd_figure9(args) -> dict:
    from dualrec.lake import Lake

    day = dt.date.fromisoformat(args.date)
    lake = Lake(args.lake)
    if (run := _pipeline_day(lake, day)) is not None:
        r, a, avail = run
        source = "ranked + activity_scores tables of the lake"
    else:
        r, avail = truth_ranked(args.lake, day, args.available, args.cands, args.pool, args.seed)
        source = "SYNTHETIC ranked table built from the hidden truth (no ranked partition yet)"
    items = lake.read_table("items", day, ["item_id", "upload_ts"])
    order = np.lexsort((items.column("item_id").to_numpy(), items.column("upload_ts").cast(pa.int64()).to_numpy()))
    rank_of = np.empty(len(order), np.int64)
    rank_of[order] = np.arange(len(order))
    ids = items.column("item_id").to_numpy()
    it = np.asarray(r.column("item_id"))
    rank = rank_of[_pos(ids, it)]
    us, g, b = np.asarray(r.column("user_id")), np.asarray(r.column("g")), np.asarray(r.column("batch"))
    res = {"source": source, "items": int(len(ids)), "available_users": int(len(avail)), "edges": int(len(g))}
    with_store, _ = dispatch_day_arrays(b, it, us, g, rank, avail, args.L, args.Q, "arrival")
    without = dispatch_without_store(it, us, g, args.L)
    for name, m in (("with_store", with_store), ("without_store", without)):
        du = np.bincount(_pos(avail, us[m]), minlength=len(avail))
        per_item = np.bincount(_pos(np.sort(ids), it[m]), minlength=len(ids))
        res[name] = {"du_hist": du_histogram(du), "max_du": int(du.max()), "users_matched": int((du > 0).sum()),
                     "pairs": int(m.sum()), "pairs_within_Q": int(np.minimum(du, args.Q).sum()),
                     "items_full": int((per_item >= args.L).sum())}
    print(json.dumps(res, indent=1))
    return res


def edge_value_variants(ranked: pa.Table, p_active: np.ndarray) -> dict[str, np.ndarray]:
    """Edge values the flow could maximise instead of g = Σ_m β_m s^m / θ_u (Eq. 10), from the
    ranked columns alone (no truth): θ undone (Σ β s), times p_active (the user's chance to see
    it on D+1), and Σ of the creator-visible s unweighted, times p_active: the ranker's own
    estimate of the evaluation's expected visible feedback."""
    from dualrec.config import RankConfig

    beta = RankConfig().beta
    s = {t: ranked.column(f"s_{t}").to_numpy().astype(np.float64) for t in beta}
    bs = sum(beta[t] * s[t] for t in beta)
    vis = sum(s[t] for t in VISIBLE_FEEDBACKS)
    p = np.asarray(p_active, dtype=np.float64)
    return {"Σβs (g·θ)": bs, "Σβs · p_active": bs * p, "Σ visible s": vis, "Σ visible s · p_active": vis * p}


def cmd_policies(args) -> list[dict]:
    """Every policy on one run day of a synthetic lake, scored with the truth (the BENCHMARKS table)."""
    import pandas as pd

    from dualrec.dispatch import upload_curve
    from dualrec.evaluation import baselines as B
    from dualrec.evaluation.day import truth_grid_fn, truth_scorer
    from dualrec.evaluation.optimum import certified_optimum
    from dualrec.evaluation.figures import creator_figures, feedback_figures
    from dualrec.lake import Lake
    from dualrec.dispatch import prior_upload_batches

    day = dt.date.fromisoformat(args.date)
    lake = Lake(args.lake)
    if (run := _pipeline_day(lake, day)) is not None:
        r, a, avail = run
        p_of = pd.Series(a.column("p_active").to_numpy(), index=a.column("user_id").to_numpy())
        source = "the lake's ranked + activity_scores (a pipeline run)"
    else:
        from dualrec.synth.truth import Truth

        users = lake.read_table("users", day, ["user_id"]).column("user_id").to_numpy()
        n_avail = args.available or int(np.ceil(Truth.load(args.lake).activity_prob(users, day + dt.timedelta(days=1)).sum()))
        r, avail = truth_ranked(args.lake, day, n_avail, args.cands, args.pool, args.seed)
        noisy = Truth.load(args.lake).activity_prob(avail, day + dt.timedelta(days=1))
        noisy = np.clip(noisy + np.random.default_rng(args.seed).normal(0, 0.1, avail.size), 0.01, 1)
        p_of = pd.Series(noisy, index=avail)  # a noisy activity model, as truth_ranked uses
        source = f"SYNTHETIC ranked table from the hidden truth (no pipeline run), {n_avail} available"
    print(f"# source: {source}", flush=True)
    items = lake.read_table("items", day, ["item_id", "upload_ts"])
    us_ts = items.column("upload_ts").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
    order = np.lexsort((items.column("item_id").to_numpy(), us_ts))
    ids = items.column("item_id").to_numpy()[order]
    hour = ((us_ts[order] // 1_000_000) % 86_400) // 3_600
    rank = pd.Series(np.arange(ids.size), index=ids)
    it, us, g, b = (np.asarray(r.column(c)) for c in ("item_id", "user_id", "g", "batch"))
    ir = rank.reindex(it).to_numpy().astype(np.int64)
    pa_edge = p_of.reindex(us).fillna(0.0).to_numpy()
    curve = upload_curve(prior_upload_batches(lake, day, 7, args.batches), args.batches)
    score = truth_scorer(lake, day + dt.timedelta(days=1))
    nxt = lake.read_table("visits", day + dt.timedelta(days=1), ["user_id"]).column("user_id").to_numpy()
    t0 = time.time()
    if args.bound_json:  # the certified interval of an earlier run of this command on the same day
        with open(args.bound_json) as fh:
            prev = json.load(fh)
        if (prev["date"], prev["items"], prev["available"]) != (args.date, int(ids.size), int(avail.size)):
            raise SystemExit(f"{args.bound_json} is for another day or available set")
        res = SimpleNamespace(items=np.zeros(0, np.int64), users=np.zeros(0, np.int64), upper=prev["optimum_upper_bound"],
                              lower=prev["optimum_lower_bound"], exact=prev["optimum_exact"],
                              screened_users=prev["optimum_screened_users"])
        res.gap = (res.upper - res.lower) / res.upper
    else:
        grid = truth_grid_fn(lake, day + dt.timedelta(days=1))(ids, avail)
        res = certified_optimum(grid, args.L, args.Q, max_pairs=args.max_pairs,
                                user_upper=grid.user_upper() if ids.size * avail.size > args.max_pairs else None)
    opt = res.upper  # ratios are to the upper bound: conservative
    opt_s = time.time() - t0
    print(f"# {args.lake} {day}: {ids.size} items, {avail.size} available users, {len(g):,} ranked edges, "
          f"capacity {avail.size * args.Q:,} slots vs demand {ids.size * args.L:,}; optimum over every available "
          f"user ({res.screened_users} priced at their upper bound): [{res.lower:.1f}, {res.upper:.1f}], "
          f"gap {res.gap:.2e}, exact {res.exact} ({opt_s:.0f}s)", flush=True)
    runs = [(p, p, PolicyParams(), "g") for p in POLICIES]
    if args.sweep:
        runs += [(f"optimal fs={fs} b={bo}", "optimal", PolicyParams(floor_share=fs, floor_bonus=bo, cover_bonus=bo), "g")
                 for fs in (0.0, 0.25, 0.5, 0.75) for bo in (0.25, 1.0) if fs or bo == 1.0]
        runs += [(f"optimal fs={fs} tiers={t}", "optimal", PolicyParams(floor_share=fs, floor_tiers=t), "g")
                 for fs in (1.0, 0.75) for t in (2, 4)]
        runs += [(f"{p}, g · p_active", p, PolicyParams(weight_by_p_active=True), "g") for p in ("paced", "optimal")]
    values = {"g": g}
    if args.values:
        if "s_like" not in r.column_names:
            raise SystemExit("--values needs a pipeline run's ranked table (task scores s_<task>)")
        values.update(edge_value_variants(r, pa_edge))
        for v in values:
            if v == "g":
                continue
            runs += [(f"optimal, value {v}", "optimal", PolicyParams(), v),
                     (f"optimal, value {v}, no floor", "optimal", PolicyParams(floor_share=0.0), v)]
        runs += [("optimal, value g, no floor or bonus", "optimal", PolicyParams(floor_share=0.0, floor_bonus=0.0, cover_bonus=0.0), "g")]
    if args.rows:  # the four policies always run
        runs = [x for x in runs if x[0] in POLICIES or re.search(args.rows, x[0])]
    t0 = time.time()
    cand_vals = B.score_pairs(score, us, it)
    if args.values:  # a perfect ranker: the flow on the truth values of the same candidates
        values["truth"] = cand_vals
        runs += [("optimal, value truth (perfect ranker)", "optimal", PolicyParams(), "truth"),
                 ("optimal, value truth, no floor", "optimal", PolicyParams(floor_share=0.0), "truth")]
    cand_mask = assign_arrays(it, us, cand_vals, ir, {int(u): args.Q for u in avail}, args.L, "flow")
    cand_opt = float(cand_vals[cand_mask].sum())
    print(f"# optimum over the ranked candidate edges only (truth values): {cand_opt:.1f} ({time.time() - t0:.0f}s); "
          "of_candidate_optimum = a policy's share of what its candidates allow", flush=True)
    rows = []
    for name, policy, params, value in runs:
        t0 = time.time()
        mask, _ = dispatch_day_arrays(b, it, us, values[value], ir, avail, args.L, args.Q, policy, batches_per_day=args.batches,
                                      curve=curve, n_items=ids.size, params=params, p_active=pa_edge)
        secs = time.time() - t0
        per_item = np.bincount(rank.reindex(it[mask]).to_numpy().astype(np.int64), minlength=ids.size)
        vals = B.score_pairs(score, us[mask], it[mask])
        ff = feedback_figures(it[mask], ids, vals)
        cf = creator_figures(per_item, avail.size, args.L, args.Q)
        late = hour >= 18
        row = {
            "policy": name, "coverage": cf["coverage"], "fair_served": cf["fair_served"],
            "items_reaching_feedback": ff["items_reaching_feedback"], "expected_feedback": round(ff["expected_feedback"], 2),
            "optimum_ratio": round(ff["expected_feedback"] / opt, 4) if opt else None,
            "of_candidate_optimum": round(ff["expected_feedback"] / cand_opt, 4) if cand_opt else None,
            "hit_rate": float(np.isin(np.unique(us[mask]), nxt).mean()) if mask.any() else None,
            "coverage_after_18h": float((per_item[late] > 0).mean()) if late.any() else None,
            "gini": cf["users_per_item_gini"], "pairs": int(mask.sum()), "total_g": round(float(g[mask].sum()), 2),
            "fair_share": cf["fair_share"], "seconds": round(secs, 2),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.bound_json:
        rows += [x for x in prev["rows"] if x["policy"] == "optimum (truth, bound)"]
    else:
        rows.append(optimum_row(res, ids, avail, score, nxt, cand_opt, opt_s, args))
    print(json.dumps(rows[-1]), flush=True)
    return _print_rows(rows, args, res, ids, avail, source)


def optimum_row(res, ids, avail, score, nxt, cand_opt, opt_s, args) -> dict:
    """The creator figures of the optimum's own (lower-bound) assignment."""
    from dualrec.evaluation import baselines as B
    from dualrec.evaluation.figures import creator_figures, feedback_figures

    o_it, o_us, opt = res.items, res.users, res.upper
    vals = B.score_pairs(score, avail[o_us], ids[o_it])
    per_item = np.bincount(o_it, minlength=ids.size)
    ff = feedback_figures(ids[o_it], ids, vals)
    cf = creator_figures(per_item, avail.size, args.L, args.Q)
    return {"policy": "optimum (truth, bound)", "coverage": cf["coverage"], "fair_served": cf["fair_served"],
            "items_reaching_feedback": ff["items_reaching_feedback"], "expected_feedback": round(res.lower, 2),
            "optimum_ratio": round(res.lower / opt, 4), "of_candidate_optimum": round(opt / cand_opt, 4) if cand_opt else None,
            "hit_rate": float(np.isin(np.unique(avail[o_us]), nxt).mean()),
            "pairs": int(o_it.size), "seconds": round(opt_s, 1)}


def _print_rows(rows, args, res, ids, avail, source) -> list[dict]:
    print("| policy | coverage | fair_served | items_reaching_feedback | expected_feedback | optimum_ratio "
          "| of candidate optimum | hit rate |")
    print("|---|---|---|---|---|---|---|---|")
    for x in rows:
        f = lambda v, k=".3f": "n/a" if v is None else format(v, k)  # noqa: E731
        print(f"| {x['policy']} | {f(x['coverage'])} | {f(x['fair_served'])} | {f(x['items_reaching_feedback'])} | "
              f"{f(x['expected_feedback'], '.1f')} | {f(x['optimum_ratio'])} | {f(x.get('of_candidate_optimum'))} | "
              f"{f(x['hit_rate'])} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"lake": args.lake, "date": args.date, "source": source, "items": int(ids.size), "available": int(avail.size),
                       "optimum_upper_bound": res.upper, "optimum_lower_bound": res.lower, "optimum_exact": res.exact,
                       "optimum_screened_users": res.screened_users, "rows": rows}, fh, indent=1)
    return rows


def cmd_available(args) -> list[dict]:
    """Issue 15 item 3: the size N of the available set against hit rate, coverage and expected
    feedback (synthetic world, candidates from the truth-based stand-in ranked table, which is
    rebuilt for each N because retrieval only searches available users)."""
    import pandas as pd

    from dualrec.evaluation import baselines as B
    from dualrec.evaluation.day import truth_scorer
    from dualrec.evaluation.figures import creator_figures, feedback_figures
    from dualrec.lake import Lake
    from dualrec.synth.truth import Truth

    day = dt.date.fromisoformat(args.date)
    lake = Lake(args.lake)
    truth = Truth.load(args.lake)
    users = lake.read_table("users", day, ["user_id"]).column("user_id").to_numpy()
    expected = float(truth.activity_prob(users, day + dt.timedelta(days=1)).sum())
    items = lake.read_table("items", day, ["item_id", "upload_ts"])
    us_ts = items.column("upload_ts").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
    ids = items.column("item_id").to_numpy()[np.lexsort((items.column("item_id").to_numpy(), us_ts))]
    rank = pd.Series(np.arange(ids.size), index=ids)
    score = truth_scorer(lake, day + dt.timedelta(days=1))
    nxt = lake.read_table("visits", day + dt.timedelta(days=1), ["user_id"]).column("user_id").to_numpy()
    print(f"# {args.lake} {day}: {len(users)} users, expected visitors {expected:.0f}, {ids.size} items", flush=True)
    rows = []
    for f in [float(x) for x in args.factors.split(",")]:
        n = min(len(users), int(round(f * expected)))
        r, avail = truth_ranked(args.lake, day, n, args.cands, args.pool, args.seed)
        p = truth.activity_prob(avail, day + dt.timedelta(days=1))
        p_of = pd.Series(np.clip(p + np.random.default_rng(args.seed).normal(0, 0.1, avail.size), 0.01, 1), index=avail)
        it, us, g, b = (np.asarray(r.column(c)) for c in ("item_id", "user_id", "g", "batch"))
        ir = rank.reindex(it).to_numpy().astype(np.int64)
        for policy in args.policies.split(","):
            mask, _ = dispatch_day_arrays(b, it, us, g, ir, avail, args.L, args.Q, policy, batches_per_day=args.batches,
                                          n_items=ids.size, p_active=p_of.reindex(us).to_numpy())
            per_item = np.bincount(rank.reindex(it[mask]).to_numpy().astype(np.int64), minlength=ids.size)
            ff = feedback_figures(it[mask], ids, B.score_pairs(score, us[mask], it[mask]))
            row = {"n_over_expected": f, "available": int(avail.size), "policy": policy,
                   "hit_rate": round(float(np.isin(np.unique(us[mask]), nxt).mean()), 4) if mask.any() else None,
                   "coverage": creator_figures(per_item, avail.size, args.L, args.Q)["coverage"],
                   "expected_feedback": round(ff["expected_feedback"], 1), "pairs": int(mask.sum())}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return rows


def _pos(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    s = np.sort(sorted_ids)
    idx = np.argsort(sorted_ids)
    return idx[np.searchsorted(s, ids)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("assign")
    a.add_argument("--preset", choices=list(SIZES), default="medium")
    s = sub.add_parser("spark")
    s.add_argument("--items", type=int, default=1000)
    s.add_argument("--cands", type=int, default=1000)
    s.add_argument("--master", default="local[2]")
    s.add_argument("--partitions", type=int, default=4)
    f = sub.add_parser("figure9")
    f.add_argument("--lake", required=True)
    f.add_argument("--date", required=True)
    f.add_argument("--available", type=int, default=12_000)
    f.add_argument("--cands", type=int, default=1000)
    f.add_argument("--pool", type=int, default=3000)
    pol = sub.add_parser("policies")
    pol.add_argument("--lake", required=True)
    pol.add_argument("--date", required=True)
    pol.add_argument("--max-pairs", type=int, default=250_000_000,
                     help="optimum: beyond this many pairs the users with the smallest upper bound are priced, not scored")
    pol.add_argument("--sweep", action="store_true", help="also sweep the optimal policy's floor and bonus")
    pol.add_argument("--values", action="store_true",
                     help="also run optimal with other edge values built from the ranked scores (and the truth's, a perfect ranker)")
    pol.add_argument("--bound-json", help="reuse the certified optimum of an earlier --json of the same day (medium: saves ~5 min)")
    pol.add_argument("--rows", help="regex: of the --sweep/--values rows run only those whose name matches")
    pol.add_argument("--json", help="write the rows here")
    pol.add_argument("--available", type=int, default=0, help="without a run: available users (default: expected visitors)")
    pol.add_argument("--cands", type=int, default=1000)
    pol.add_argument("--pool", type=int, default=3000)
    av = sub.add_parser("available")
    av.add_argument("--lake", required=True)
    av.add_argument("--date", required=True)
    av.add_argument("--factors", default="0.5,0.75,1,1.5,2,3", help="N as multiples of the expected visitors")
    av.add_argument("--cands", type=int, default=1000)
    av.add_argument("--pool", type=int, default=3000)
    av.add_argument("--json")
    for q in (a, s):
        q.add_argument("--policies", default=",".join(POLICIES))
    av.add_argument("--policies", default="arrival,optimal")
    for q in (a, s, f, pol, av):
        q.add_argument("--L", type=int, default=200)
        q.add_argument("--Q", type=int, default=10)
        q.add_argument("--batches", type=int, default=24)
        q.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    {"assign": cmd_assign, "spark": cmd_spark, "figure9": cmd_figure9, "policies": cmd_policies,
     "available": cmd_available}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
