"""The one retrieval-channel interface, the declarative channel registry and the mixer (paper 3.2, Eq. 5/8).

A channel turns the day's new items into (item_id, user_id, score) candidates. A channel is one
module: it defines a :class:`Channel` subclass and a module-level ``CHANNEL = ChannelSpec(...)``
declaring its name, default K, whether it is enabled by default, the day-D tables and the
artefacts it reads, and (optionally) a trainer run by the stage that produces its artefact.
Everything else is derived from the registry:

- the enabled channels and their K (:func:`channel_names`, :meth:`Channel.k`): the config holds
  only overrides (``retrieval.channels`` None = the registry's enabled channels, ``retrieval.k``
  per-channel overrides);
- the ``candidates`` score columns (``score_<name>``, accepted by pattern by the contract);
- the retrieve stage's channel inputs (:func:`check_channel_inputs`);
- the channel lists of ``evaluate`` and the report (they read channel names from the data).

Modules of this package are discovered on first use (:func:`registered_channels`); a plugin or a
test adds one with :func:`register`. Discovery imports the channel modules, so they import only
light modules at top level (torch, FAISS and Spark are imported where they are used).

Point in time: ``items_df`` carries each item's micro-batch (``batch``); a channel may use only
data strictly before that batch's cutoff (:func:`with_cutoff` adds the cutoff column).
"""

from __future__ import annotations

import abc
import datetime as dt
import importlib
import logging
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from dualrec.lake import LakeError
from dualrec.registry import artifact_producer

log = logging.getLogger(__name__)


class ChannelContext(Protocol):
    """What a channel needs from its caller (the retrieve stage's context satisfies it).

    Defined here so channels never import the stage layer."""

    lake: Any
    day: dt.date
    cfg: Any

    @property
    def spark(self) -> Any: ...

    def seed(self, step: str) -> int: ...


@dataclass(frozen=True)
class ChannelSpec:
    """Declaration of one retrieval channel.

    ``factory`` builds the :class:`Channel` (a class, or "module:Class"); ``tables`` are the
    day-D partitions it reads (checked before the retrieve stage does any work); ``artifacts``
    the ``_models/<name>`` it loads; ``trainer`` ("module:function", ``fn(ctx) -> dict``) is run
    by the stage ``trained_in`` when the channel is enabled; ``order`` sorts the default list.
    """

    name: str
    factory: Any
    k: int
    enabled: bool = True
    tables: tuple[str, ...] = ()
    artifacts: tuple[str, ...] = ()
    trainer: str | None = None
    trained_in: str | None = None
    order: int = 100
    doc: str = ""

    @property
    def score_column(self) -> str:
        return f"score_{self.name}"

    def build(self) -> "Channel":
        f = self.factory
        if isinstance(f, str):
            mod, cls = f.split(":")
            f = getattr(importlib.import_module(mod), cls)
        obj = f()
        if obj.name != self.name:
            raise ValueError(f"channel {f} has name {obj.name!r}, registered as {self.name!r}")
        return obj


class Channel(abc.ABC):
    """A retrieval channel: finds up to K users for each new item.

    ``retrieve(ctx, items_df)``: ``ctx`` is a :class:`ChannelContext` (lake, day, cfg, spark);
    ``items_df`` has the day's items (columns of the ``items`` table plus ``batch``).
    Returns a Spark DataFrame (item_id long, user_id long, score float), at most K rows per item,
    unique (item_id, user_id), only users of the available set.
    """

    name: str = ""

    @abc.abstractmethod
    def retrieve(self, ctx: ChannelContext, items_df: Any) -> Any:  # pragma: no cover - interface
        ...

    def k(self, cfg) -> int:
        return channel_k(cfg, self.name)


# ---------------------------------------------------------------------- the registry
_REGISTRY: dict[str, ChannelSpec] = {}
_DISCOVERED = False


