"""coldllm channel: ColdLLM's coupled funnel (papers/coldllm-llm-simulator.txt, WSDM'25; issue 18).

For each of D's new items:

1. **filter** (paper Eq. 5-7): the content filter of :mod:`models.coldllm` maps the item's
   content features to the two-tower user space; the FAISS user index (``_models/user_index``
   dt=D, available users only) gives its ``coldllm.filter_k`` best users;
2. **simulate** (Eq. 9-10): an :class:`InteractionSimulator` returns each
   filtered user's interaction probability. Default :class:`RankerSimulator`: the multi-task
   ranker (``model_for_day``: the latest ``_models/ranker`` <= D trained on days < D) scores the
   pairs with the rank stage's own point-in-time features (:func:`dualrec.ranking.scoring_tables`:
   users as of D, items at their batch cutoff), P = 1 - prod(1 - s_m) over
   ``coldllm.simulator_tasks``;
3. **update** (Eq. 4): e = (1 - w) f + w * m, m = probability-weighted mean embedding of the
   ``coldllm.simulated_positives`` most probable users minus the mean of all the item's filtered
   users (``coldllm.update: contrast``, default; ``mean`` keeps the plain mean), rescaled to |f|
   (``w`` = ``coldllm.update_mix``; no user with p > 0 -> e = f), then the user index is searched
   again with e for the channel's K.
   Score = e . e_u.

An LLM-backed simulator
-----------------------
Subclass :class:`InteractionSimulator` (defined here; this module imports no torch at top level) in any importable
module, implement ``simulate(item, users) -> probabilities`` (or ``simulate_batch``), optionally
``prepare(ctx, items, pairs)`` to build user contexts from data before each item's ``cutoff``,
and select it with ``--set coldllm.simulator=my_pkg.my_mod:MySimulator`` (or the same key in
the config file). The class is built with no arguments. The product makes no network call; see
docs/coldllm.md.

Training (:func:`train`, run by the ``similarity`` stage when the channel is enabled): warm items
uploaded in [D-W, D-1] with at least ``coldllm.min_positives`` explicit positives before D
(interactions dt <= D-1 only) and at least that many with a ``user_embeddings`` dt=D row; target
(``coldllm.filter_target``) = the two-tower item tower dt=D *with* the item's trained ID embedding
(default), or the mean ``user_embeddings`` dt=D of its positive users. Warm-started from the latest earlier artefact of the same shape; ``_models/coldllm/dt=D`` with a
manifest. Items uploaded on D are never trained on.

Point in time: the filter reads content only; the ranker simulator's features stop at each
item's batch cutoff; the ranker and the filter are trained on days before D. Not enabled by
default (BENCHMARKS.md section 13 says why).
"""

from __future__ import annotations

import abc
import datetime as dt
import importlib
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa

from dualrec.channels.base import Channel, ChannelSpec, driver_candidates, warm_start_model, with_cutoff
from dualrec.lake import Lake, LakeError, date_range

log = logging.getLogger(__name__)

NAME = "coldllm"
_ITEM_COLS = ("item_id", "creator_id", "category", "duration_ms", "content_emb")
_OUT = pa.schema([("item_id", pa.int64()), ("user_id", pa.int64()), ("score", pa.float32())])


