"""Sizes of the synthetic worlds and the knobs of the generative model.

Presets differ only in scale; the behavioural parameters (rates, biases, seasonality) are the
same for every preset so that a model tuned on ``tiny`` behaves alike on ``large``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """Scale and behaviour of one synthetic world."""

    name: str
    users: int  # registered users at the start
    uploads_per_day: int  # expected uploads per day (weekday-modulated)
    # --- scale-independent behaviour
    creators_per_upload: float = 2.0  # creators = uploads_per_day * this (each uploads ~0.5/day)
    max_creator_share: float = 0.2
    new_user_rate: float = 0.004  # new registrations per day, as a share of the user base
    churn_rate: float = 0.002  # daily hazard of a typical user leaving for good
    latent_dim: int = 16
    topics: int = 24  # = item categories
    impressions_mean: float = 20.0  # organic-feed impressions per active user
    impressions_max: int = 80
    candidate_factor: int = 3  # candidates drawn per impression before personalised selection
    feed_temperature: float = 3.0  # weight of user-item affinity in the organic feed
    pool_days: int = 7  # the organic feed shows items uploaded in the last pool_days days
    popularity_alpha: float = 0.8  # weight ~ (impressions so far + prior) ** alpha
    popularity_prior: float = 3.0
    age_decay_days: float = 4.0
    heavy_share: float = 0.3  # users with a high base activity propensity
    streak: float = 1.2  # logit boost of being active yesterday
    enthusiast_share: float = 0.05  # users who like almost everything
    emb_noise: float = 0.7  # noise of the content embedding around the projected topic vector
    item_noise: float = 0.55  # spread of an item's latent vector around its topic centroid
    user_noise: float = 0.35
    chunk_users: int = 50_000  # active users per vectorised feed chunk (fixed: part of determinism)


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", users=2_000, uploads_per_day=100),
    "small": Preset("small", users=20_000, uploads_per_day=1_000),
    "medium": Preset("medium", users=200_000, uploads_per_day=10_000),
    "large": Preset("large", users=1_000_000, uploads_per_day=50_000),
}


def get_preset(name: str | Preset, **overrides) -> Preset:
    """A preset by name, optionally with some fields overridden (tests use small variations)."""
    if isinstance(name, Preset):
        base = name
    else:
        try:
            base = PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown synth preset {name!r}; known: {', '.join(PRESETS)}") from None
    return dataclasses.replace(base, **overrides) if overrides else base
