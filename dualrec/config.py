"""One configuration object for the whole pipeline, validated by pydantic v2.

Every knob lives here (no constants scattered in modules) so that a YAML/TOML/JSON file, the
CLI (``--set key=value``) and the Airflow DAG override the same thing. Defaults follow the paper
(L=200 users per item, Q=10 items per user per day).

Why so strict: a configuration that runs but means nothing (a typo that drops a feedback weight,
a negative slack, a bool as Q, a channel that does not exist) costs a whole day of stages before
anyone notices. So every section refuses unknown keys, every choice is a ``Literal``, every
number is finite and bounded (the bounds are in :meth:`DualRecConfig.model_json_schema`), ints
are strict (``True`` is not a Q) and the channel names are checked against the channel registry
at load time. Every failure is a :class:`ConfigError` (a ``ValueError``: CLI exit 2) that names
the key path and the bad value.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import tomllib
import typing
import zlib
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.feedback import RANK_TASKS, VISIBLE_FEEDBACKS

FEEDBACKS: tuple[str, ...] = RANK_TASKS
"""The M=6 feedback types predicted by the ranker (paper 5.1.2); defined in schemas.feedback."""

EXPLICIT_FEEDBACKS: tuple[str, ...] = VISIBLE_FEEDBACKS
"""Feedback the creator can see; used as two-tower positives and in truth metrics."""

Feedback = Literal[RANK_TASKS]  # type: ignore[valid-type]  # the keys of rank.beta

DEFAULT_BETA: dict[str, float] = {
    "like": 1.0,
    "comment": 2.0,
    "follow": 3.0,
    "share": 2.0,
    "profile_enter": 0.5,
    "long_view": 0.05,
}


class ConfigError(ValueError):
    """A configuration that must not run; the message names the key path(s) and the bad value(s)."""


_channel_registry: Callable[[], Collection[str]] | None = None


def use_channel_registry(names: Callable[[], Collection[str]] | None) -> None:
    """Install the source of the registered retrieval-channel names.

    ``retrieval.channels`` and the keys of ``retrieval.k`` are checked against it when a config
    is built, so a mistyped channel stops the run at load time, not in the retrieve stage.
    The registry lives in :mod:`dualrec.channels` (a higher layer than this module), which
    installs it when imported; every entry point (:func:`jobs.common.load_config`) installs it
    explicitly. Without one, channel names are checked only when the channels are resolved.
    """
    global _channel_registry
    _channel_registry = names


def known_channels() -> list[str] | None:
    """The registered channel names, or None when no registry is installed."""
    return None if _channel_registry is None else sorted(_channel_registry())


def step_seed(seed: int, day, step: str) -> int:
    """Deterministic seed for one random step: config seed, the date and the step name."""
    return (seed * 1_000_003 + day.toordinal() * 7919 + zlib.crc32(step.encode())) % (2**31 - 1)


class _Section(BaseModel):
    """Shared rules: unknown keys refused, strict types (no bool for int, no str for float),
    finite floats only, and assignments are validated too."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        validate_assignment=True,
        validate_default=True,
    )


_SECRET_KEY = re.compile(r"secret|password|passwd|token|access\.key|credential(?!s\.provider)", re.IGNORECASE)
"""Spark/Hadoop conf keys that carry credentials (``fs.s3a.secret.key``, ``...session.token`` ...)."""


class SparkConfig(_Section):
    """Spark session settings; local mode by default, a cluster by changing ``master``."""

    master: str = Field("local[*]", min_length=1)
    app_name: str = Field("dualrec", min_length=1)
    shuffle_partitions: int = Field(8, ge=1)
    driver_memory: str = Field("6g", pattern=r"^[0-9]+([kKmMgGtTpP][bB]?)?$", description="JVM size, e.g. 512m, 6g")
    arrow_batch_size: int = Field(10000, ge=1)
    log_level: Literal["ALL", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF", "TRACE"] = Field(
        "ERROR", description="Spark's own (JVM) log level; WARN shows a planner warning per dispatch batch"
    )
    conf: dict[str, str] = Field(
        default_factory=dict,
        description="free-form Spark conf (key -> value); --set spark.conf.<key with dots>=<value> sets one entry; "
        "credentials are refused (give them through the environment)",
    )

    @field_validator("conf", mode="before")
    @classmethod
    def _conf_scalars_as_text(cls, v: Any) -> Any:
        """YAML turns ``4`` and ``true`` into numbers and bools; Spark wants their text."""
        if not isinstance(v, dict):
            return v
        return {k: (("true" if x else "false") if isinstance(x, bool) else str(x) if isinstance(x, (int, float)) else x)
                for k, x in v.items()}

    @field_validator("conf")
    @classmethod
    def _no_credentials(cls, v: dict[str, str]) -> dict[str, str]:
        secret = [k for k in v if _SECRET_KEY.search(k)]
        if secret:
            # the value is never echoed; config files end up in repos, DAG params and logs
            raise ValueError(
                f"must not hold credentials ({', '.join(sorted(secret))}): give them through the environment "
                "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, read by Spark's s3a and PyArrow) "
                "or the Airflow Spark connection"
            )
        return v


