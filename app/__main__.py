"""`python -m app` / `charrnn-serve`: load the model, then serve it with uvicorn.

Options override the environment variables of app/settings.py. The model is loaded before
the port is bound, so a bad checkpoint ends the process at once with a one-line error.
Connections get the timeouts and the limit of app/gate/connections.py, and a peer at its quota
its 429 from its first bytes (app/gate/quota.py).
"""

from __future__ import annotations

import argparse

import uvicorn

from app.gate.connections import uvicorn_options
from app.gate.quota import EarlyRefusal
from app.main import engine_of, serving_app
from app.settings import Settings
from model.device import DEVICE_CHOICES


def default(field: str) -> str:
    """The default of a Settings field, for help texts (defined there, once)."""
    return str(Settings.model_fields[field].default)


def build_parser() -> argparse.ArgumentParser:
    """The command line's options (each falls back to its Settings field)."""
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="Serve a char-rnn checkpoint over HTTP. Unset options fall back to the "
        "environment (CHECKPOINT, DEVICE, HOST, PORT, MAX_LENGTH, ...; see docs/limits.md "
        "for the limits), then to defaults.",
    )
    parser.add_argument("--checkpoint", help="safetensors checkpoint (default: the shipped one)")
    parser.add_argument(
        "--device", help=f"{', '.join(DEVICE_CHOICES)} (default: {default('device')})"
    )
    parser.add_argument("--host", help=f"interface to bind (default: {default('host')})")
    parser.add_argument("--port", type=int, help=f"port to bind (default: {default('port')})")
    parser.add_argument(
        "--max-length",
        type=int,
        help=f"most chars per request (default: {default('max_length')})",
    )
    parser.add_argument(
        "--log-level",
        help=f"critical, error, warning, info, debug, trace (default: {default('log_level')})",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = {key: value for key, value in vars(args).items() if value is not None}
    app = serving_app(**overrides)
    settings = app.state.settings
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # the app writes its own, as JSON lines (app/gate/access_log.py)
        # Running streams get this long to finish after SIGTERM; the lifespan then waits
        # (as long again at most) for what is still queued, and stops the engine.
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        **uvicorn_options(settings.connection_limits(), EarlyRefusal(lambda: engine_of(app))),
    )


if __name__ == "__main__":
    main()
