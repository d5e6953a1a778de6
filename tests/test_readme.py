"""The front door cannot rot: every command in README.md's code blocks marked `sh test`
runs here, against a service started on the shipped checkpoint, and must succeed.

A block's lines ending in a backslash continue the command; `localhost:8000` becomes the
temporary service's address and `.venv/bin/python` this interpreter. Without curl the
commands that call it skip, and fail under CI=true (tests/tools.py); the others still run.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.tools import require_tool

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```sh test\n(.*?)^```", re.MULTILINE | re.DOTALL)
# curl as a command word: at the start, or after a pipe, `;`, `&&` or `$(`.
CURL = re.compile(r"(?:^|[|;&(]\s*)curl\b")


def readme_commands() -> list[str]:
    commands = []
    for block in BLOCK.findall((ROOT / "README.md").read_text()):
        command = ""
        for line in block.splitlines():
            command += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
            if not line.endswith("\\"):
                if command.strip():
                    commands.append(command.strip())
                command = ""
    return commands


def test_the_readme_marks_commands_to_run() -> None:
    commands = readme_commands()
    assert len(commands) >= 8
    assert any(command.startswith("curl") for command in commands)
    assert any("-m training sample" in command for command in commands)


def test_only_commands_that_call_curl_need_it() -> None:
    needs = [command for command in readme_commands() if CURL.search(command)]
    assert needs and all(command.startswith("curl") for command in needs)
    assert CURL.search("seq 3 | curl -sf localhost:8000/health")
    assert CURL.search("echo $(curl -sf localhost:8000/health)")
    assert not CURL.search(".venv/bin/python -m training sample x.safetensors --prime 'curly'")
    assert not CURL.search("libcurl-config --version")


@pytest.fixture(scope="module")
def service_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path_factory.mktemp("readme") / "server.log"
    env = {**os.environ, "ACCESS_LOG": "false", "LOG_LEVEL": "warning"}
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "app", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.2)
        yield port
    finally:
        server.terminate()
        server.wait(30)


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs(command: str, service_port: int) -> None:
    if CURL.search(command):
        require_tool("curl", install="`make curl`, or apt-get install curl")
    runnable = command.replace("localhost:8000", f"127.0.0.1:{service_port}")
    runnable = runnable.replace(".venv/bin/python", sys.executable)
    result = subprocess.run(
        ["bash", "-c", runnable], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    assert result.stdout.strip(), command