class ActivityConfig(_Section):
    """User activity prediction (paper 4.2.1)."""

    lookback_days: int = Field(30, ge=1)
    train_target_days: int = Field(
        7, ge=1,
        description="7 = every weekday once: the training days D-6..D-1 then include the weekday of D+1 "
        "(the latest labelled day D is the early-stopping set)",
    )
    max_train_rows: int = Field(400_000, ge=1)
    policy: Literal["top_n", "value", "probability"] = Field(
        "top_n",
        description="top_n: keep the N most likely users, N = items * L / Q * slack, capped at the expected visitors; "
        "value: N maximises a model of the day's expected feedback (dualrec.activity.value_sized_n: ~ items * L / Q, "
        "no sum-p cap); probability: keep users with p_active >= probability_threshold",
    )
    probability_threshold: float = Field(0.5, gt=0, le=1)
    slack: float = Field(3.0, gt=0)
    min_available: int = Field(0, ge=0)
    expected_active_cap: float = Field(
        1.0, ge=0,
        description="top_n: N is also capped at ceil(expected_active_cap * sum(p_active)), the model's expected "
        "number of visitors tomorrow; 0 disables the cap (pure demand-derived N)",
    )
    value_min_p: float = Field(
        0.0, ge=0, le=1,
        description="value: users below this p_active are never made available (the least a pair to an absent user "
        "must be worth); 0 = every user with p_active > 0 is eligible",
    )
    n_estimators: int = Field(300, ge=1)
    max_depth: int = Field(6, ge=1)
    learning_rate: float = Field(0.1, gt=0, le=1)
    early_stopping_rounds: int = Field(20, ge=0, description="0 disables early stopping")
    subsample: float = Field(0.9, gt=0, le=1)
    colsample_bytree: float = Field(0.9, gt=0, le=1)


class TwoTowerConfig(_Section):
    """Two-tower retrieval model and the user ANN index (paper 3.2.2)."""

    dim: int = Field(32, ge=1)
    hidden: int = Field(128, ge=1)
    train_window_days: int = Field(14, ge=1)
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(1024, ge=1)
    lr: float = Field(0.003, gt=0)
    negatives_per_positive: int = Field(4, ge=0)
    in_batch_negatives: bool = True
    item_id_dropout: float = Field(0.5, ge=0, le=1)
    id_buckets: int = Field(1 << 18, ge=2, description="hash buckets; bucket 0 is reserved for masked IDs")
    warm_start: bool = True
    incremental: bool = Field(
        True,
        description="a warm start trains only on the positive pairs the previous model has not seen (first positive "
        "after its training window, plus feedback on its day's own uploads, which it left out); False retrains on "
        "the whole window every day",
    )
    replay_ratio: float = Field(
        1.0,
        ge=0,
        description="incremental warm start: also replay this many x the new pairs, a hash-sampled (seeded, rerun-stable) "
        "set of the window's pairs the previous model has already seen. Why: fine-tuning on one day's new pairs alone "
        "drifts the towers (small, BENCHMARKS section 8 session 7: two-tower truth recall 0.234 with 0, 0.241 with 0.5, "
        "0.266 with 1, full retraining 0.251); 1 keeps the recall at 2 days of pairs instead of 14. 0 = new pairs only",
    )
    train_without_uploads: bool = Field(
        False,
        description="False: a day without uploads keeps the previous model and publishes an empty user_embeddings "
        "partition and user index (nothing retrieves that day; the next day trains on a window that includes it)",
    )
    max_train_pairs: int = Field(
        2_000_000, ge=1, description="positive pairs trained on, a hash-ranked sample drawn on the executors (bounds the driver)"
    )
    negative_pool_max_users: int = Field(
        200_000, ge=1,
        description="negatives are drawn from a hashed subset of at most this many of the window's pool users (bounds the "
        "user features collected to the driver: sampled pairs' users + this)",
    )
    exact_max: int = Field(100_000, ge=0, description="index: exact below this many vectors, IVF above")
    ivf_nlist: int = Field(0, ge=0, description="0 = 4*sqrt(n)")
    ivf_nprobe: int = Field(32, ge=1)
    recall_queries: int = Field(200, ge=1)
    recall_k: int = Field(200, ge=1)
    id_dim: int = Field(16, ge=1, description="width of the hashed ID embeddings")
    cat_buckets: int = Field(1024, ge=2, description="small categoricals are hashed to this many buckets")
    item_lookback_days: int = Field(
        30, ge=1, description="how far back items are read to find the content of items liked inside the training window"
    )
    exclude_day_uploads: bool = Field(
        True,
        description="leave out feedback on items uploaded on D itself (the items this run dispatches), so the model "
        "and the users' liked-content summary never see feedback on the items being served",
    )
    infer_batch_rows: int = Field(8192, ge=1)
    ivf_train_max: int = Field(200_000, ge=1, description="points sampled to train the IVF coarse quantizer")
    recall_target: float = Field(
        0.95, gt=0, le=1, description="IVF nprobe is doubled at build time until recall@recall_k reaches this"
    )
    torch_threads: int = Field(2, ge=1, description="intra-op threads for training (1 is faster on a crowded machine)")

    @model_validator(mode="after")
    def _some_negatives(self) -> "TwoTowerConfig":
        if self.negatives_per_positive == 0 and not self.in_batch_negatives:
            raise ValueError("negatives_per_positive=0 with in_batch_negatives=false leaves the softmax no negatives")
        return self


