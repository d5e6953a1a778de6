"""Helpers the nginx tests import (tests/deploy/test_scaleout.py, test_client_identity.py):
`python -m app` replicas and Debian's nginx running the project's deploy/nginx.conf in front
of them, everything in a temporary directory, on loopback addresses only.

The replicas are configured as docker-compose.scale.yml configures them (`compose_env`),
and nginx reaches them from its own address, BALANCER, as the balancer's container does on
the compose network (`proxy_bind`): the replicas see every request come from nginx, and
learn the client from the X-Forwarded-For that nginx writes. Clients bind the addresses
the tests name (127.0.0.3, 127.0.0.4, ...), so each is a client of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from model.checkpoint import Checkpoint, save_checkpoint
from model.config import ModelConfig
from model.network import CharRNN
from model.vocab import Vocabulary
from tests.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_SCALE = ROOT / "docker-compose.scale.yml"

MODEL = "tiny"
# A 2 × 256 LSTM decodes one stream at ~15,000 characters a second here, which the replica
# sends as an event every ~20 ms: a stream of 20,000 characters lasts over a second.
HIDDEN_SIZE = 256
START_SECONDS = 60
FAIL_TIMEOUT = 2  # seconds nginx leaves a replica alone after it failed (nginx's default: 10)
# nginx's address towards the replicas: not 127.0.0.1, which uvicorn trusts by default, so
# that only what the compose file configures makes the replicas believe nginx.
BALANCER = "127.0.0.2"


@dataclass
class Replica:
    port: int
    process: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def entries(self) -> list[dict[str, Any]]:
        """Its access log: one JSON object per request that has ended."""
        lines = self.log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def served(self, path: str, status: int | None = None) -> int:
        """Requests for `path` in this replica's access log (answered with `status`)."""
        return sum(
            entry.get("path") == path and status in (None, entry.get("status"))
            for entry in self.entries()
        )


@dataclass
class Cluster:
    url: str
    replicas: list[Replica]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_checkpoint(path: Path) -> Path:
    """Two copies of this file serve the same model `tiny` (untrained: noise, but fast)."""
    vocab = Vocabulary.from_text("abcdefghijklmnopqrstuvwxyz .,;:!?'\n")
    model = CharRNN(ModelConfig(vocab_size=len(vocab), hidden_size=HIDDEN_SIZE))
    save_checkpoint(Checkpoint.from_model(model, vocab), path)
    return path


def compose_env() -> dict[str, str]:
    """The environment docker-compose.scale.yml gives the replicas, with the balancer's
    fixed address on the compose network replaced by BALANCER, nginx's address here."""
    yaml = pytest.importorskip("yaml", reason="PyYAML (a dev dependency) reads compose files")

    class Loader(yaml.SafeLoader):
        pass

    # Compose's `!reset` tag (an override clears the base file's value): its value here.
    Loader.add_constructor("!reset", lambda loader, node: None)
    services = yaml.load(COMPOSE_SCALE.read_text(), Loader=Loader)["services"]
    networks = services.get("balancer", {}).get("networks") or {}
    balancer = (networks.get("default") or {}).get("ipv4_address")
    env = services["serve"].get("environment") or {}
    return {
        name: str(value).replace(balancer, BALANCER) if balancer else str(value)
        for name, value in env.items()
    }


def wait_until_healthy(url: str, processes: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + START_SECONDS
    while True:
        for process in processes:
            assert process.poll() is None, f"exited with {process.returncode} while starting"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} did not become healthy"
        time.sleep(0.1)


def start_replica(directory: Path, checkpoint: Path, max_length: int, **settings: str) -> Replica:
    """`python -m app` on a free loopback port, configured as the compose file configures
    the replicas, `settings` on top; its access log in `directory`."""
    port = free_port()
    directory.mkdir()
    copy = directory / checkpoint.name  # same file name: every replica serves `tiny`
    shutil.copy(checkpoint, copy)
    log = directory / "access.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ACCESS_LOG": "true",
        "TORCH_THREADS": "1",
        "DECODE_THREADS": "1",
        "SHUTDOWN_GRACE_SECONDS": "1",
        **compose_env(),
        **settings,
    }
    argv = [sys.executable, "-m", "app", "--checkpoint", str(copy), "--port", str(port)]
    argv += ["--host", "127.0.0.1", "--device", "cpu", "--max-length", str(max_length)]
    argv += ["--log-level", "warning"]
    with open(log, "wb") as stdout:
        process = subprocess.Popen(argv, cwd=directory, env=env, stdout=stdout)
    return Replica(port, process, log)