def _discover() -> None:
    """Import every module of this package once and collect its ``CHANNEL`` declaration."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    import dualrec.channels as pkg

    for m in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if m.name.startswith("_") or m.name == "base":
            continue
        spec = getattr(importlib.import_module(f"{pkg.__name__}.{m.name}"), "CHANNEL", None)
        if isinstance(spec, ChannelSpec):
            _REGISTRY.setdefault(spec.name, spec)


def register(spec: ChannelSpec | str, target: str | None = None, **kw: Any) -> ChannelSpec:
    """Register a channel at runtime (a plugin, a test): a :class:`ChannelSpec`, or a name plus
    "module:Class" (then ``k`` defaults to 100 and the channel is not enabled by default)."""
    _discover()
    if not isinstance(spec, ChannelSpec):
        spec = ChannelSpec(name=spec, factory=target, **{"k": 100, "enabled": False, **kw})
    if not spec.name.isidentifier() or spec.name != spec.name.lower():
        raise ValueError(f"channel name {spec.name!r} must be a lower-case identifier (it names a column)")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a runtime registration (tests)."""
    _REGISTRY.pop(name, None)


def registered_channels() -> dict[str, ChannelSpec]:
    """Every registered channel, name -> spec, in default order (imports no heavy module)."""
    _discover()
    return {s.name: s for s in sorted(_REGISTRY.values(), key=lambda s: (s.order, s.name))}


def registered_names() -> list[str]:
    """Names of every registered channel, sorted."""
    return sorted(registered_channels())


def channel_spec(name: str) -> ChannelSpec:
    specs = registered_channels()
    try:
        return specs[name]
    except KeyError:
        raise ValueError(f"unknown retrieval channel {name!r}; registered: {', '.join(sorted(specs))}") from None


def default_channels() -> list[str]:
    """The channels enabled by default, in registry order (``retrieval.channels`` when unset)."""
    return [n for n, s in registered_channels().items() if s.enabled]


def default_k() -> dict[str, int]:
    """Default K of every registered channel."""
    return {n: s.k for n, s in registered_channels().items()}


REGISTRY = _REGISTRY
"""Name -> :class:`ChannelSpec` (filled on first use; prefer :func:`registered_channels`)."""


def get_channel(name: str) -> Channel:
    """Instantiate a registered channel by name."""
    return channel_spec(name).build()


def channel_names(cfg) -> list[str]:
    """The enabled channels: ``retrieval.channels`` or the registry's defaults (all must be registered)."""
    names = cfg.retrieval.channels
    names = default_channels() if names is None else list(names)
    known = registered_channels()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"retrieval.channels has unregistered channel(s): {', '.join(unknown)}; registered: {', '.join(known)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"retrieval.channels lists a channel twice: {names}")
    return names


def channel_k(cfg, name: str) -> int:
    """K of a channel: ``retrieval.k[name]`` when configured, else the channel's declared default."""
    over = (cfg.retrieval.k or {}).get(name)
    k = int(over) if over is not None else channel_spec(name).k
    if k < 1:
        raise ValueError(f"retrieval.k.{name} must be >= 1, got {k}")
    return k


def channel_tables(names: list[str]) -> tuple[str, ...]:
    """Day-D tables the given channels read (derived inputs of the retrieve stage)."""
    out: list[str] = []
    for n in names:
        out += [t for t in channel_spec(n).tables if t not in out]
    return tuple(out)


def check_channel_inputs(lake, day: dt.date, names: list[str], producer: Callable[[str], str | None] | None = None) -> None:
    """Fail before any work when an enabled channel's table or artefact for ``day`` is missing."""
    for n in names:
        spec = channel_spec(n)
        for t in spec.tables:
            if not lake.has_partition(t, day):
                by = producer(t) if producer else None
                hint = f"; run stage {by!r} for {day} first" if by else ""
                raise LakeError(
                    f"table {t!r}: partition dt={day} is missing at {lake.uri(lake.partition_rel(t, day))} "
                    f"(needed by retrieval channel {n!r}){hint}"
                )
        for a in spec.artifacts:
            if not lake.is_complete(lake.model_rel(a, day)):
                by = artifact_producer(a)
                hint = f"; run stage {by!r} for {day} with this channel enabled first" if by != a else ""
                raise LakeError(
                    f"artefact {a!r} for dt={day} is missing at {lake.uri(lake.model_rel(a, day))} "
                    f"(needed by retrieval channel {n!r}){hint}"
                )