class SimilarityConfig(_Section):
    """Similarity services S^I, S^U and H^I (paper 3.2.1)."""

    item_window_days: int = Field(7, ge=1)
    item_k: int = Field(20, ge=1)
    user_k: int = Field(20, ge=1)
    positives_window_days: int = Field(14, ge=1)
    positives_cap: int = Field(200, ge=1)


def _channel_enum(schema: dict[str, Any]) -> None:
    if (names := known_channels()) is not None:
        schema.setdefault("items", {})["enum"] = names


def _channel_keys(schema: dict[str, Any]) -> None:
    if (names := known_channels()) is not None:
        schema["propertyNames"] = {"enum": names}


def _unregistered(names: Collection[str]) -> str | None:
    known = known_channels()
    unknown = [c for c in names if known is not None and c not in known]
    if unknown:
        return f"unknown channel(s) {', '.join(unknown)}; registered: {', '.join(known or [])}"
    return None


class RetrievalConfig(_Section):
    """Retrieval channels and their per-channel K (paper 3.2, Eq. 5 and 8)."""

    channels: list[str] | None = Field(
        default=None,
        min_length=1,
        description="enabled channels, registered names only (dualrec.channels.registered_names); "
        "null = the channels the registry enables by default",
        json_schema_extra=_channel_enum,
    )
    k: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict,
        description="per-channel K overrides (>= 1); a channel without one uses the K its module declares",
        json_schema_extra=_channel_keys,
    )
    i2u2u_creator_seed: bool = Field(
        False,
        description="our extension: seed i2u2u with the creator's recently engaged users (positives on the "
        "creator's earlier items), so an item without feedback yet is not empty",
    )
    i2u2u_creator_seed_weight: float = Field(0.5, gt=0, description="seed weight relative to the item's own positives")
    creator_seed_days: int = Field(14, ge=1, description="how far back the creator's earlier items are looked up")
    two_tower_driver_max_items: int = Field(
        0, ge=0,
        description="two_tower: at most this many items per day are searched on the driver; above it the search runs "
        "in mapInArrow with model + index broadcast (0: always mapInArrow, faster when measured)",
    )
    search_batch: int = Field(1024, ge=1, description="item queries per FAISS call")
    exclude_seen: bool = Field(
        True,
        description="drop (item, user) pairs where the user already interacted with the item before the item's "
        "micro-batch cutoff: they would spend a dispatch slot on an item already seen",
    )

    @field_validator("channels")
    @classmethod
    def _channels_registered(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if msg := _unregistered(v):
            raise ValueError(msg)
        dup = sorted({c for c in v if v.count(c) > 1})
        if dup:
            raise ValueError(f"channel(s) listed twice: {', '.join(dup)}")
        return v

    @field_validator("k")
    @classmethod
    def _k_registered(cls, v: dict[str, int]) -> dict[str, int]:
        if msg := _unregistered(sorted(v)):
            raise ValueError(msg)
        return v


class PromoConfig(_Section):
    """PROMO (pinnacle-feedback prompts, issue 18) as a switch of the ranker; off unless it measures better.

    Pinnacle value of a user's feedback on an item: v_ui = alpha * CR + beta * IR, with CR the
    completion-rate-like value min(play_time_ms / duration_ms, 1) (the paper's staying time) and
    IR the interaction-rate-like value, the share of the 5 creator-visible feedbacks given
    (like, comment, follow, share, profile_enter: the paper's like / follow score). Pinnacle users:
    the top ``k`` positive users (any visible feedback or a long view) by v_ui before the cutoff.
    """

    enabled: bool = False
    variant: Literal["promo", "m", "t"] = Field(
        "promo",
        description="promo: item-wise personalised prompt network; m (PROMO-M): one shared prompt network; "
        "t (PROMO-T): pooled pinnacle users as a plain input feature (no prompt network, no pinnacle loss)",
    )
    alpha: float = Field(1.0, ge=0, description="weight of CR in v_ui")
    beta: float = Field(1.0, ge=0, description="weight of IR in v_ui")
    k: int = Field(8, ge=1, description="pinnacle users per item")
    negatives: int = Field(8, ge=0, description="negative-feedback users per item (the latest before the cutoff)")
    lambda_pinnacle: float = Field(0.05, ge=0, description="weight of the pinnacle-feedback prompt-enhanced loss")
    lambda_popularity: float = Field(0.1, ge=0, description="weight of the popularity-aware prompt-enhanced loss")
    cold_positives: int = Field(5, ge=0, description="an item is cold while it has at most this many positive users so far")
    pseudo_neighbours: int = Field(5, ge=1, description="S^I neighbours searched (by sim) for pseudo-pinnacle users")

    @field_validator("beta")
    @classmethod
    def _value_not_zero(cls, v: float, info) -> float:
        if v == 0 and info.data.get("alpha", 1.0) == 0:
            raise ValueError("alpha and beta are both 0: every feedback would have the same pinnacle value")
        return v


class RankConfig(_Section):
    """Multi-task ranker and score integration (paper 3.3, Eq. 10)."""

    promo: PromoConfig = Field(default_factory=PromoConfig)

    train_window_days: int = Field(7, ge=1)
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(2048, ge=1)
    lr: float = Field(0.002, gt=0)
    emb_dim: int = Field(16, ge=1)
    hidden: int = Field(128, ge=1)
    sample_augmentation: bool = True
    extra_features: bool = True
    warm_start: bool = True
    train_without_uploads: bool = Field(
        False,
        description="False: a day without candidates keeps the previous model (its train_end stays, so the next "
        "warm start covers the day) and publishes an empty ranked partition",
    )
    cadence_days: int = Field(1, ge=1, description="> 1: a model younger than this many days is reused")
    max_train_rows: int = Field(
        2_000_000, ge=1,
        description="training exposures, a hash sample drawn before the features (also capped by spark.driver.maxResultSize); "
        "400k cost 0.011-0.022 AUC per task at small (BENCHMARKS 8), so the default stays",
    )
    beta: dict[Feedback, Annotated[float, Field(ge=0)]] = Field(
        default=DEFAULT_BETA,
        description="Eq. 10 weight per feedback type (>= 0, at least one > 0), merged over the defaults",
    )
    theta_prior_strength: float = Field(
        20.0, gt=0,
        description="theta_u = (explicit positives + prior_strength * global_rate) / (impressions + prior_strength)",
    )
    user_window_days: int = Field(14, ge=1, description="point-in-time user history window")
    item_history_days: int = Field(7, ge=1, description="item 'so far' history")
    item_lookback_days: int = Field(30, ge=1, description="item lookup range")
    profile_dim: int = Field(16, ge=1, description="content embeddings are projected (fixed seeded map) to this width")
    rate_prior_strength: float = Field(10.0, gt=0, description="smoothing of per-item/creator/user positive rates")
    id_buckets: int = Field(1 << 17, ge=2)
    cat_buckets: int = Field(64, ge=2)
    score_batch_rows: int = Field(
        4096, ge=1,
        description="pairs per model call when scoring (measured on small: 4096 beats 8192 by ~8 %, the batch stays in cache)",
    )
    torch_threads: int = Field(
        2, ge=1,
        description="training threads (capped at the cores; OpenMP waits passively, see models/__init__.py)",
    )

    @field_validator("beta", mode="before")
    @classmethod
    def _beta_over_defaults(cls, v: Any) -> Any:
        return {**DEFAULT_BETA, **v} if isinstance(v, dict) else v

    @field_validator("beta")
    @classmethod
    def _beta_not_all_zero(cls, v: dict[str, float]) -> dict[str, float]:
        if not any(w > 0 for w in v.values()):
            raise ValueError("at least one feedback weight must be > 0 (all zero makes every score 0)")
        return v


class DispatchConfig(_Section):
    """Available-user store and capacity-constrained assignment (paper 4, Algorithm 1)."""

    L: int = Field(200, ge=1, description="users per item")
    Q: int = Field(10, ge=1, description="items per user per day (|D_u| <= Q)")
    batches_per_day: int = Field(24, ge=1, le=1440, description="micro-batches per day (at most one a minute)")
    policy: Literal["arrival", "matching", "paced", "optimal"] = Field(
        "optimal",
        description="arrival (Algorithm 1), matching (greedy per batch), paced (online per-item budgets) or "
        "optimal (whole-day min-cost flow with a coverage floor); see dualrec/dispatch/policies.py",
    )
    boost_lambda: float = Field(1.0, gt=0, description="f' = f + lambda * g for items in D_u (Eq. 14)")
    forecast_days: int = Field(7, ge=0, description="paced: earlier days whose upload curves forecast the rest of the day")
    optimal_floor_share: float = Field(1.0, ge=0, description="optimal: floor = ceil(share * fair share m)")
    optimal_floor_bonus: float = Field(1.0, ge=0, description="optimal: bonus per user up to the floor, in units of max g")
    optimal_cover_bonus: float = Field(1.0, ge=0, description="optimal: extra bonus for an item's first user (units of max g)")
    optimal_floor_tiers: int = Field(
        2, ge=1, le=64,
        description="optimal: > 1 cuts the floor into this many tiers with bonus decreasing tier by tier "
        "(a concave floor: every item's first tier is filled before any item's next); 1 = a flat floor. "
        "2 measured best on the creator figures within 1.6 % of the flat floor's feedback (BENCHMARKS 6b)",
    )
    weight_by_p_active: bool = Field(False, description="paced/optimal rank pairs by g * p_active instead of g (measured worse)")
    optimal_max_flow_edges: int = Field(
        12_000_000, ge=1,
        description="optimal: above this many edges the day's flow is split into ceil(edges / this) user-hash shards "
        "(one flow each; Q stays exact, each item's L and floor are split by its edges per shard). 12M keeps medium "
        "(11.4M) one exact flow; one flow of 11M edges peaked at ~5 GiB in the Python worker",
    )


class MetricsConfig(_Section):
    """Evaluation (SPEC 6): sample sizes that keep truth-based metrics cheap at large scale."""

    max_items: int = Field(2000, ge=1, description="truth metrics, baselines and the optimum use at most this many items")
    optimum_max_pairs: int = Field(
        250_000_000, ge=1,
        description="the optimum's bound scores every (item, user) pair up to this many; beyond it only the users with "
        "the largest upper bound of w are scored and the others enter the bound as Q * that upper bound "
        "(quality.optimum_screened_users): the bound stays a bound, the gap says how tight",
    )
    optimum_top_m: int | None = Field(None, ge=1, description="users per item in the first flow of the optimum (default L)")
    optimum_top_k: int | None = Field(None, ge=1, description="items per user in the first flow of the optimum (default 4Q)")
    optimum_rounds: int = Field(3, ge=1, description="flow + pricing rounds of the optimum (column generation)")
    optimum_cache_pairs: int = Field(
        64_000_000, ge=0,
        description="the optimum keeps its scored grid in memory (4 bytes a pair) when items x users is at most this; a "
        "larger grid is scored again in every pricing round (same figures: the cache only saves time)",
    )
    optimum_tolerance: float = Field(
        1e-4, gt=0, description="relative gap between the optimum's bounds under which it counts as exact (certified)"
    )
    truth_chunk_pairs: int = Field(2_000_000, ge=1, description="pairs per Truth call (memory bound)")
    size_curve_fractions: list[Annotated[float, Field(gt=0, le=100)]] = Field(
        [0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0],
        description="activity.size_curve: the day's dispatch is re-run for N = round(f * available users) for each f "
        "(plus the N of each activity policy); points above the available users are null (no ranked scores); [] = off",
    )
    calibration_bins: int = Field(10, ge=1)


ARM_KEYS: tuple[str, ...] = (
    "dispatch.policy", "dispatch.L", "dispatch.Q", "dispatch.forecast_days", "dispatch.optimal_floor_share",
    "dispatch.optimal_floor_bonus", "dispatch.optimal_cover_bonus", "dispatch.weight_by_p_active",
    "dispatch.optimal_floor_tiers", "dispatch.optimal_max_flow_edges",
)
"""Keys an experiment arm may override: the dispatch stage runs once per arm, every earlier stage
(activity, models, indexes, candidates, ranking) runs once for all arms, so only dispatch knobs can
differ. ``dispatch.batches_per_day`` is shared (``ranked`` carries the batch of each upload) and
``dispatch.boost_lambda`` is applied by the boost job with one value (docs/experiments.md)."""

DEFAULT_SALT = 0x5EED_AB01
"""Experiment salt when none is configured; keep it across days so an id keeps its arm."""


def _is_config_key(dotted: str) -> bool:
    """True when ``dotted`` names a field (or a section) of :class:`DualRecConfig`."""
    model: Any = DualRecConfig
    for part in dotted.split("."):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return True  # inside a map (rank.beta.like): the map's own validation decides
        f = model.model_fields.get(part)
        if f is None:
            return False
        model = f.annotation
    return True


class ArmConfig(_Section):
    """One arm of a co-diverted experiment: its traffic share and its config overrides."""

    share: float = Field(gt=0, le=1, description="share of creators and (the same) share of users")
    overrides: dict[str, bool | int | float | str] = Field(
        default_factory=dict, description=f"dotted key -> value, keys among: {', '.join(ARM_KEYS)}"
    )

    @field_validator("overrides")
    @classmethod
    def _arm_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            if key not in ARM_KEYS:
                if not _is_config_key(key):
                    raise ValueError(f"unknown config key {key!r}; per-arm keys: {', '.join(ARM_KEYS)}")
                why = ("shared by all arms" if key.startswith("dispatch.")
                       else f"the stages of section {key.split('.', 1)[0]!r} run once for all arms")
                raise ValueError(f"{key!r} cannot vary per arm ({why}); per-arm keys: {', '.join(ARM_KEYS)}")
        return v


class ExperimentConfig(_Section):
    """User-creator co-diverted A/B experiment (paper 5.1.1); no arms or one arm = a plain run."""

    arms: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")], ArmConfig] = Field(
        default_factory=dict, description="arm name -> {share, overrides}; shares sum to 1"
    )
    salt: int = Field(DEFAULT_SALT, ge=0, le=2**63 - 1, description="hash salt of the assignment; keep it stable")
    control: str = Field("control", min_length=1, description="the arm differences are taken against")
    bootstrap: int = Field(2000, ge=100, description="bootstrap replicates over creators for the intervals")
    confidence: float = Field(0.95, gt=0, lt=1)

    @model_validator(mode="after")
    def _shares(self) -> "ExperimentConfig":
        if self.arms:
            total = sum(a.share for a in self.arms.values())
            if abs(total - 1.0) > 1e-9:
                raise ValueError(f"arm shares must sum to 1, got {total:g} ({', '.join(f'{k}={a.share:g}' for k, a in self.arms.items())})")
        if len(self.arms) >= 2 and self.control not in self.arms:
            raise ValueError(f"control arm {self.control!r} is not an arm (arms: {', '.join(self.arms)})")
        return self


