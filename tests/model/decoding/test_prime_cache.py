import numpy as np
import pytest
import torch

from model.decoding.network_rows import RowSnapshot
from model.decoding.prime_cache import PrimeCache


def snapshot(value: float, hidden: int = 4) -> RowSnapshot:
    """h and c of 2 layers (2, hidden) and 5 logits, float32: 84 bytes at hidden 4."""
    state = np.full((2, hidden), value, np.float32)
    return RowSnapshot((state, state.copy()), np.full(5, value, np.float32))


ENTRY = 84 + 4 * 2  # a snapshot and a 2-character prime's key (int32 ids)


def test_snapshot_bytes():
    assert snapshot(0).nbytes == 84
    tensors = RowSnapshot((torch.zeros(2, 4), torch.zeros(2, 4)), torch.zeros(5))
    assert tensors.nbytes == 84


def test_least_recently_used_goes_first_by_bytes():
    cache = PrimeCache(2 * ENTRY)
    cache.put((1, 2), snapshot(1))
    cache.put((3, 4), snapshot(2))
    assert len(cache) == 2 and cache.bytes == 2 * ENTRY
    assert cache.get((1, 2)).logits[0] == 1  # (1, 2) is now the most recent
    cache.put((5, 6), snapshot(3))
    assert cache.get((3, 4)) is None and len(cache) == 2 and cache.bytes == 2 * ENTRY
    assert cache.get((1, 2)) is not None and cache.get((5, 6)).logits[0] == 3
    assert (cache.hits, cache.misses) == (3, 1)


def test_bytes_count_the_key_and_the_state():
    cache = PrimeCache(10_000)
    cache.put((1,) * 100, snapshot(0, hidden=8))
    assert cache.bytes == 400 + 2 * 2 * 8 * 4 + 5 * 4
    cache.put((1,) * 100, snapshot(1, hidden=8))  # already there: ignored, not counted twice
    assert len(cache) == 1 and cache.bytes == 400 + 148 and cache.get((1,) * 100).logits[0] == 0


def test_the_key_is_the_whole_prime():
    cache = PrimeCache(10 * ENTRY)
    cache.put((1, 2), snapshot(1))
    for other in [(1,), (2,), (1, 2, 3), (0, 1, 2), (2, 1), (258,), (1, 2, 0)]:
        assert cache.get(other) is None
    assert cache.get((1, 2)) is not None and cache.misses == 7


def test_an_entry_larger_than_the_cache_is_not_kept():
    cache = PrimeCache(ENTRY - 1)
    cache.put((1, 2), snapshot(1))
    assert len(cache) == 0 and cache.bytes == 0 and cache.get((1, 2)) is None
    empty = PrimeCache(0)
    empty.put((1,), snapshot(1))
    assert len(empty) == 0


def test_a_large_entry_evicts_as_many_as_it_needs():
    cache = PrimeCache(3 * ENTRY)
    for n in range(3):
        cache.put((n, n), snapshot(n))
    cache.put((9,) * 20, snapshot(9))  # 80 + 84 bytes: two entries must go
    assert len(cache) == 2 and cache.bytes <= 3 * ENTRY
    assert cache.get((0, 0)) is None and cache.get((1, 1)) is None
    assert cache.get((2, 2)) is not None


def test_negative_budget_is_refused():
    with pytest.raises(ValueError, match="max_bytes"):
        PrimeCache(-1)
