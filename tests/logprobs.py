"""Comparing log-probabilities in tests: exactly, column by column (model/decoding/output.py's
Logprobs holds numpy arrays, which `==` compares element-wise)."""

from __future__ import annotations

import numpy as np

from model.decoding.output import Logprobs

COLUMNS = ("ids", "chosen", "top_ids", "top_logprobs")


def same_logprobs(first: Logprobs, second: Logprobs) -> bool:
    """Same characters and numbers, compared exactly."""
    return all(np.array_equal(getattr(first, c), getattr(second, c)) for c in COLUMNS)