REFERENTIAL_CHECKS: tuple[str, ...] = ("interactions_items", "interactions_users", "visits_users", "interaction_after_upload")
SANITY_GATES: tuple[str, ...] = ("available_users", "candidates", "matches")
RefCheck = Literal[REFERENTIAL_CHECKS]  # type: ignore[valid-type]
Gate = Literal[SANITY_GATES]  # type: ignore[valid-type]


class ValidationConfig(_Section):
    """What a stage accepts from upstream (docs/reliability.md lists every check)."""

    allow_missing: list[Annotated[str, Field(pattern=r"^[a-z_]+:[0-9]{4}-[0-9]{2}-[0-9]{2}$")]] = Field(
        default_factory=list,
        description="partitions accepted as absent inside a read window, as 'table:YYYY-MM-DD' "
        "(recorded in the stage's stats and _validation/_stages; never silent)",
    )
    referential: dict[RefCheck, Literal["error", "drop_and_report"]] = Field(
        default_factory=lambda: {c: "error" for c in REFERENTIAL_CHECKS},
        description="per referential check: error (stop the stage) or drop_and_report (leave the rows out, count them)",
    )
    expect_empty: list[Gate] = Field(
        default_factory=list, description="sanity gates a day may fail without failing the run"
    )
    cache: bool = Field(True, description="reuse a partition's validation while its listing (names, sizes, mtimes) is unchanged")

    @field_validator("referential", mode="before")
    @classmethod
    def _referential_over_defaults(cls, v: Any) -> Any:
        return {**{c: "error" for c in REFERENTIAL_CHECKS}, **v} if isinstance(v, dict) else v

    @field_validator("allow_missing")
    @classmethod
    def _real_dates(cls, v: list[str]) -> list[str]:
        for entry in v:
            dt.date.fromisoformat(entry.split(":", 1)[1])
        return v