def trained_artifacts() -> dict[str, str]:
    """Artefact -> stage for every registered channel with a trainer: the trainer publishes
    ``_models/<channel name>`` in the stage ``trained_in`` (installed into
    :func:`dualrec.registry.artifact_producer`, so a missing artefact names its stage)."""
    return {n: s.trained_in for n, s in registered_channels().items() if s.trainer and s.trained_in and n in s.artifacts}


def trainers_for(stage: str, names: list[str]) -> list[tuple[str, Callable[[Any], dict]]]:
    """(channel, trainer) of the enabled channels whose artefact the stage ``stage`` produces."""
    out = []
    for n in names:
        s = channel_spec(n)
        if s.trainer and s.trained_in == stage:
            mod, fn = s.trainer.split(":")
            out.append((n, getattr(importlib.import_module(mod), fn)))
    return out


# ---------------------------------------------------------------------- shared Spark helpers
def with_cutoff(items_df, day, batches_per_day: int):
    """Add ``cutoff`` (exclusive end of the item's micro-batch): the channel's data horizon."""
    from pyspark.sql import functions as F

    from dualrec.batches import batch_cutoff_col

    return items_df.withColumn("cutoff", batch_cutoff_col(day, F.col("batch"), batches_per_day))


def available_users(ctx):
    """Users with ``available = true`` in ``activity_scores`` dt=D (the set U~ of Eq. 12)."""
    from pyspark.sql import functions as F

    ctx.lake.require_partition("activity_scores", ctx.day, stage="retrieve")
    df = ctx.lake.read_df(ctx.spark, "activity_scores", [ctx.day], with_dt=False)
    return df.where(F.col("available")).select("user_id").distinct()


def warm_start_model(lake, name: str, day, enabled: bool, load: Callable[[Any, Any], Any], spec) -> tuple[Any, Any]:
    """(model, day it was trained) of the latest ``_models/<name>`` before ``day`` when its spec equals
    ``spec``, else (None, None). Why: a trained channel fine-tunes yesterday's model, but only one of the
    same shape (a config change of the network is a cold start)."""
    from dataclasses import asdict

    warm_from = lake.latest_model_before(name, day) if enabled else None
    if warm_from is None:
        return None, None
    prev = load(lake, warm_from)
    if asdict(prev.spec) == asdict(spec):
        return prev, warm_from
    log.info("%s: model dt=%s has another shape; cold start", name, warm_from)
    return None, None


def driver_candidates(ctx, table):
    """A channel's driver-side result (Arrow ``item_id, user_id, score``) as its output DataFrame,
    restricted to the available users. Why: channels that search on the driver (next_user, coldllm)
    must return the same typed frame, also when they found nothing."""
    from pyspark.sql import types as T

    if table.num_rows == 0:
        return ctx.spark.createDataFrame([], T.StructType([T.StructField("item_id", T.LongType()),
                                                          T.StructField("user_id", T.LongType()),
                                                          T.StructField("score", T.FloatType())]))
    df = ctx.spark.createDataFrame(table)
    return df.join(available_users(ctx), "user_id", "left_semi").select("item_id", "user_id", "score")


