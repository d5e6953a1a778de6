"""app/__main__.py: `python -m app` options, settings errors, and a bad checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

import app.__main__ as cli
from app.gate.connections import H11Deadlines, HttpToolsDeadlines
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What main() hands to uvicorn.run, instead of serving."""
    calls: dict[str, Any] = {}

    def fake_run(application: FastAPI, **options: Any) -> None:
        calls.update(options, app=application)

    monkeypatch.setattr(cli.uvicorn, "run", fake_run)
    monkeypatch.setenv("ACCESS_LOG", "false")  # keep the JSON log's handler off stdout here
    return calls


def test_options_override_the_environment(
    monkeypatch: pytest.MonkeyPatch, checkpoint_path: Path, served: dict[str, Any]
) -> None:
    monkeypatch.setenv("PORT", "9001")
    monkeypatch.setenv("MAX_LENGTH", "900")
    monkeypatch.setenv("HOST", "0.0.0.0")
    cli.main(["--checkpoint", str(checkpoint_path), "--device", "cpu", "--port", "9002"])
    assert (served["host"], served["port"], served["log_level"]) == ("0.0.0.0", 9002, "info")
    # The app writes its own JSON access log; streams get the grace period on shutdown.
    assert served["access_log"] is False
    assert served["timeout_graceful_shutdown"] == 10.0
    settings = served["app"].state.settings
    assert settings.max_length == 900 and settings.checkpoint == checkpoint_path


def test_grace_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, checkpoint_path: Path, served: dict[str, Any]
) -> None:
    monkeypatch.setenv("SHUTDOWN_GRACE_SECONDS", "3")
    cli.main(["--checkpoint", str(checkpoint_path), "--device", "cpu"])
    assert served["timeout_graceful_shutdown"] == 3.0


def test_connection_limits_reach_uvicorn(
    monkeypatch: pytest.MonkeyPatch, checkpoint_path: Path, served: dict[str, Any]
) -> None:
    monkeypatch.setenv("HEADER_TIMEOUT_SECONDS", "3")
    monkeypatch.setenv("BODY_TIMEOUT_SECONDS", "4")
    monkeypatch.setenv("KEEP_ALIVE_SECONDS", "75")
    monkeypatch.setenv("MAX_CONNECTIONS", "500")
    cli.main(["--checkpoint", str(checkpoint_path), "--device", "cpu"])
    assert issubclass(served["http"], HttpToolsDeadlines)  # the default parser
    assert (served["http"].head_timeout, served["http"].body_timeout) == (3.0, 4.0)
    assert (served["timeout_keep_alive"], served["limit_concurrency"]) == (75.0, 500)
    assert served["app"].state.settings.body_timeout_seconds == 4.0  # the app's 408
    monkeypatch.setenv("HTTP_PARSER", "h11")
    cli.main(["--checkpoint", str(checkpoint_path), "--device", "cpu"])
    assert issubclass(served["http"], H11Deadlines)
    assert served["http"].head_timeout == 3.0


def test_connection_limit_errors_are_one_line(
    monkeypatch: pytest.MonkeyPatch, served: dict[str, Any]
) -> None:
    monkeypatch.setenv("HEADER_TIMEOUT_SECONDS", "nan")
    with pytest.raises(SystemExit) as caught:
        cli.main([])
    assert str(caught.value.code) == (
        "error: header_timeout_seconds: Input should be a finite number"
    )
    assert not served


def test_help_shows_the_settings_defaults(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Read from the Settings fields when asked, never restated: a changed default shows.
    monkeypatch.setattr(Settings.model_fields["port"], "default", 8123)
    with pytest.raises(SystemExit):
        cli.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for field in ("device", "host", "port", "max_length"):
        assert f"(default: {Settings.model_fields[field].default})" in help_text
    assert "(default: 8123)" in help_text


def test_max_length_option(checkpoint_path: Path, served: dict[str, Any]) -> None:
    cli.main(["--checkpoint", str(checkpoint_path), "--max-length", "500", "--device", "cpu"])
    assert served["app"].state.settings.max_length == 500


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "70000"], "error: port: Input should be less than or equal to 65535"),
        (["--device", "tpu"], "error: device: Value error, must be one of"),
        (["--checkpoint", "/no/such.safetensors"], "error: cannot load the model: checkpoint"),
    ],
)
def test_errors_are_one_line(argv: list[str], message: str, served: dict[str, Any]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    assert str(caught.value.code).startswith(message)
    assert "\n" not in str(caught.value.code)
    assert not served


def test_python_m_app_exits_on_a_bad_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00" * 64)
    environment = {**os.environ, "CHECKPOINT": str(bad), "DEVICE": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "app", "--port", "1"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: cannot load the model:") and str(bad) in lines[0]