class NextUserConfig(_Section):
    """Next-user generative retrieval channel (papers/next-user-retrieval.txt), small CPU defaults."""

    train_window_days: int = Field(14, ge=1, description="warm items uploaded in [D-W, D-1], their positives up to D")
    max_seq: int = Field(50, ge=1, description="positive users per sequence (paper: 50)")
    min_positives: int = Field(1, ge=1, description="training items need at least this many positives")
    max_train_items: int = Field(20_000, ge=1)
    samples_per_item: int = Field(4, ge=1, description="random cut points per item and epoch (0 = no positive yet)")
    max_exposed_negatives: int = Field(8, ge=0, description="exposed-but-not-interacted users per sample (CE loss)")
    dim: int = Field(32, ge=1)
    heads: int = Field(2, ge=1)
    layers: int = Field(1, ge=1)
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(0.003, gt=0)
    temperature: float = Field(0.1, gt=0)
    loss_contrastive: float = Field(1.0, ge=0, description="loss weights (lambda_1..3 of Eq. 4); 0 switches a loss off")
    loss_ce: float = Field(0.5, ge=0)
    loss_aux: float = Field(0.1, ge=0)
    prefix_prompts: bool = Field(True, description="architecture switches: the paper's ablations")
    cls_token: bool = True
    causal: bool = True
    id_buckets: int = Field(1 << 16, ge=2)
    cat_buckets: int = Field(256, ge=2)
    warm_start: bool = True
    torch_threads: int = Field(1, ge=1)
    infer_batch: int = Field(1024, ge=1)