# ---------------------------------------------------------------------- simulators
class InteractionSimulator(abc.ABC):
    """Decides which of an item's filtered users would interact (the paper's LLM, Eq. 9).

    To plug in an LLM-backed simulator, subclass this, give it a no-argument constructor and set
    ``coldllm.simulator: "your.module:YourSimulator"`` (see docs/coldllm.md). The channel calls

    1. ``prepare(ctx, items, pairs)`` once per day: ``ctx`` has ``lake``, ``day``, ``cfg``, ``spark``;
       ``items`` the day's items (Arrow: the ``items`` columns plus ``batch`` and ``cutoff``,
       sorted by item_id); ``pairs`` (Arrow: batch, item_id, user_id) every filtered pair. Build
       your user contexts here, from data strictly before each item's ``cutoff``.
    2. ``simulate_batch(items, users)`` with ``users[r]`` the filtered users of ``items`` row r;
       it must return one array of probabilities in [0, 1] per row, aligned with ``users[r]``.
       The default loops over ``simulate(item, users)`` (``item``: the row as a dict), which is
       what a per-prompt LLM implements; a vectorised simulator overrides ``simulate_batch``.

    A "Yes/No" model returns 1.0 / 0.0. The product itself makes no network call; a remote
    simulator is the deployer's choice and responsibility.
    """

    name: str = "simulator"

    def prepare(self, ctx: Any, items: pa.Table, pairs: pa.Table) -> None:  # noqa: B027 - optional hook
        """Optional per-day set-up (default: nothing)."""

    @abc.abstractmethod
    def simulate(self, item: dict[str, Any], users: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        """P(user interacts with item) for each of ``users`` (int64 ids)."""

    def simulate_batch(self, items: pa.Table, users: list[np.ndarray]) -> list[np.ndarray]:
        rows = items.to_pylist()
        return [np.asarray(self.simulate(rows[r], u), np.float64) for r, u in enumerate(users)]


class RankerSimulator(InteractionSimulator):
    """Default simulator: the multi-task ranker's P(any of ``coldllm.simulator_tasks``), vectorised."""

    name = "ranker"

    def __init__(self) -> None:
        self.model = None
        self.side = None
        self.tasks: tuple[str, ...] = ()
        self.model_day: dt.date | None = None

    def prepare(self, ctx, items: pa.Table, pairs: pa.Table) -> None:
        from dualrec.ranking import model_for_day, release, scoring_tables
        from models.ranker import side_arrays

        self.model_day, self.model = model_for_day(ctx.lake, ctx.day)
        if self.model is None:
            raise LakeError(
                f"coldllm: no ranker artefact trained before {ctx.day} under {ctx.lake.uri(Lake.model_rel('ranker', ctx.day))} "
                "(the default simulator needs one; run stage 'rank' for an earlier day, or set coldllm.simulator)"
            )
        self.tasks = tuple(ctx.cfg.coldllm.simulator_tasks)
        cached: list = []
        try:
            users, feats, _ = scoring_tables(ctx.spark, ctx.lake, ctx.day, ctx.spark.createDataFrame(pairs), ctx.cfg, cached)
        finally:
            release(cached)
        self.side = side_arrays(users, feats, self.model.spec)
        log.info("coldllm: ranker of %s simulates %d pairs", self.model_day, pairs.num_rows)

    def _probs(self, item_ids: np.ndarray, users: np.ndarray) -> np.ndarray:
        from models.coldllm import ranker_probabilities

        if self.model is None:
            raise RuntimeError("RankerSimulator.prepare() was not called")
        return ranker_probabilities(self.model, self.side, item_ids, users, self.tasks)

    def simulate(self, item: dict[str, Any], users: np.ndarray) -> np.ndarray:
        users = np.asarray(users, np.int64)
        return self._probs(np.full(len(users), int(item["item_id"]), np.int64), users)

    def simulate_batch(self, items: pa.Table, users: list[np.ndarray]) -> list[np.ndarray]:
        ids = items.column("item_id").to_numpy()
        lens = np.array([len(u) for u in users], np.int64)
        flat_u = np.concatenate([np.asarray(u, np.int64) for u in users]) if len(users) else np.zeros(0, np.int64)
        p = self._probs(np.repeat(ids, lens), flat_u)
        return np.split(p, np.cumsum(lens)[:-1]) if len(users) else []


def load_simulator(target: str) -> InteractionSimulator:
    """Instantiate ``coldllm.simulator`` ("module:Class", no constructor arguments)."""
    mod, _, cls = target.partition(":")
    try:
        obj = getattr(importlib.import_module(mod), cls)()
    except (ImportError, AttributeError) as e:
        raise ValueError(f"coldllm.simulator {target!r} cannot be loaded: {e}") from e
    if not callable(getattr(obj, "simulate_batch", None)):
        raise ValueError(f"coldllm.simulator {target!r} is not an InteractionSimulator (no simulate_batch)")
    return obj


# ---------------------------------------------------------------------- training
def training_inputs(spark, lake: Lake, day: dt.date, cfg) -> dict[str, Any]:
    """Warm items uploaded in [D-W, D-1] and their behaviour targets from positives before D."""
    from dualrec.channels.next_user import positive_sequences, user_table
    from dualrec.similarity import item_positive_users
    from models.coldllm import behaviour_targets, item_tower_targets
    from models.two_tower import load_two_tower

    c = cfg.coldllm
    window = date_range(day - dt.timedelta(days=c.train_window_days), day - dt.timedelta(days=1))
    days = [d for d in window if lake.has_partition("items", d)]
    if not days:
        return {"items": None, "targets": np.zeros((0, 0), np.float32), "window": None}
    items = lake.read_df(spark, "items", days, with_dt=False).select(*_ITEM_COLS)
    inter_days = [d for d in window if lake.has_partition("interactions", d)]  # strictly before D
    inter = lake.read_df(spark, "interactions", inter_days, with_dt=False) if inter_days else None
    seqs = positive_sequences(item_positive_users(inter, items, c.max_positives), items, c.max_positives) if inter is not None else {}
    pos_users = spark.createDataFrame(pa.table({"user_id": pa.array(
        np.unique(np.concatenate([*seqs.values(), np.zeros(0, np.int64)])), pa.int64())}))
    users = user_table(lake.read_df(spark, "user_embeddings", [day], with_dt=False), pos_users)
    ids = np.array(sorted(seqs), np.int64)
    # the positive-users mean decides which items count as warm for both targets (>= min_positives known users)
    targets, keep = behaviour_targets([seqs[int(i)] for i in ids], users.ids, users.emb, c.min_positives)
    ids, targets = ids[keep], targets[keep]
    if len(ids) > c.max_train_items:
        sel = np.sort(np.random.default_rng(0).choice(len(ids), c.max_train_items, replace=False))
        ids, targets = ids[sel], targets[sel]
    item_t = None
    if len(ids):
        item_t = items.where(items.item_id.isin([int(i) for i in ids])).toArrow()
        item_t = item_t.take(np.argsort(item_t.column("item_id").to_numpy(), kind="stable"))
        if c.filter_target == "item_tower":
            targets = item_tower_targets(load_two_tower(lake, day), item_t)
    return {"items": item_t, "targets": targets, "window": [days[0].isoformat(), days[-1].isoformat()],
            "user_dim": int(targets.shape[1]) if len(ids) else 0}


def fit(inputs: dict[str, Any], cfg, seed: int, content_dim: int, user_dim: int, model=None):
    """Train a new (or warm-started) filter on :func:`training_inputs`; returns (model, metrics)."""
    import torch

    from models.coldllm import ContentFilter, FilterSpec, encode_items, train_filter

    spec = FilterSpec.from_cfg(cfg.coldllm, content_dim, user_dim)
    warm = model is not None
    if model is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = ContentFilter(spec)
    if inputs["items"] is None or not len(inputs["targets"]):
        return model, {"items": 0, "epoch_loss": [], "mean_cosine": None}
    enc = encode_items(inputs["items"], model.spec)
    return model, train_filter(model, enc, inputs["targets"], cfg.coldllm, seed, fit_normalizers=not warm)


def train(ctx) -> dict[str, Any]:
    """Trainer declared in :data:`CHANNEL`: train and publish ``_models/coldllm/dt=D``."""
    from models.coldllm import FilterSpec, load_filter, save_filter
    from models.two_tower import load_two_tower

    lake, day, cfg = ctx.lake, ctx.day, ctx.cfg
    t0 = time.perf_counter()
    inputs = training_inputs(ctx.spark, lake, day, cfg)
    user_dim = inputs.get("user_dim") or load_two_tower(lake, day).spec.dim
    cdim = lake.emb_dim() or (len(inputs["items"].column("content_emb")[0]) if inputs["items"] is not None else 1)
    spec = FilterSpec.from_cfg(cfg.coldllm, cdim, user_dim)
    model, warm_from = warm_start_model(lake, NAME, day, cfg.coldllm.warm_start, load_filter, spec)
    model, metrics = fit(inputs, cfg, ctx.seed("coldllm.train"), cdim, user_dim, model)
    manifest = {
        "day": day.isoformat(),
        "training_items_uploaded": inputs["window"],
        "positives_before": day.isoformat(),
        "warm_start_from": warm_from.isoformat() if warm_from else None,
        "metrics": metrics,
        "target": cfg.coldllm.filter_target,
        "targets": (f"two_tower dt={day.isoformat()} item tower with the warm item's ID embedding"
                    if cfg.coldllm.filter_target == "item_tower"
                    else f"mean user_embeddings/dt={day.isoformat()} of each warm item's explicit positive users"),
    }
    with lake.publish_dir(Lake.model_rel(NAME, day)) as staging:
        save_filter(model, lake, staging, manifest)
    return {"items": metrics.get("items", 0), "mean_cosine": metrics.get("mean_cosine"),
            "warm_start_from": manifest["warm_start_from"], "seconds": round(time.perf_counter() - t0, 1)}


# ---------------------------------------------------------------------- serving
def coldllm_search(filter_emb: np.ndarray, items: pa.Table, index, simulator, user_lookup, cfg, k: int, ctx: Any = None
                   ) -> tuple[pa.Table, dict[str, Any]]:
    """The funnel on arrays: filter search -> simulator (``prepare`` then ``simulate_batch``) ->
    updated embeddings -> top-k search.

    ``items`` sorted by item_id (rows align with ``filter_emb``); ``user_lookup(user_ids) ->
    (sorted ids, embeddings)`` gives the filtered users' two-tower embeddings; ``ctx`` is passed
    to the simulator's ``prepare``. Returns ((item_id, user_id, score) rows, stats)."""
    from dualrec.channels.two_tower import search_candidates
    from models.coldllm import lift_scores, updated_embeddings

    c = cfg.coldllm
    ids = items.column("item_id").to_numpy().astype(np.int64)
    if len(ids) == 0:
        return _OUT.empty_table(), {"items": 0}
    _, fu = index.search(np.ascontiguousarray(filter_emb, np.float32), c.filter_k)
    users = [row[row >= 0].astype(np.int64) for row in fu]
    batch = items.column("batch").to_numpy() if "batch" in items.column_names else np.zeros(len(ids), np.int32)
    lens = np.array([len(u) for u in users], np.int64)
    pairs = pa.table({"batch": pa.array(np.repeat(batch, lens), pa.int32()), "item_id": pa.array(np.repeat(ids, lens), pa.int64()),
                      "user_id": pa.array(np.concatenate([*users, np.zeros(0, np.int64)]), pa.int64())})
    if c.update_mix <= 0:  # filter only: the simulator could not change anything, do not run it
        probs = [np.zeros(len(u)) for u in users]
    else:
        prepare = getattr(simulator, "prepare", None)
        if callable(prepare):
            prepare(ctx, items, pairs)
        probs = simulator.simulate_batch(items, users)
    if len(probs) != len(users):
        raise ValueError(f"coldllm simulator returned {len(probs)} probability arrays for {len(users)} items")
    u_ids, u_emb = user_lookup(np.unique(pairs.column("user_id").to_numpy()))
    rank_by = lift_scores(users, probs) if c.select_by == "lift" else None
    emb, n_sim = updated_embeddings(filter_emb, users, probs, u_ids, u_emb, c.simulated_positives, c.min_probability, c.update_mix,
                                    rank_by, contrast=c.update == "contrast")
    table = search_candidates(ids, emb, index.search, k)
    stats = {"items": int(len(ids)), "filtered_pairs": int(pairs.num_rows),
             "items_updated": int((n_sim > 0).sum()), "mean_simulated_positives": round(float(n_sim.mean()), 3),
             "mean_probability": round(float(np.mean(np.concatenate([*map(np.asarray, probs), np.zeros(0)]))) if pairs.num_rows else 0.0, 5)}
    return table, stats


class ColdLLMChannel(Channel):
    name = NAME

    def __init__(self) -> None:
        self.last_stats: dict[str, Any] = {}
        self.simulator: Any = None

    def retrieve(self, ctx, items_df):
        from dualrec.channels.next_user import user_table
        from models.ann import load_index
        from models.coldllm import encode_items, filter_embeddings, load_filter

        lake, day, cfg = ctx.lake, ctx.day, ctx.cfg
        model = load_filter(lake, day)
        index = load_index(lake, "user_index", day)
        items = with_cutoff(items_df, day, cfg.dispatch.batches_per_day).select(*_ITEM_COLS, "batch", "cutoff")
        items = items.orderBy("item_id").toArrow()
        f = filter_embeddings(model, encode_items(items, model.spec))
        sim = self.simulator = load_simulator(cfg.coldllm.simulator)
        emb_df = lake.read_df(ctx.spark, "user_embeddings", [day], with_dt=False)

        def lookup(uids):
            only = ctx.spark.createDataFrame(pa.table({"user_id": pa.array(uids, pa.int64())}))
            t = user_table(emb_df, only)
            return t.ids, t.emb

        table, stats = coldllm_search(f, items, index, sim, lookup, cfg, self.k(cfg), ctx)
        self.last_stats = stats
        log.info("coldllm: %s -> %d candidates", stats, table.num_rows)
        return driver_candidates(ctx, table)


CHANNEL = ChannelSpec(
    name=NAME,
    factory=ColdLLMChannel,
    k=300,
    enabled=False,
    tables=("user_embeddings",),
    artifacts=(NAME, "user_index"),
    trainer="dualrec.channels.coldllm:train",
    trained_in="similarity",
    order=4,
    doc="ColdLLM coupled funnel: content filter -> interaction simulator (default: the ranker) -> updated embedding",
)

__all__ = ["CHANNEL", "ColdLLMChannel", "InteractionSimulator", "RankerSimulator", "coldllm_search", "load_simulator", "train"]