def nginx_files(directory: Path, replicas: list[Replica], port: int, http: str = "") -> Path:
    """nginx's main file around deploy/nginx.conf (`http`: more of its http{} context), and
    the two files that it includes."""
    (directory / "charrnn").mkdir(parents=True)
    (directory / "temp").mkdir()
    # nginx's defaults (max_fails=1) with a short fail_timeout: a replica that failed once
    # (a 503 counts) is back in turn soon, so one test's failures do not last into the next.
    servers = "".join(
        f"server 127.0.0.1:{r.port} fail_timeout={FAIL_TIMEOUT}s;\n" for r in replicas
    )
    (directory / "charrnn" / "upstream.conf").write_text(servers)
    (directory / "charrnn" / "listen.conf").write_text(f"listen 127.0.0.1:{port};\n")
    temp = {name: directory / "temp" / name for name in ("client_body", "proxy", "fastcgi")}
    temp |= {name: directory / "temp" / name for name in ("uwsgi", "scgi")}
    main = directory / "nginx.conf"
    main.write_text(
        "daemon off;\n"
        # As root, nginx's workers would switch to an unprivileged user that cannot enter
        # tmp_path (0700); as anyone else this directive does not apply.
        + ("user root;\n" if os.geteuid() == 0 else "")
        + "worker_processes 1;\n"
        f"pid {directory / 'nginx.pid'};\n"
        f"error_log {directory / 'error.log'} notice;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"    access_log {directory / 'access.log'};\n"
        # As a host's nginx may (Debian's enables gzip): compressing events must not hold
        # them back either.
        "    gzip on;\n"
        "    gzip_types text/event-stream;\n"
        # The balancer's own address on the compose network, as the replicas see it.
        f"    proxy_bind {BALANCER};\n"
        + http
        + "".join(f"    {name}_temp_path {path};\n" for name, path in temp.items())
        + f"    include {ROOT / 'deploy' / 'nginx.conf'};\n"
        "}\n"
    )
    return main


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@contextlib.contextmanager
def cluster(
    base: Path,
    checkpoint: Path,
    replicas: list[dict[str, str]],
    max_length: int,
    http: str = "",
) -> Iterator[Cluster]:
    """nginx in front of one replica per entry of `replicas` (its settings), all healthy
    and their decoding kernels loaded, `http` added to nginx's http{} context; stopped on
    exit."""
    nginx_path = require_tool(
        "nginx", "/usr/sbin/nginx", install="`make nginx`, or apt-get install nginx"
    )
    started = [
        start_replica(base / f"replica{index}", checkpoint, max_length, **settings)
        for index, settings in enumerate(replicas)
    ]
    processes = [replica.process for replica in started]
    try:
        for replica in started:
            wait_until_healthy(replica.url, processes)
            # A first request loads the decoding kernels; later ones measure only the proxy.
            response = httpx.post(f"{replica.url}/generate", json={"length": 5}, timeout=60)
            response.raise_for_status()
        port = free_port()
        main = nginx_files(base / "nginx", started, port, http)
        errors = base / "nginx" / "error.log"
        # -e: nginx opens its error log before it reads the file that names one.
        argv = [nginx_path, "-p", f"{base / 'nginx'}/", "-c", str(main), "-e", str(errors)]
        checked = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stderr + errors.read_text()
        nginx = subprocess.Popen(argv, stderr=subprocess.PIPE)
        processes.append(nginx)
        wait_until_healthy(f"http://127.0.0.1:{port}", processes)
        yield Cluster(f"http://127.0.0.1:{port}", started)
    finally:
        for process in reversed(processes):
            stop(process)


def client_from(address: str, **options: Any) -> httpx.Client:
    """An HTTP client whose connections come from `address` (a loopback one)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), **options)
