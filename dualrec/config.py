"""One configuration object for the whole pipeline.

Every knob lives here (no constants scattered in modules) so that a YAML/TOML file, the
CLI and Airflow DAG params can all override the same thing. Defaults follow the paper
(L=200 users per item, Q=10 items per user per day).
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FEEDBACKS: tuple[str, ...] = ("like", "comment", "follow", "share", "profile_enter", "long_view")
"""The M=6 feedback types predicted by the ranker (paper 5.1.2)."""

EXPLICIT_FEEDBACKS: tuple[str, ...] = ("like", "comment", "follow", "share", "profile_enter")
"""Feedback the creator can see; used as two-tower positives and in truth metrics."""


def step_seed(seed: int, day, step: str) -> int:
    """Deterministic seed for one random step: config seed, the date and the step name."""
    import zlib

    return (seed * 1_000_003 + day.toordinal() * 7919 + zlib.crc32(step.encode())) % (2**31 - 1)


@dataclass
class SparkConfig:
    """Spark session settings; local mode by default, a cluster by changing ``master``."""

    master: str = "local[*]"
    app_name: str = "dualrec"
    shuffle_partitions: int = 8
    driver_memory: str = "6g"
    arrow_batch_size: int = 10000
    conf: dict[str, str] = field(default_factory=dict)


@dataclass
class ActivityConfig:
    """User activity prediction (paper 4.2.1)."""

    lookback_days: int = 30
    # 7 = every weekday once: the training days D-6..D-1 then include the weekday of D+1
    # (the latest labelled day D is the early-stopping set).
    train_target_days: int = 7
    max_train_rows: int = 400_000
    # "top_n": keep the N most likely users, N = items * L / Q * slack;
    # "probability": keep users with p_active >= probability_threshold.
    policy: str = "top_n"
    probability_threshold: float = 0.5
    slack: float = 3.0
    min_available: int = 0
    # top_n: N is also capped at ceil(expected_active_cap * sum(p_active)), the model's expected
    # number of visitors tomorrow; demand beyond that only adds users who will not come.
    # 0 disables the cap (pure demand-derived N).
    expected_active_cap: float = 1.0
    n_estimators: int = 300
    max_depth: int = 6
    learning_rate: float = 0.1
    early_stopping_rounds: int = 20
    subsample: float = 0.9
    colsample_bytree: float = 0.9


@dataclass
class TwoTowerConfig:
    """Two-tower retrieval model and the user ANN index (paper 3.2.2)."""

    dim: int = 32
    hidden: int = 128
    train_window_days: int = 14
    epochs: int = 3
    batch_size: int = 1024
    lr: float = 0.003
    negatives_per_positive: int = 4
    in_batch_negatives: bool = True
    item_id_dropout: float = 0.5
    id_buckets: int = 1 << 18
    warm_start: bool = True
    max_train_pairs: int = 2_000_000
    # index: exact below this many vectors, IVF above
    exact_max: int = 100_000
    ivf_nlist: int = 0  # 0 = 4*sqrt(n)
    ivf_nprobe: int = 32
    recall_queries: int = 200
    recall_k: int = 200
    # feature encoders: hashed ID embeddings of width id_dim; small categoricals hashed to cat_buckets
    id_dim: int = 16
    cat_buckets: int = 1024
    # how far back items are read to find the content of items liked inside the training window
    item_lookback_days: int = 30
    # leave out feedback on items uploaded on D itself (the items this run dispatches), so the
    # model and the users' liked-content summary never see feedback on the items being served
    exclude_day_uploads: bool = True
    infer_batch_rows: int = 8192
    ivf_train_max: int = 200_000  # points sampled to train the IVF coarse quantizer
    recall_target: float = 0.95  # IVF nprobe is doubled at build time until recall@recall_k reaches this
    torch_threads: int = 2  # intra-op threads for training (1 is faster on a crowded machine)


@dataclass
class SimilarityConfig:
    """Similarity services S^I, S^U and H^I (paper 3.2.1)."""

    item_window_days: int = 7
    item_k: int = 20
    user_k: int = 20
    positives_window_days: int = 14
    positives_cap: int = 200


@dataclass
class RetrievalConfig:
    """Retrieval channels and their per-channel K (paper 3.2, Eq. 5 and 8)."""

    # None = the channels the registry enables by default (dualrec.channels.default_channels);
    # k overrides the K each channel declares (dualrec.channels.default_k). Channel names are
    # resolved and checked in dualrec.channels.channel_names, so config imports no channel.
    channels: list[str] | None = None
    k: dict[str, int] = field(default_factory=dict)
    # Our extension (off by default): seed i2u2u with the creator's recently engaged users
    # (positives on the creator's earlier items), so an item without feedback yet is not empty.
    i2u2u_creator_seed: bool = False
    i2u2u_creator_seed_weight: float = 0.5  # seed weight relative to the item's own positives
    creator_seed_days: int = 14  # how far back the creator's earlier items are looked up
    # two_tower: at most this many items per day are searched on the driver; above it the search
    # runs in mapInArrow with model + index broadcast. Measured on small (958 items, K=1000, local[2]):
    # driver 3.7 s (createDataFrame of 958k rows dominates) vs mapInArrow 1.5 s, hence 0 by default.
    two_tower_driver_max_items: int = 0
    search_batch: int = 1024  # item queries per FAISS call
    # drop (item, user) pairs where the user already interacted with the item before the
    # item's micro-batch cutoff: they would spend a dispatch slot on an item already seen
    exclude_seen: bool = True


@dataclass
class NextUserConfig:
    """Next-user generative retrieval channel (papers/next-user-retrieval.txt), small CPU defaults."""

    train_window_days: int = 14  # warm items uploaded in [D-W, D-1], their positives up to D
    max_seq: int = 50  # positive users per sequence (paper: 50)
    min_positives: int = 1  # training items need at least this many positives
    max_train_items: int = 20_000
    samples_per_item: int = 4  # random cut points per item and epoch (a cut at 0 = no positive yet)
    max_exposed_negatives: int = 8  # exposed-but-not-interacted users per sample for the CE loss
    dim: int = 32
    heads: int = 2
    layers: int = 1
    epochs: int = 4
    batch_size: int = 256
    lr: float = 0.003
    temperature: float = 0.1
    # loss weights (lambda_1..3 of Eq. 4); 0 switches a loss off
    loss_contrastive: float = 1.0
    loss_ce: float = 0.5
    loss_aux: float = 0.1
    # architecture switches (the paper's ablations)
    prefix_prompts: bool = True
    cls_token: bool = True
    causal: bool = True
    id_buckets: int = 1 << 16
    cat_buckets: int = 256
    warm_start: bool = True
    torch_threads: int = 1
    infer_batch: int = 1024


@dataclass
class RankConfig:
    """Multi-task ranker and score integration (paper 3.3, Eq. 10)."""

    train_window_days: int = 7
    epochs: int = 2
    batch_size: int = 2048
    lr: float = 0.002
    emb_dim: int = 16
    hidden: int = 128
    sample_augmentation: bool = True
    extra_features: bool = True
    warm_start: bool = True
    cadence_days: int = 1
    max_train_rows: int = 2_000_000
    beta: dict[str, float] = field(
        default_factory=lambda: {
            "like": 1.0,
            "comment": 2.0,
            "follow": 3.0,
            "share": 2.0,
            "profile_enter": 0.5,
            "long_view": 0.05,
        }
    )
    # theta_u = (explicit positives + prior_strength * global_rate) / (impressions + prior_strength)
    theta_prior_strength: float = 20.0
    # features (point-in-time): user history window, item "so far" history, item lookup range
    user_window_days: int = 14
    item_history_days: int = 7
    item_lookback_days: int = 30
    profile_dim: int = 16  # content embeddings are projected (fixed seeded map) to this width
    rate_prior_strength: float = 10.0  # smoothing of per-item/creator/user positive rates
    id_buckets: int = 1 << 17
    cat_buckets: int = 64
    score_batch_rows: int = 8192
    torch_threads: int = 1  # training threads; >1 only pays on dedicated cores (measured: 2 threads 18x slower on a loaded 2-core box)


@dataclass
class DispatchConfig:
    """Available-user store and capacity-constrained assignment (paper 4, Algorithm 1)."""

    L: int = 200
    Q: int = 10
    batches_per_day: int = 24
    policy: str = "arrival"  # "arrival" (Algorithm 1) or "matching" (our improvement)
    boost_lambda: float = 1.0
    # Per-batch assignment engine: "numpy" (one Spark task per batch runs the NumPy kernel via
    # mapInArrow; fastest, see benchmarks/dispatch.py) or "spark" (pure Spark rounds of windows).
    engine: str = "numpy"


@dataclass
class MetricsConfig:
    """Evaluation (SPEC 6): sample sizes that keep truth-based metrics cheap at large scale."""

    # truth metrics, baselines and the oracle run on at most this many of the day's items
    max_items: int = 2000
    # oracle / truth-recall candidate pool: a random subset of this many available users
    oracle_pool_users: int = 20000
    # pairs per Truth call (memory bound)
    truth_chunk_pairs: int = 2_000_000
    calibration_bins: int = 10


@dataclass
class DualRecConfig:
    """The single configuration object of the pipeline."""

    seed: int = 0
    spark: SparkConfig = field(default_factory=SparkConfig)
    activity: ActivityConfig = field(default_factory=ActivityConfig)
    two_tower: TwoTowerConfig = field(default_factory=TwoTowerConfig)
    similarity: SimilarityConfig = field(default_factory=SimilarityConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    next_user: NextUserConfig = field(default_factory=NextUserConfig)
    rank: RankConfig = field(default_factory=RankConfig)
    dispatch: DispatchConfig = field(default_factory=DispatchConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "DualRecConfig":
        """Build a config from nested dicts, rejecting unknown keys (typos must not pass silently)."""
        return _build(cls, data or {}, "config")

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> "DualRecConfig":
        """Load YAML/TOML/JSON (by extension), then apply dotted ``overrides`` ("dispatch.Q": 5)."""
        data: dict[str, Any] = {}
        if path:
            p = Path(path)
            if not p.is_file():
                raise ValueError(f"config file not found: {p}")
            text = p.read_text()
            if p.suffix in (".yaml", ".yml"):
                data = yaml.safe_load(text) or {}
            elif p.suffix == ".toml":
                data = tomllib.loads(text)
            elif p.suffix == ".json":
                data = json.loads(text)
            else:
                raise ValueError(f"config file must be .yaml, .yml, .toml or .json: {p}")
            if not isinstance(data, dict):
                raise ValueError(f"config file {p} must hold a mapping at top level")
        cfg = cls.from_dict(data)
        for key, value in (overrides or {}).items():
            cfg = cfg.with_override(key, value)
        return cfg

    def with_override(self, dotted: str, value: Any) -> "DualRecConfig":
        """Return a copy with one dotted key replaced (e.g. ``dispatch.Q``)."""
        data = self.to_dict()
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], dict):
                raise ValueError(f"unknown config key: {dotted}")
            node = node[part]
        if parts[-1] not in node:
            raise ValueError(f"unknown config key: {dotted}")
        old = node[parts[-1]]
        if isinstance(value, str):
            # CLI/Airflow values are YAML (JSON is YAML): '5' -> 5, '"arrival"' -> 'arrival'
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                parsed = value
            if not isinstance(old, str) or isinstance(parsed, str):
                value = parsed
        node[parts[-1]] = value
        return DualRecConfig.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _build(klass: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(klass)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s) in {where}: {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        f = fields[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}")
        elif isinstance(default, dict) and isinstance(value, dict):
            merged = dict(default)
            merged.update(value)
            kwargs[name] = merged
        else:
            if default is not None and not isinstance(value, type(default)) and not (
                isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool)
            ):
                raise ValueError(
                    f"{where}.{name} must be {type(default).__name__}, got {type(value).__name__}"
                    + ("" if name == "conf" else f" ({value!r})")  # spark conf values may be credentials
                )
            kwargs[name] = float(value) if isinstance(default, float) else value
    cfg = klass(**kwargs)
    _check(cfg, where)
    return cfg


_SECRET_KEY = re.compile(r"secret|password|passwd|token|access\.key|credential(?!s\.provider)", re.IGNORECASE)
"""Spark/Hadoop conf keys that carry credentials (``fs.s3a.secret.key``, ``...session.token`` ...)."""


def _check(cfg: Any, where: str) -> None:
    """Range checks that catch configs that would run but give nonsense."""
    if isinstance(cfg, DispatchConfig):
        if cfg.L < 1 or cfg.Q < 1 or cfg.batches_per_day < 1:
            raise ValueError(f"{where}: L, Q and batches_per_day must be >= 1")
        if cfg.policy not in ("arrival", "matching"):
            raise ValueError(f"{where}.policy must be 'arrival' or 'matching', got {cfg.policy!r}")
        if cfg.engine not in ("numpy", "spark"):
            raise ValueError(f"{where}.engine must be 'numpy' or 'spark', got {cfg.engine!r}")
    if isinstance(cfg, ActivityConfig) and cfg.policy not in ("top_n", "probability"):
        raise ValueError(f"{where}.policy must be 'top_n' or 'probability', got {cfg.policy!r}")
    if isinstance(cfg, SparkConfig):
        secret = [k for k in cfg.conf if _SECRET_KEY.search(str(k))]
        if secret:
            # the value is never echoed; config files end up in repos, DAG params and logs
            raise ValueError(
                f"{where}.conf must not hold credentials ({', '.join(sorted(secret))}): give them through the "
                "environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, read by Spark's s3a and PyArrow) "
                "or the Airflow Spark connection"
            )
    if isinstance(cfg, RetrievalConfig):
        if cfg.channels is not None and (not isinstance(cfg.channels, list) or not all(isinstance(c, str) for c in cfg.channels)):
            raise ValueError(f"{where}.channels must be a list of channel names, got {cfg.channels!r}")
        bad = {c: v for c, v in cfg.k.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1}
        if bad:
            raise ValueError(f"{where}.k values must be integers >= 1: {bad}")
    if isinstance(cfg, NextUserConfig):
        if cfg.max_seq < 1 or cfg.dim < 2 or cfg.heads < 1 or cfg.dim % cfg.heads:
            raise ValueError(f"{where}: max_seq >= 1, dim >= 2 and dim divisible by heads are required")
        if min(cfg.loss_contrastive, cfg.loss_ce, cfg.loss_aux) < 0 or not (cfg.loss_contrastive or cfg.loss_ce):
            raise ValueError(f"{where}: loss weights must be >= 0 with loss_contrastive or loss_ce > 0")
