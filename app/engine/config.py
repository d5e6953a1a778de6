"""The decoding engine's knobs (app/engine/engine.py), validated when made; app/settings.py reads
their defaults from here."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from model.decoding.decoder import BLOCK_STEPS

# Defaults of the service's models and health, read by app/settings.py and the classes here.
MAX_LOADED_MODELS = 4  # models kept in memory; the least recently used idle one goes
STALL_SECONDS = 30.0  # an engine without progress this long while work waits is unhealthy
MAX_SCORE_CHARS = 250_000  # the longest text one /score request reads
# A /score request's result cells, characters × max(1, top_n): its memory (each cell a
# float64 log-probability and an int64 id) is bounded before it is queued.
MAX_SCORE_CELLS = 5 * MAX_SCORE_CHARS


@dataclass(frozen=True)
class EngineConfig:
    """The engine's knobs, each checked when the config is made."""

    max_active: int = 256  # rows decoded together (per model)
    max_queue: int = 1024  # requests waiting for a row
    # Requests given a row per decoding step: an iteration of block_steps steps admits up
    # to block_steps times as many, so admitting takes the same share of the time.
    max_admit_per_step: int = 64
    # Requests one client (an address) may have running or waiting at once; 0: no limit.
    # One client then cannot take every row from the others.
    max_requests_per_client: int = 128
    # Texts scored at once (their results in memory), read together in one batched pass
    # per iteration; the others wait holding only their ids. Started round-robin by
    # client, and a client with none running may always start one beyond these.
    score_rows: int = 8
    # Threads that share a step's rows (the CPU kernel releases the GIL). Two on a 2-core
    # machine: the event loop needs little CPU next to the kernel.
    decode_threads: int = 2
    # A client holding more rows than the others steps, each step, as many as they hold on
    # average, or fair_share_rows shared by all the step's clients, whichever is more
    # (app/gate/fairness.py): with few other clients it keeps steps of about this many rows.
    fair_share_rows: int = 32
    # Characters each row draws per decoding step (one compiled call; fewer when it ends):
    # the engine's Python between calls, and its waits for the GIL, are paid once for all.
    # A call of many rows takes fewer steps, about chars_per_call characters in all: a new
    # request waits for the call in progress, and this keeps that wait about the same at
    # any number of rows (32 steps up to 32 rows, 16 at 64, 8 at 128, 4 at 256).
    block_steps: int = BLOCK_STEPS  # at most UNIFORM_BLOCK: BatchDecoder checks it
    chars_per_call: int = 1024
    # The most of the engine's time primes may take while other streams decode.
    prefill_share: float = 0.25
    # While streams decode, a client's primes may read prefill_burst_chars characters at
    # once, then prefill_chars_per_second (app/gate/fairness.py: PrimeCredit; 0: no limit):
    # about one stream's worth of the engine at 64 streams here (~1,000 chars/s each).
    prefill_burst_chars: int = 8000
    prefill_chars_per_second: float = 1000.0
    # Prefill time per iteration when no stream decodes (new work is checked after it).
    idle_prefill_seconds: float = 0.05
    prime_cache_bytes: int = 32 << 20  # states after recent primes (0: no cache)
    # Least time between two chunks of one stream. Each chunk costs the event loop an HTTP
    # write, and the loop shares the GIL with the decoding thread: waiting a little lets the
    # characters of several steps go out as one event. 0: a chunk per wake-up.
    min_chunk_interval: float = 0.02
    # Chunks per second across all streams, shared equally by the clients and within a
    # client by its streams: with many streams each one's interval stretches (clients x
    # the client's streams / this), so the event loop's HTTP writes stay bounded, each
    # write carries more characters, and a client holding many streams open stretches
    # its own. 0: no such bound.
    max_chunks_per_second: float = 1000.0
    # The longest a stream's interval stretches: every stream shows progress this often.
    max_chunk_interval: float = 1.0

    def __post_init__(self) -> None:
        for name in (
            "max_active",
            "max_admit_per_step",
            "decode_threads",
            "block_steps",
            "chars_per_call",
            "prefill_burst_chars",
            "fair_share_rows",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_queue", "prime_cache_bytes", "max_requests_per_client"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}")
        for name in (
            "min_chunk_interval",
            "max_chunks_per_second",
            "max_chunk_interval",
            "idle_prefill_seconds",
            "prefill_chars_per_second",
        ):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be ≥ 0 and finite, got {getattr(self, name)}")
        if self.max_chunk_interval < self.min_chunk_interval:
            raise ValueError(
                f"max_chunk_interval ({self.max_chunk_interval}) must be at least "
                f"min_chunk_interval ({self.min_chunk_interval})"
            )
        if not 0 < self.prefill_share < 1:
            raise ValueError(f"prefill_share must be in (0, 1), got {self.prefill_share}")


class Limits(BaseModel):
    """Per-request limits; their defaults live in Settings."""

    model_config = ConfigDict(frozen=True)

    max_length: int = Field(ge=1)
    max_prime_length: int = Field(ge=0)
    default_length: int = Field(ge=1)
    max_score_chars: int = Field(MAX_SCORE_CHARS, ge=2)
    max_score_cells: int = Field(MAX_SCORE_CELLS, ge=2)
