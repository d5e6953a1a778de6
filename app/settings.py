"""The service's settings, read from environment variables (no prefix: CHECKPOINT, PORT, ...).

`python -m app` options override them; see app/__main__.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.engine.config import (
    MAX_LOADED_MODELS,
    MAX_SCORE_CELLS,
    MAX_SCORE_CHARS,
    STALL_SECONDS,
    EngineConfig,
    Limits,
)
from app.gate.connections import ConnectionLimits
from app.gate.identity import DEFAULT_TRUSTED, TrustedProxies
from model.decoding.params import DEFAULT_LENGTH
from model.decoding.regex import RegexLimits
from model.decoding.sampler_rows import UNIFORM_BLOCK
from model.device import DEVICE_CHOICES

# The model the repository ships, wherever the service is started from.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "shakespeare.safetensors"

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]


class Settings(BaseSettings):
    """Every knob of the service, with its default, validated on creation."""

    model_config = SettingsConfigDict(frozen=True, case_sensitive=False, extra="ignore")

    checkpoint: Path | None = Field(
        DEFAULT_CHECKPOINT,
        description="a safetensors checkpoint to serve (empty: none, with MODELS_DIR)",
    )
    models_dir: Path | None = Field(
        None, description="serve every *.safetensors in this folder, named by its file stem"
    )
    default_model: str | None = Field(
        None,
        description="the model of requests that name none (default: CHECKPOINT's, else the "
        "first name in MODELS_DIR)",
    )
    max_loaded_models: int = Field(
        MAX_LOADED_MODELS,
        ge=1,
        description="models kept in memory; the least recently used idle one goes",
    )
    models_poll_seconds: float = Field(
        5.0,
        ge=0,
        allow_inf_nan=False,
        description="how often to look for new or replaced model files (0: only on "
        "POST /admin/reload)",
    )
    device: str = Field("auto", description="auto (CUDA, then MPS, then CPU), cpu, cuda[:N], mps")
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(8000, ge=1, le=65535)
    max_length: int = Field(2000, ge=1, description="most characters one request may generate")
    max_prime_length: int = Field(2000, ge=0, description="most characters of one prime")
    default_length: int = Field(
        DEFAULT_LENGTH, ge=1, description="characters generated when none are asked"
    )
    log_level: LogLevel = "info"
    log_repeats_per_minute: int = Field(
        60,
        ge=0,
        description="how often one kind of per-request warning (a malformed request, a "
        "refused one) may be logged: this many at once, then this many a minute; 0: no limit",
    )
    # The decoding engine (app/engine/engine.py): rows decoded together, and requests that may wait
    # for a row; past both, requests get 503 with Retry-After. Defaults: EngineConfig's.
    max_active: int = Field(
        EngineConfig.max_active, ge=1, description="requests decoded together in one batch"
    )
    max_queue: int = Field(
        EngineConfig.max_queue, ge=0, description="requests waiting for a free row"
    )
    max_requests_per_client: int = Field(
        EngineConfig.max_requests_per_client,
        ge=0,
        description="requests one client address may have running or waiting (else 429); "
        "0: no limit",
    )
    fair_share_rows: int = Field(
        EngineConfig.fair_share_rows,
        ge=1,
        description="a client holding more rows than the others steps as many as they hold on "
        "average, or this many shared by all clients of the step, whichever is more",
    )
    quota_refusal_delay_seconds: float = Field(
        1.0,
        ge=0,
        allow_inf_nan=False,
        description="a client at MAX_REQUESTS_PER_CLIENT gets its 429 this long after asking "
        "(at most HEADER_TIMEOUT_SECONDS), so one that retries at once retries once per delay; "
        "0: at once",
    )
    # One intra-op thread leaves the other core to the HTTP event loop; on a 2-core box that
    # beats two threads fighting it (idle OpenMP workers spin on the cores the loop needs).
    torch_threads: int = Field(1, ge=1, description="PyTorch intra-op threads")
    decode_threads: int = Field(
        EngineConfig.decode_threads,
        ge=1,
        description="threads that share a decoding step's rows (CPU kernel)",
    )
    decode_block_steps: int = Field(
        EngineConfig.block_steps,
        ge=1,
        le=UNIFORM_BLOCK,
        description="the most characters each stream draws per decoding step (one compiled call)",
    )
    decode_chars_per_call: int = Field(
        EngineConfig.chars_per_call,
        ge=1,
        description="characters one decoding call aims at, all rows together: a call of many "
        "rows takes fewer steps, so a new request's wait for it stays short",
    )
    prefill_share: float = Field(
        EngineConfig.prefill_share,
        gt=0,
        lt=1,
        description="the most of the engine's time primes may take while streams decode",
    )
    prefill_burst_chars: int = Field(
        EngineConfig.prefill_burst_chars,
        ge=1,
        description="prime characters one client may have read at once while streams decode",
    )
    prefill_chars_per_second: float = Field(
        EngineConfig.prefill_chars_per_second,
        ge=0,
        allow_inf_nan=False,
        description="then prime characters a second per client, while streams decode (0: none)",
    )
    prime_cache_mb: float = Field(
        EngineConfig.prime_cache_bytes / 2**20,
        ge=0,
        allow_inf_nan=False,
        description="memory for the network states after recent primes (0: no cache)",
    )
    stall_seconds: float = Field(
        STALL_SECONDS,
        gt=0,
        allow_inf_nan=False,
        description="/health answers 503 once the engine makes no progress this long",
    )
    # Regex-constrained output (model/decoding/regex.py).
    max_regex_chars: int = Field(
        RegexLimits.max_pattern_chars, ge=1, description="longest regex a request may send"
    )
    max_regex_states: int = Field(
        RegexLimits.max_states, ge=1, description="most automaton states of one regex"
    )
    regex_compile_seconds: float = Field(
        RegexLimits.compile_seconds,
        gt=0,
        allow_inf_nan=False,
        description="longest a regex may take to compile",
    )
    regex_compile_workers: int = Field(
        RegexLimits.compile_workers,
        ge=1,
        le=64,
        description="regexes compiling at once per model, each in a worker process "
        "(one per client at a time)",
    )
    # Operations (app/http/auth.py, app/gate/body_limit.py, app/gate/access_log.py, app/main.py).
    api_key: SecretStr | None = Field(
        None,
        description="when set, every route but /, /static, /health, /metrics and the docs "
        "needs `Authorization: Bearer <key>`",
    )
    # NoDecode: a plain comma-separated list, not the JSON pydantic-settings expects.
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="origins allowed to call the API from a browser, comma-separated"
    )
    max_body_bytes: int = Field(64 * 1024, ge=1, description="largest request body (else 413)")
    max_score_chars: int = Field(
        MAX_SCORE_CHARS,
        ge=2,
        description="longest text POST /score takes (its body may be 6 bytes "
        "a character more than MAX_BODY_BYTES)",
    )
    max_score_cells: int = Field(
        MAX_SCORE_CELLS,
        ge=2,
        description="most result cells one POST /score may ask for: characters × "
        "max(1, top_n) (its memory; past it a 422 names top_n or text)",
    )
    shutdown_grace_seconds: float = Field(
        10.0, ge=0, description="on shutdown, how long running streams may take to finish"
    )
    access_log: bool = Field(True, description="one JSON line per request on stdout")
    # Connections (app/gate/connections.py, app/gate/body_timeout.py; docs/limits.md): a
    # client that sends slowly or not at all cannot hold a connection, and open connections
    # are bounded.
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        allow_inf_nan=False,
        description="a request's line and headers must arrive within this long of the "
        "connection opening (or of the request's first byte on a reused one), else it is closed",
    )
    body_timeout_seconds: float = Field(
        30.0,
        gt=0,
        allow_inf_nan=False,
        description="a request's body must arrive within this long of its headers (else 408)",
    )
    send_timeout_seconds: float = Field(
        30.0,
        gt=0,
        allow_inf_nan=False,
        description="a client that takes none of its response's waiting bytes for this long "
        "is disconnected, and its request cancelled (app/gate/send_deadline.py)",
    )
    keep_alive_seconds: float = Field(
        5.0,
        gt=0,
        allow_inf_nan=False,
        description="an idle connection is closed after this long between requests",
    )
    http_parser: Literal["httptools", "h11"] = Field(
        "httptools",
        description="uvicorn's HTTP/1.1 parser: httptools (C, faster) or h11 (pure Python); "
        "the same timeouts and limits apply to both",
    )
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto",
        description="the event loop: uvloop (libuv, in C) or Python's asyncio; auto takes "
        "uvloop where it is installed (a dependency everywhere but Windows)",
    )
    max_connections: int = Field(
        2048,
        ge=1,
        description="open connections (and requests in progress) past which a request gets "
        "503; above max_active + max_queue, so the engine's own 503 (with Retry-After) comes first",
    )
    max_connections_per_client: int = Field(
        512,
        ge=0,
        description="connections one client address may have open at once (a trusted proxy's "
        "are not counted); past it, a new one is closed at once; 0: no limit",
    )
    # The variable (and default) uvicorn reads; app/gate/identity.py applies it to every
    # per-client rule, connections included.
    forwarded_allow_ips: Annotated[tuple[str, ...], NoDecode] = Field(
        DEFAULT_TRUSTED,
        description="proxies whose X-Forwarded-For names the client, comma-separated: "
        "addresses and CIDR ranges (10.0.0.0/8); empty: none; * trusts every peer, so a "
        "client names itself",
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        # Only the name is checked here; whether that device exists is known at load time.
        value = value.strip().lower()
        if value.split(":")[0] not in DEVICE_CHOICES:
            raise ValueError(f"must be one of {', '.join(DEVICE_CHOICES)} (cuda:N allowed)")
        return value

    @field_validator("checkpoint", "models_dir", "default_model", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        # API_KEY= (set but empty, as compose files often leave it) means no key.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("cors_origins", "forwarded_allow_ips", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(origin.strip() for origin in value.split(",") if origin.strip())
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        TrustedProxies.parse(value)  # raises ValueError naming an entry that is no address
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_case_level(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _some_model(self) -> Settings:
        if self.checkpoint is None and self.models_dir is None:
            raise ValueError("set CHECKPOINT or MODELS_DIR: there is nothing to serve")
        return self

    @model_validator(mode="after")
    def _default_within_max(self) -> Settings:
        if self.default_length > self.max_length:
            raise ValueError(
                f"default_length ({self.default_length}) exceeds max_length ({self.max_length})"
            )
        return self

    @model_validator(mode="after")
    def _refusal_delay_within_header_timeout(self) -> Settings:
        # A held refusal keeps its connection no longer than a client that sends nothing may.
        if self.quota_refusal_delay_seconds > self.header_timeout_seconds:
            raise ValueError(
                f"quota_refusal_delay_seconds ({self.quota_refusal_delay_seconds}) exceeds "
                f"header_timeout_seconds ({self.header_timeout_seconds})"
            )
        return self

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            max_active=self.max_active,
            max_queue=self.max_queue,
            max_requests_per_client=self.max_requests_per_client,
            fair_share_rows=self.fair_share_rows,
            decode_threads=self.decode_threads,
            block_steps=self.decode_block_steps,
            chars_per_call=self.decode_chars_per_call,
            prefill_share=self.prefill_share,
            prefill_burst_chars=self.prefill_burst_chars,
            prefill_chars_per_second=self.prefill_chars_per_second,
            prime_cache_bytes=int(self.prime_cache_mb * 2**20),
        )

    def trusted_proxies(self) -> TrustedProxies:
        return TrustedProxies.parse(self.forwarded_allow_ips)

    def connection_limits(self) -> ConnectionLimits:
        return ConnectionLimits(
            http_parser=self.http_parser,
            event_loop=self.event_loop,
            header_timeout_seconds=self.header_timeout_seconds,
            body_timeout_seconds=self.body_timeout_seconds,
            quota_refusal_delay_seconds=self.quota_refusal_delay_seconds,
            max_connections_per_client=self.max_connections_per_client,
            send_timeout_seconds=self.send_timeout_seconds,
            keep_alive_seconds=self.keep_alive_seconds,
            max_connections=self.max_connections,
            proxies=self.trusted_proxies(),
        )

    def regex_limits(self) -> RegexLimits:
        return RegexLimits(
            max_pattern_chars=self.max_regex_chars,
            max_states=self.max_regex_states,
            compile_seconds=self.regex_compile_seconds,
            compile_workers=self.regex_compile_workers,
        )

    def limits(self) -> Limits:
        return Limits(
            max_length=self.max_length,
            max_prime_length=self.max_prime_length,
            default_length=self.default_length,
            max_score_chars=self.max_score_chars,
            max_score_cells=self.max_score_cells,
        )

    @property
    def max_score_body_bytes(self) -> int:
        """JSON may spell a character in up to six bytes ("\\u001f")."""
        return self.max_body_bytes + 6 * self.max_score_chars
