"""app/engine/config.py: the engine's knobs, refused when out of range."""

import math

import pytest

from app.engine.config import EngineConfig
from model.decoding.decoder import BLOCK_STEPS


def test_block_steps_is_at_least_one_and_its_upper_bound_is_the_decoders():
    with pytest.raises(ValueError, match="block_steps must be at least 1"):
        EngineConfig(block_steps=0)
    # The upper bound (a row's block of random numbers) is BatchDecoder's own check.
    assert EngineConfig().block_steps == BLOCK_STEPS


@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf])
def test_rates_and_intervals_must_be_finite_and_not_negative(value):
    names = ("min_chunk_interval", "max_chunk_interval", "max_chunks_per_second")
    for name in (*names, "prefill_chars_per_second"):
        with pytest.raises(ValueError, match=f"{name} must be ≥ 0 and finite"):
            EngineConfig(**{name: value})


@pytest.mark.parametrize("name", ["prefill_burst_chars", "fair_share_rows"])
@pytest.mark.parametrize("value", [0, -3])
def test_counts_are_at_least_one(name, value):
    with pytest.raises(ValueError, match=f"{name} must be at least 1"):
        EngineConfig(**{name: value})


def test_the_longest_chunk_interval_is_not_below_the_shortest():
    with pytest.raises(ValueError, match=r"max_chunk_interval \(0.01\) must be at least"):
        EngineConfig(min_chunk_interval=0.02, max_chunk_interval=0.01)
    assert EngineConfig(min_chunk_interval=0.5, max_chunk_interval=0.5).max_chunk_interval == 0.5
