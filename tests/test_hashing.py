"""The one id hash: stable values (models trained before the refactor keep their buckets)."""

import numpy as np

from dualrec.hashing import hash64, hash_bucket, splitmix64
from dualrec.ingest.common import mix64
from models.ranker import hash_bucket as ranker_bucket
from models.two_tower import hash_ids


def test_known_values_are_stable():
    # SplitMix64 finaliser of 0 + golden ratio: the reference generator's first output for seed 0
    assert int(splitmix64(np.array([0x9E3779B97F4A7C15], dtype=np.uint64))[0]) == 0xE220A8397B1DCDAF
    x = np.array([-5, 0, 1, 2**40, 123456789], np.int64)
    assert hash_bucket(x, 1000, 7).tolist() == hash_ids(x, 1000, 7).tolist()
    assert (ranker_bucket(x, 1000, 7) == hash_bucket(x, 999, 7) + 1).all()
    assert (mix64(x, 3) == hash64(x, 3, offset=0x632BE59BD9B4E019)).all()


def test_buckets_are_in_range_and_spread():
    b = hash_bucket(np.arange(100_000), 10, salt=1)
    assert b.min() == 0 and b.max() == 9
    counts = np.bincount(b)
    assert counts.min() > 9_000
    assert ranker_bucket(np.arange(1000), 5, 2).min() == 1  # 0 is reserved for "masked"