def seen_pairs(ctx, items_df):
    """(item_id, user_id) of D's new items that the user already interacted with before the
    item's micro-batch cutoff, i.e. what the dispatcher can know at dispatch time.

    Dispatching an item to a user who has already seen it wastes one of that user's Q slots,
    so :func:`mix` drops these pairs (``retrieval.exclude_seen``). Later interactions are not
    visible at the cutoff and are not used.
    """
    from pyspark.sql import functions as F

    cut = with_cutoff(items_df, ctx.day, ctx.cfg.dispatch.batches_per_day).select("item_id", "cutoff")
    inter = ctx.lake.read_df(ctx.spark, "interactions", [ctx.day], with_dt=False).select("item_id", "user_id", "ts")
    return (
        inter.join(F.broadcast(cut), "item_id")
        .where(F.col("ts") < F.col("cutoff"))
        .select("item_id", "user_id")  # unique: (user_id, item_id) is the interactions key
    )


def top_k_per_item(scored, k: int):
    """Keep the K best users per item (ties broken by user_id, so the result is deterministic)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy("item_id").orderBy(F.col("score").desc(), F.col("user_id").asc())
    return scored.withColumn("_rk", F.row_number().over(w)).where(F.col("_rk") <= k).drop("_rk")


# ---------------------------------------------------------------------- mixer
def score_columns(channels: list[str]) -> list[str]:
    """``score_<channel>`` of the given channels, in order (the candidates contract accepts any
    ``score_<name>`` float column, so a new channel needs no contract edit)."""
    return [f"score_{c}" for c in channels]


def mix(
    channel_dfs: dict[str, Any],
    items_df,
    available_df,
    channel_order: list[str] | None = None,
    exclude_df=None,
):
    """Merge channel outputs per (item, user) with provenance, keeping only available users
    and dropping the (item_id, user_id) pairs of ``exclude_df`` (e.g. :func:`seen_pairs`).

    Output: batch, item_id, user_id, score_<channel> (null when that channel did not find the
    pair), channels (list of the channels that found it, in ``channel_order``).
    """
    from pyspark.sql import functions as F

    order = list(channel_order or channel_dfs)
    cols = score_columns(order)
    parts = []
    for name, df in channel_dfs.items():
        sel = [F.col("item_id").cast("long"), F.col("user_id").cast("long")]
        sel += [
            (F.col("score").cast("float") if c == f"score_{name}" else F.lit(None).cast("float")).alias(c) for c in cols
        ]
        parts.append(df.select(*sel))
    if not parts:
        raise ValueError("mix: no channel outputs to merge")
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.unionByName(p)
    merged = merged.groupBy("item_id", "user_id").agg(*[F.max(c).alias(c) for c in cols])
    prov = F.array(*[F.when(F.col(f"score_{n}").isNotNull(), F.lit(n)) for n in order])
    merged = merged.withColumn("channels", F.filter(prov, lambda x: x.isNotNull()))
    merged = merged.join(available_df.select("user_id"), "user_id", "left_semi")
    if exclude_df is not None:
        merged = merged.join(exclude_df.select("item_id", "user_id"), ["item_id", "user_id"], "left_anti")
    merged = merged.join(items_df.select("item_id", F.col("batch").cast("int")), "item_id", "inner")
    return merged.select("batch", "item_id", "user_id", *cols, "channels")


def channel_shares(df) -> dict[str, float]:
    """Share of candidate/exposure credit per channel; a pair found by n channels gives each 1/n.

    Shares sum to 1 (comparable with the paper's Table 3). Accepts a Spark DataFrame or a pandas
    DataFrame with a ``channels`` list column. Empty input -> {}.
    """
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        from pyspark.sql import functions as F

        ex = df.select(F.explode("channels").alias("ch"), (F.lit(1.0) / F.size("channels")).alias("w"))
        rows = ex.groupBy("ch").agg(F.sum("w").alias("w")).collect()
        credit = {r["ch"]: float(r["w"]) for r in rows}
    else:
        credit: dict[str, float] = {}
        for chs in df["channels"]:
            chs = list(chs)
            for c in chs:
                credit[c] = credit.get(c, 0.0) + 1.0 / len(chs)
    total = sum(credit.values())
    return {c: v / total for c, v in sorted(credit.items())} if total else {}
