"""`python -m app` / `charrnn-serve`: load the model, then serve it with uvicorn.

Options override the environment variables of app/settings.py. The model is loaded before
the port is bound, so a bad checkpoint ends the process at once with a one-line error.
"""

from __future__ import annotations

import argparse

import uvicorn

from app.main import serving_app
from model.device import DEVICE_CHOICES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="Serve a char-rnn checkpoint over HTTP. Unset options fall back to the "
        "environment (CHECKPOINT, DEVICE, HOST, PORT, MAX_LENGTH, ...), then to defaults.",
    )
    parser.add_argument("--checkpoint", help="safetensors checkpoint (default: the shipped one)")
    parser.add_argument("--device", help=f"{', '.join(DEVICE_CHOICES)} (default: auto)")
    parser.add_argument("--host", help="interface to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (default: 8000)")
    parser.add_argument("--max-length", type=int, help="most chars per request (default: 2000)")
    parser.add_argument("--log-level", help="critical, error, warning, info, debug, trace")
    return parser.parse_args(argv)


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
        access_log=False,  # the app writes its own, as JSON lines (app/access_log.py)
        # Running streams get this long to finish after SIGTERM; the lifespan then waits
        # (as long again at most) for what is still queued, and stops the engine.
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
    )


if __name__ == "__main__":
    main()
