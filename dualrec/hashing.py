"""One stable hash for ids: the SplitMix64 finaliser.

Why a hash and not an RNG: bucketing an id (feature hashing), spreading synthetic times or
assigning experiment arms must give the same answer for the same id on every run, machine and
row order. Platform-independent, vectorised over NumPy arrays.
"""

from __future__ import annotations

import numpy as np

GOLDEN = 0x9E3779B97F4A7C15
"""2^64 / φ: SplitMix64's increment, used to turn a salt into an offset."""


def splitmix64(z: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser of uint64 values (a bijection on 64-bit integers)."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z


def hash64(x: np.ndarray, salt: int = 0, offset: int = 0) -> np.ndarray:
    """Hash int64 ids with a salt: ``splitmix64(x + salt·GOLDEN + offset)`` (mod 2^64)."""
    z = np.asarray(x).astype(np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64((salt * GOLDEN + offset) % (1 << 64))
    return splitmix64(z)


def hash_bucket(x: np.ndarray, buckets: int, salt: int = 0) -> np.ndarray:
    """Id -> bucket in [0, buckets), stable across runs and machines."""
    return (hash64(x, salt) % np.uint64(buckets)).astype(np.int64)
