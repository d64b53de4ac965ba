"""XGBoost user-activity model (paper 4.2.1): train, predict, save, load. No Spark here.

The model is a plain binary classifier "will user u visit on the target day". It is stored
as XGBoost's own JSON format plus a small ``manifest.json`` (no pickle, no absolute paths),
so any worker can rebuild it from bytes: the Spark prediction broadcasts those bytes once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xgboost as xgb

from dualrec.artifacts import artifact_file, corrupt_error, read_manifest
from dualrec.config import ActivityConfig
from dualrec.lake import parse_date
from dualrec.stats import roc_auc

log = logging.getLogger(__name__)

MODEL_NAME = "activity"
MODEL_FILE = "model.json"
MANIFEST_FILE = "manifest.json"
MODEL_VERSION = 1


# ---------------------------------------------------------------------- metrics
def log_loss(y: np.ndarray, p: np.ndarray, eps: float = 1e-7) -> float | None:
    """Mean binary cross-entropy (None on empty input)."""
    y = np.asarray(y, dtype=np.float64)
    if y.size == 0:
        return None
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


# ---------------------------------------------------------------------- model
@dataclass
class ActivityModel:
    """A trained booster with its feature order and manifest."""

    booster: xgb.Booster
    feature_names: list[str]
    manifest: dict[str, Any] = field(default_factory=dict)

    def model_bytes(self) -> bytes:
        """XGBoost JSON model as bytes (what Spark broadcasts to executors)."""
        return bytes(self.booster.save_raw(raw_format="json"))

    def predict(self, X: np.ndarray) -> np.ndarray:
        return predict(self.booster, X)


def xgb_params(cfg: ActivityConfig, seed: int) -> dict[str, Any]:
    """XGBoost parameters from the config; ``hist`` + fixed threads + seed keep training deterministic."""
    return {
        "objective": "binary:logistic",
        # early stopping watches the LAST metric: log-loss (AUC is reported alongside)
        "eval_metric": ["auc", "logloss"],
        "tree_method": "hist",
        "nthread": 2,
        "max_depth": cfg.max_depth,
        "eta": cfg.learning_rate,
        "subsample": cfg.subsample,
        "colsample_bytree": cfg.colsample_bytree,
        "seed": seed,
    }


def train(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_valid: np.ndarray,
    y_valid: np.ndarray,
    feature_names: list[str],
    cfg: ActivityConfig,
    seed: int,
) -> ActivityModel:
    """Train with early stopping on the validation day; keep only the trees up to the best round."""
    if X_train.shape[0] == 0 or X_valid.shape[0] == 0:
        raise ValueError(f"activity training needs rows: train={X_train.shape[0]}, valid={X_valid.shape[0]}")
    dtrain = xgb.DMatrix(X_train, label=y_train, feature_names=feature_names, nthread=2)
    dvalid = xgb.DMatrix(X_valid, label=y_valid, feature_names=feature_names, nthread=2)
    booster = xgb.train(
        xgb_params(cfg, seed),
        dtrain,
        num_boost_round=cfg.n_estimators,
        evals=[(dvalid, "valid")],
        early_stopping_rounds=cfg.early_stopping_rounds if cfg.early_stopping_rounds > 0 else None,
        verbose_eval=False,
    )
    best = getattr(booster, "best_iteration", None)
    if best is not None and best + 1 < booster.num_boosted_rounds():
        booster = booster[: best + 1]
    p_valid = predict(booster, X_valid)
    manifest = {
        "n_train": int(X_train.shape[0]),
        "n_valid": int(X_valid.shape[0]),
        "train_positive_rate": float(np.mean(y_train)) if y_train.size else None,
        "valid_positive_rate": float(np.mean(y_valid)) if y_valid.size else None,
        "auc": roc_auc(y_valid, p_valid),
        "logloss": log_loss(y_valid, p_valid),
        "best_iteration": int(booster.num_boosted_rounds()) - 1,
        "params": {k: v for k, v in xgb_params(cfg, seed).items()},
        "n_estimators": cfg.n_estimators,
        "early_stopping_rounds": cfg.early_stopping_rounds,
    }
    log.info(
        "activity model: n_train=%d n_valid=%d rounds=%d valid auc=%s logloss=%s",
        manifest["n_train"], manifest["n_valid"], manifest["best_iteration"] + 1, manifest["auc"], manifest["logloss"],
    )
    return ActivityModel(booster, list(feature_names), manifest)


def predict(booster: xgb.Booster, X: np.ndarray) -> np.ndarray:
    """Batched probability prediction (float64)."""
    if X.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    return np.asarray(booster.inplace_predict(np.ascontiguousarray(X, dtype=np.float32)), dtype=np.float64)


def booster_from_bytes(raw: bytes, nthread: int = 1) -> xgb.Booster:
    """Rebuild a booster from JSON bytes (executors use one thread: Spark already runs tasks in parallel)."""
    b = xgb.Booster()
    b.load_model(bytearray(raw))
    b.set_param({"nthread": nthread})
    return b


_CACHE: dict[str, xgb.Booster] = {}


def cached_booster(raw: bytes) -> xgb.Booster:
    """One parsed booster per Python worker and model (workers are reused across tasks)."""
    key = hashlib.sha1(raw).hexdigest()
    b = _CACHE.get(key)
    if b is None:
        _CACHE.clear()
        b = _CACHE[key] = booster_from_bytes(raw)
    return b


# ---------------------------------------------------------------------- persistence
def save(lake, day, model: ActivityModel, extra_manifest: dict[str, Any] | None = None) -> str:
    """Publish ``_models/activity/dt=D/{model.json,manifest.json}`` atomically; returns the relative path."""

    rel = lake.model_rel(MODEL_NAME, day)
    manifest = {
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "dt": parse_date(day).isoformat(),
        "feature_names": model.feature_names,
        "xgboost_version": xgb.__version__,
        **model.manifest,
        **(extra_manifest or {}),
    }
    with lake.publish_dir(rel) as staging:
        with lake.fs.open_output_stream(lake.fs_path(posixpath.join(staging, MODEL_FILE))) as f:
            f.write(model.model_bytes())
        lake.write_text(posixpath.join(staging, MANIFEST_FILE), json.dumps(manifest, indent=2, sort_keys=True, default=str))
    model.manifest = manifest
    return rel


def load(lake, day) -> ActivityModel:
    """Load the model published for ``day``.

    Missing, corrupt or other-version artefacts raise :class:`~dualrec.artifacts.ArtifactError`
    naming the file and the producing stage, so the operator knows what to rerun. The booster
    is parsed from XGBoost JSON (no pickle).
    """

    manifest = read_manifest(lake, MODEL_NAME, day, version=MODEL_VERSION)
    artifact_file(lake, MODEL_NAME, day, MODEL_FILE)
    rel = lake.model_rel(MODEL_NAME, day)
    try:
        names = manifest["feature_names"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("manifest 'feature_names' is not a list of strings")
    except (KeyError, ValueError) as e:
        raise corrupt_error(lake, MODEL_NAME, day, MANIFEST_FILE, e) from e
    try:
        with lake.fs.open_input_stream(lake.fs_path(posixpath.join(rel, MODEL_FILE))) as f:
            raw = f.read()
        booster = booster_from_bytes(raw, nthread=2)
        if booster.num_features() != len(names):
            raise ValueError(f"booster has {booster.num_features()} features, manifest lists {len(names)}")
    except (xgb.core.XGBoostError, ValueError, OSError) as e:
        raise corrupt_error(lake, MODEL_NAME, day, MODEL_FILE, e) from e
    return ActivityModel(booster, list(names), manifest)