class ColdLLMConfig(_Section):
    """ColdLLM coupled-funnel channel (papers/coldllm-llm-simulator.txt): filter -> simulator -> updated
    embedding. Small CPU defaults; the simulator is a "module:Class" (default: our multi-task ranker)."""

    filter_k: int = Field(300, ge=1, description="users the content filter hands to the simulator per item (paper: hundreds)")
    simulator: str = Field(
        "dualrec.channels.coldllm:RankerSimulator",
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="the InteractionSimulator implementation, 'module:Class' (dualrec.channels.coldllm docstring)",
    )
    simulator_tasks: list[Feedback] = Field(
        default_factory=lambda: list(VISIBLE_FEEDBACKS), min_length=1,
        description="RankerSimulator: P(interaction) = 1 - prod(1 - s_m) over these ranker tasks",
    )
    simulated_positives: int = Field(20, ge=1, description="simulated users kept per item, by probability (paper: 20)")
    min_probability: float = Field(0.0, ge=0, le=1, description="a user below this probability is never a simulated positive")
    update: Literal["mean", "contrast"] = Field(
        "contrast",
        description="direction the simulated users add: their weighted mean, or that mean minus the mean of all the "
        "item's filtered users (positives against the filtered negatives)",
    )
    select_by: Literal["probability", "lift"] = Field(
        "probability",
        description="which simulated users are kept: the most probable, or the highest lift p(u,i) / mean_i' p(u,i') "
        "over the day's filtered items (picks item-specific users rather than the generally active ones)",
    )
    update_mix: float = Field(
        0.5, ge=0, le=1,
        description="updated embedding = (1-w) filter + w probability-weighted mean of the simulated users, the mean "
        "rescaled to the filter's norm (0: filter only)",
    )
    filter_target: Literal["item_tower", "positive_users"] = Field(
        "item_tower",
        description="behaviour embedding the filter is distilled from: the two-tower item tower WITH the warm item's "
        "trained ID embedding, or the mean two-tower embedding of the item's positive users",
    )
    train_window_days: int = Field(14, ge=1, description="filter training: warm items uploaded in [D-W, D-1], positives before D")
    min_positives: int = Field(2, ge=1, description="a training item needs this many positive users with an embedding")
    max_positives: int = Field(200, ge=1, description="most recent positive users averaged into an item's behaviour target")
    max_train_items: int = Field(50_000, ge=1)
    hidden: int = Field(128, ge=1)
    id_buckets: int = Field(1 << 16, ge=2)
    cat_buckets: int = Field(256, ge=2)
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(0.003, gt=0)
    cosine_weight: float = Field(1.0, ge=0, description="distillation loss = cosine_weight (1 - cos) + mse_weight MSE")
    mse_weight: float = Field(1.0, ge=0)
    warm_start: bool = True
    torch_threads: int = Field(1, ge=1)


