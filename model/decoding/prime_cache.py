"""The network state after a prime, kept for the next request with the same prime.

A 2 × 256 LSTM's state after any prime is ~4 KB (h and c of each layer, and the next
character's logits), while running a 2,000-character prime costs 2,000 steps; so a bounded
least-recently-used map from prime to state lets a repeated prime skip its prefill. The
state is bit-identical to a fresh prefill (the decoding step is row-invariant), so the
cache never changes an output: same request and seed, same text, cached or not.

One cache per loaded model (a decoder's), used from the decoding thread only.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from model.decoding.network_rows import RowSnapshot


class PrimeCache:
    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be ≥ 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[bytes, RowSnapshot] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(prime: tuple[int, ...]) -> bytes:
        return np.asarray(prime, np.int32).tobytes()

    def get(self, prime: tuple[int, ...]) -> RowSnapshot | None:
        key = self.key(prime)
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return found

    def put(self, prime: tuple[int, ...], snapshot: RowSnapshot) -> None:
        key = self.key(prime)
        size = len(key) + snapshot.nbytes
        if size > self.max_bytes or key in self._entries:
            return
        self._entries[key] = snapshot
        self.bytes += size
        while self.bytes > self.max_bytes:
            old_key, old = self._entries.popitem(last=False)
            self.bytes -= len(old_key) + old.nbytes
