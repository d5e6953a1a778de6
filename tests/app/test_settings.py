"""app/settings.py: environment variables, defaults and validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import DEFAULT_CHECKPOINT, Settings

VARIABLES = [
    "CHECKPOINT",
    "DEVICE",
    "HOST",
    "PORT",
    "MAX_LENGTH",
    "MAX_PRIME_LENGTH",
    "DEFAULT_LENGTH",
    "LOG_LEVEL",
    "API_KEY",
    "CORS_ORIGINS",
    "MAX_BODY_BYTES",
    "SHUTDOWN_GRACE_SECONDS",
    "ACCESS_LOG",
    "PREFILL_BURST_CHARS",
    "PREFILL_CHARS_PER_SECOND",
    "QUOTA_REFUSAL_DELAY_SECONDS",
    "HEADER_TIMEOUT_SECONDS",
    "FAIR_SHARE_ROWS",
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    settings = Settings()
    assert settings.checkpoint == DEFAULT_CHECKPOINT
    assert (
        Path(__file__).resolve().parents[2] / "checkpoints" / ("shakespeare.safetensors")
        == DEFAULT_CHECKPOINT
    )
    assert (settings.device, settings.host, settings.port) == ("auto", "127.0.0.1", 8000)
    assert (settings.max_length, settings.max_prime_length, settings.default_length) == (
        2000,
        2000,
        200,
    )
    assert settings.log_level == "info"
    assert (settings.api_key, settings.cors_origins) == (None, ())
    assert (settings.max_body_bytes, settings.shutdown_grace_seconds) == (65536, 10.0)
    assert settings.access_log is True


def test_operations_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEY", "s3cret")
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example, http://localhost:3000,")
    monkeypatch.setenv("MAX_BODY_BYTES", "1024")
    monkeypatch.setenv("SHUTDOWN_GRACE_SECONDS", "2.5")
    monkeypatch.setenv("ACCESS_LOG", "false")
    settings = Settings()
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)  # never printed in a log or a traceback
    assert settings.cors_origins == ("https://a.example", "http://localhost:3000")
    assert (settings.max_body_bytes, settings.shutdown_grace_seconds) == (1024, 2.5)
    assert settings.access_log is False


def test_an_empty_api_key_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEY", "  ")
    assert Settings().api_key is None


def test_environment_without_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CHECKPOINT", str(tmp_path / "x.safetensors"))
    monkeypatch.setenv("DEVICE", "CPU")
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.setenv("PORT", "9001")
    monkeypatch.setenv("MAX_LENGTH", "50")
    monkeypatch.setenv("MAX_PRIME_LENGTH", "10")
    monkeypatch.setenv("DEFAULT_LENGTH", "20")
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    settings = Settings()
    assert settings.checkpoint == tmp_path / "x.safetensors"
    assert (settings.device, settings.host, settings.port) == ("cpu", "0.0.0.0", 9001)
    assert (settings.max_length, settings.max_prime_length, settings.default_length) == (
        50,
        10,
        20,
    )
    assert settings.log_level == "warning"


def test_decode_block_steps_reaches_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    default = Settings().engine_config()
    assert (default.block_steps, default.chars_per_call) == (32, 1024)
    monkeypatch.setenv("DECODE_BLOCK_STEPS", "3")
    monkeypatch.setenv("DECODE_CHARS_PER_CALL", "100")
    config = Settings().engine_config()
    assert (config.block_steps, config.chars_per_call) == (3, 100)


def test_prefill_credit_reaches_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    config = Settings().engine_config()
    assert (config.prefill_burst_chars, config.prefill_chars_per_second) == (8000, 1000.0)
    monkeypatch.setenv("PREFILL_BURST_CHARS", "500")
    monkeypatch.setenv("PREFILL_CHARS_PER_SECOND", "0")  # no limit
    config = Settings().engine_config()
    assert (config.prefill_burst_chars, config.prefill_chars_per_second) == (500, 0.0)


def test_fair_share_rows_reaches_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().engine_config().fair_share_rows == 32
    monkeypatch.setenv("FAIR_SHARE_ROWS", "8")
    assert Settings().engine_config().fair_share_rows == 8


def test_quota_refusal_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().quota_refusal_delay_seconds == 1.0  # Retry-After's second
    monkeypatch.setenv("QUOTA_REFUSAL_DELAY_SECONDS", "0")  # at once
    assert Settings().quota_refusal_delay_seconds == 0.0
    monkeypatch.setenv("QUOTA_REFUSAL_DELAY_SECONDS", "2.5")
    monkeypatch.setenv("HEADER_TIMEOUT_SECONDS", "2.5")  # as long as a silent client
    assert Settings().quota_refusal_delay_seconds == 2.5


def test_arguments_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9001")
    assert Settings(port=9002).port == 9002


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "0"),
        ("PORT", "65536"),
        ("PORT", "http"),
        ("MAX_LENGTH", "0"),
        ("MAX_PRIME_LENGTH", "-1"),
        ("DEFAULT_LENGTH", "0"),
        ("DEFAULT_LENGTH", "5000"),  # above MAX_LENGTH
        ("DEVICE", "tpu"),
        ("LOG_LEVEL", "loud"),
        ("HOST", ""),
        ("MAX_BODY_BYTES", "0"),
        ("SHUTDOWN_GRACE_SECONDS", "-1"),
        ("ACCESS_LOG", "sometimes"),
        ("DECODE_BLOCK_STEPS", "0"),
        ("DECODE_BLOCK_STEPS", "65"),  # more than a row's block of random numbers
        ("DECODE_BLOCK_STEPS", "NaN"),
        ("DECODE_CHARS_PER_CALL", "0"),
        ("DECODE_CHARS_PER_CALL", "-5"),
        ("DECODE_CHARS_PER_CALL", "1.5"),
        ("DECODE_CHARS_PER_CALL", "lots"),
        ("PREFILL_BURST_CHARS", "0"),
        ("PREFILL_BURST_CHARS", "1e3"),
        ("PREFILL_CHARS_PER_SECOND", "-1"),
        ("PREFILL_CHARS_PER_SECOND", "NaN"),
        ("PREFILL_CHARS_PER_SECOND", "inf"),
        ("FAIR_SHARE_ROWS", "0"),
        ("FAIR_SHARE_ROWS", "2.5"),
        ("FAIR_SHARE_ROWS", "many"),
        ("QUOTA_REFUSAL_DELAY_SECONDS", "-1"),
        ("QUOTA_REFUSAL_DELAY_SECONDS", "NaN"),
        ("QUOTA_REFUSAL_DELAY_SECONDS", "inf"),
        ("QUOTA_REFUSAL_DELAY_SECONDS", "soon"),
        ("QUOTA_REFUSAL_DELAY_SECONDS", "11"),  # above HEADER_TIMEOUT_SECONDS (10)
    ],
)
def test_invalid_values_are_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError):
        Settings()


def test_cuda_index_is_a_valid_name() -> None:
    # Whether the device exists is checked when the model is loaded, not here.
    assert Settings(device="cuda:1").device == "cuda:1"


def test_settings_are_frozen() -> None:
    with pytest.raises(ValidationError):
        Settings().port = 1  # type: ignore[misc]


def test_regex_compile_workers_reach_the_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().regex_limits().compile_workers == 2
    monkeypatch.setenv("REGEX_COMPILE_WORKERS", "5")
    assert Settings().regex_limits().compile_workers == 5


@pytest.mark.parametrize("value", ["0", "-1", "65", "2.5", "NaN", "many"])
def test_regex_compile_workers_are_checked(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("REGEX_COMPILE_WORKERS", value)
    with pytest.raises(ValidationError, match="regex_compile_workers"):
        Settings()