class DualRecConfig(_Section):
    """The single configuration object of the pipeline."""

    seed: int = Field(0, ge=0, le=2**63 - 1)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    activity: ActivityConfig = Field(default_factory=ActivityConfig)
    two_tower: TwoTowerConfig = Field(default_factory=TwoTowerConfig)
    similarity: SimilarityConfig = Field(default_factory=SimilarityConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    next_user: NextUserConfig = Field(default_factory=NextUserConfig)
    coldllm: ColdLLMConfig = Field(default_factory=ColdLLMConfig)
    rank: RankConfig = Field(default_factory=RankConfig)
    dispatch: DispatchConfig = Field(default_factory=DispatchConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)

    @model_validator(mode="after")
    def _arm_overrides_valid(self) -> "DualRecConfig":
        """Every arm's overrides must make a valid config (a bad value stops the run at load time)."""
        if not self.experiment.arms:
            return self
        base = self.model_copy(update={"experiment": ExperimentConfig()})
        for name, arm in self.experiment.arms.items():
            for key, value in arm.overrides.items():
                try:
                    base.with_override(key, value)
                except ConfigError as e:
                    raise ValueError(f"experiment.arms.{name}.overrides: {str(e).removeprefix('invalid config: ')}") from None
        return self

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "DualRecConfig":
        """Build a config from nested dicts; any problem is a :class:`ConfigError` naming the key."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a mapping, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(format_errors(e)) from e

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> "DualRecConfig":
        """Load YAML/TOML/JSON (by extension), then apply dotted ``overrides`` ("dispatch.Q": 5)."""
        data: Any = {}
        if path:
            p = Path(path)
            if not p.is_file():
                raise ConfigError(f"config file not found: {p}")
            text = p.read_text()
            try:
                if p.suffix in (".yaml", ".yml"):
                    data = yaml.safe_load(text) or {}
                elif p.suffix == ".toml":
                    data = tomllib.loads(text)
                elif p.suffix == ".json":
                    data = json.loads(text)
                else:
                    raise ConfigError(f"config file must be .yaml, .yml, .toml or .json: {p}")
            except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
                raise ConfigError(f"config file {p} does not parse: {e}") from None
            if not isinstance(data, dict):
                raise ConfigError(f"config file {p} must hold a mapping at top level")
        cfg = cls.from_dict(data)
        for key, value in (overrides or {}).items():
            cfg = cfg.with_override(key, value)
        return cfg

    def with_override(self, dotted: str, value: Any) -> "DualRecConfig":
        """Return a copy with one dotted key replaced (``dispatch.Q``).

        Inside a map (``spark.conf``, ``rank.beta``, ``retrieval.k``) the rest of the key is one
        map key, dots included: ``spark.conf.spark.executor.memory`` sets ``conf["spark.executor.memory"]``.
        String values are parsed as YAML (JSON is YAML: ``'5'`` -> 5), except for str fields.
        """
        data = self.to_dict()
        node: dict[str, Any] = data
        model: type[BaseModel] = type(self)
        parts = dotted.split(".")
        i = 0
        while True:
            name = parts[i]
            field = model.model_fields.get(name)
            if field is None:
                raise ConfigError(f"unknown config key: {dotted}")
            sub = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) else None
            last = i == len(parts) - 1
            if last:
                node[name] = _parse_value(value, field.annotation is str)
                break
            if sub is not None:
                node, model, i = node[name], sub, i + 1
                continue
            if typing.get_origin(field.annotation) is dict:
                key = ".".join(parts[i + 1 :])
                str_values = typing.get_args(field.annotation)[1] is str
                node[name] = {**node[name], key: _parse_value(value, str_values)}
                break
            raise ConfigError(f"unknown config key: {dotted} ({'.'.join(parts[: i + 1])} is not a section or a map)")
        return DualRecConfig.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _parse_value(value: Any, as_str: bool) -> Any:
    """CLI/Airflow values are YAML text; a str field keeps its text unless it was quoted."""
    if not isinstance(value, str):
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if as_str and not isinstance(parsed, str):
        return value
    return parsed


_TYPE_NAMES = {
    "int_type": "int", "int_parsing": "int", "int_from_float": "int",
    "float_type": "float", "float_parsing": "float",
    "bool_type": "bool", "bool_parsing": "bool",
    "string_type": "str", "dict_type": "dict", "list_type": "list",
    "model_type": "mapping", "model_attributes_type": "mapping",
}


def format_errors(err: ValidationError) -> str:
    """One line per problem: ``path: what is wrong (got value)``; spark.conf values are never echoed."""
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"] if p != "[key]"]
        path = ".".join(loc) or "config"
        secret = path.startswith("spark.conf")
        got = "<hidden>" if secret else _short(e.get("input"))
        typ = e["type"]
        if typ == "extra_forbidden":
            lines.append(f"{path}: unknown key{_known_keys(loc[:-1])}")
        elif typ in _TYPE_NAMES:
            lines.append(f"{path} must be {_TYPE_NAMES[typ]}, got {type(e.get('input')).__name__}"
                         + ("" if secret else f" {got}"))
        elif typ == "value_error":
            lines.append(f"{path}: {e['msg'].removeprefix('Value error, ')}")
        elif typ == "literal_error" and "[key]" in e["loc"]:
            lines.append(f"{path}: unknown key, expected one of {e['ctx']['expected']}")
        else:
            lines.append(f"{path}: {e['msg']} (got {got})")
    head = "invalid config: " if len(lines) == 1 else "invalid config:\n  "
    return head + "\n  ".join(lines)


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def _known_keys(loc: list[str]) -> str:
    """`` (known: a, b, ...)`` for the section at ``loc``, to help with typos."""
    model: Any = DualRecConfig
    for p in loc:
        f = model.model_fields.get(p) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if f is None:
            return ""
        model = f.annotation
    if isinstance(model, type) and issubclass(model, BaseModel):
        return f" (known: {', '.join(model.model_fields)})"
    return ""


def config_json_schema() -> dict[str, Any]:
    """The JSON schema of :class:`DualRecConfig`: every key, its type, default and bounds."""
    return DualRecConfig.model_json_schema()
