"""scripts/setup.sh's choice of PyTorch build: through `--print-torch-plan`, and through a
whole run whose interpreter is a stand-in that records pip's arguments. Nothing is
installed and nothing leaves the machine: `nvidia-smi` and `uname` are stand-ins on PATH,
and PyTorch's CPU index is a local server, a closed port or a port that never answers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "scripts" / "setup.sh"
DEFAULT_SPEC = "torch==2.13.0"
# The probe gives an index 3 s; the rest is bash and Python starting on a busy machine.
PROBE_BOUND_S = 6.0


@dataclass(frozen=True)
class Plan:
    spec: str
    index: str  # "" = pip's default index
    notes: list[str]  # what the script printed on stderr
    seconds: float


@dataclass
class Index:
    """A local stand-in for PyTorch's CPU index, recording the paths asked for."""

    url: str
    requests: list[str]


def write_program(directory: Path, name: str, body: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def environment(tmp_path: Path, *, gpu: bool, system: str = "Linux", **env: str) -> dict:
    """This process's environment without PyTorch settings, stand-ins first on PATH: an
    `nvidia-smi` that lists a GPU or fails as it does without a driver, and `uname`."""
    bin_dir = tmp_path / "bin"
    if gpu:
        write_program(bin_dir, "nvidia-smi", 'echo "GPU 0: NVIDIA H100 (UUID: GPU-0)"')
    else:
        write_program(bin_dir, "nvidia-smi", 'echo "NVIDIA-SMI has failed" >&2; exit 9')
    write_program(bin_dir, "uname", f'echo "{system}"')
    base = {k: v for k, v in os.environ.items() if not k.startswith("TORCH_")}
    return {**base, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env}


def plan(tmp_path: Path, *, gpu: bool, system: str = "Linux", **env: str) -> Plan:
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(SETUP), "--print-torch-plan"],
        env=environment(tmp_path, gpu=gpu, system=system, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    fields = dict(line.split("=", 1) for line in result.stdout.splitlines())
    return Plan(fields["spec"], fields["index"], result.stderr.splitlines(), seconds)


@pytest.fixture
def cpu_index(tmp_path: Path) -> Iterator[Index]:
    root = tmp_path / "index"
    (root / "whl" / "cpu" / "torch").mkdir(parents=True)
    (root / "whl" / "cpu" / "torch" / "index.html").write_text("<html></html>")
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Index(f"http://127.0.0.1:{server.server_address[1]}/whl/cpu", requests)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def closed_index() -> str:
    """An address where nothing listens: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/whl/cpu"


@pytest.fixture
def silent_index() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/whl/cpu"


# --- the plan -------------------------------------------------------------------------


def test_without_a_gpu_the_cpu_build_comes_from_pytorchs_cpu_index(tmp_path, cpu_index):
    venv = tmp_path / "venv"
    chosen = plan(tmp_path, gpu=False, TORCH_CPU_INDEX_URL=cpu_index.url, VENV=str(venv))
    assert (chosen.spec, chosen.index) == (DEFAULT_SPEC, cpu_index.url)
    assert cpu_index.requests == ["/whl/cpu/torch/"]
    assert len(chosen.notes) == 1 and "CPU build" in chosen.notes[0]
    assert not venv.exists(), "the plan alone must install nothing"


def test_the_default_cpu_index_is_pytorchs(tmp_path, closed_index):
    # Any proxy is a closed port here, so the probe of the real address fails at once.
    proxy = closed_index.removesuffix("/whl/cpu")
    chosen = plan(tmp_path, gpu=False, https_proxy=proxy, HTTPS_PROXY=proxy, no_proxy="")
    assert chosen.index == ""
    assert "https://download.pytorch.org/whl/cpu" in chosen.notes[0]


def test_an_unreachable_cpu_index_falls_back_quickly_saying_so_once(tmp_path, closed_index):
    chosen = plan(tmp_path, gpu=False, TORCH_CPU_INDEX_URL=closed_index)
    assert (chosen.spec, chosen.index) == (DEFAULT_SPEC, "")
    assert len(chosen.notes) == 1
    assert closed_index in chosen.notes[0] and "cannot be reached" in chosen.notes[0]
    assert chosen.seconds < PROBE_BOUND_S


def test_a_cpu_index_that_never_answers_is_given_up_within_seconds(tmp_path, silent_index):
    chosen = plan(tmp_path, gpu=False, TORCH_CPU_INDEX_URL=silent_index)
    assert chosen.index == ""
    assert 2.5 < chosen.seconds < PROBE_BOUND_S, chosen.seconds


def test_a_cpu_index_without_torch_is_not_used(tmp_path, cpu_index):
    chosen = plan(tmp_path, gpu=False, TORCH_CPU_INDEX_URL=cpu_index.url + "/nothing")
    assert chosen.index == "" and cpu_index.requests == ["/whl/cpu/nothing/torch/"]


@pytest.mark.parametrize("url", ["not a url", "ftp://", "http://[::1", "http://127.0.0.1:0/"])
def test_a_malformed_cpu_index_falls_back(tmp_path, url):
    chosen = plan(tmp_path, gpu=False, TORCH_CPU_INDEX_URL=url)
    assert chosen.index == "" and len(chosen.notes) == 1


def test_with_a_gpu_the_cuda_build_comes_from_the_default_index(tmp_path, cpu_index):
    chosen = plan(tmp_path, gpu=True, TORCH_CPU_INDEX_URL=cpu_index.url)
    assert (chosen.spec, chosen.index) == (DEFAULT_SPEC, "")
    assert "CUDA" in chosen.notes[0]
    assert cpu_index.requests == [], "with a GPU the CPU index is not even asked"


def test_outside_linux_the_default_index_has_the_cpu_build(tmp_path, cpu_index):
    chosen = plan(tmp_path, gpu=False, system="Darwin", TORCH_CPU_INDEX_URL=cpu_index.url)
    assert chosen.index == "" and "Darwin" in chosen.notes[0]
    assert cpu_index.requests == []


@pytest.mark.parametrize("gpu", [False, True])
def test_torch_index_url_wins_without_a_probe(tmp_path, cpu_index, gpu):
    cuda = "https://download.pytorch.org/whl/cu128"
    chosen = plan(tmp_path, gpu=gpu, TORCH_INDEX_URL=cuda, TORCH_CPU_INDEX_URL=cpu_index.url)
    assert chosen.index == cuda and cpu_index.requests == []
    assert len(chosen.notes) == 1 and "TORCH_INDEX_URL" in chosen.notes[0]


def test_an_empty_torch_index_url_means_the_default_index(tmp_path, cpu_index):
    chosen = plan(tmp_path, gpu=False, TORCH_INDEX_URL="", TORCH_CPU_INDEX_URL=cpu_index.url)
    assert chosen.index == "" and cpu_index.requests == []


def test_torch_spec_wins(tmp_path):
    wheel = "wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    assert plan(tmp_path, gpu=True, TORCH_SPEC="torch==2.5.1").spec == "torch==2.5.1"
    assert plan(tmp_path, gpu=True, TORCH_SPEC=wheel).spec == wheel
    assert plan(tmp_path, gpu=True, TORCH_SPEC="").spec == DEFAULT_SPEC


@pytest.mark.parametrize("args", [["--dry-run"], ["--print-torch-plan", "now"], [""]])
def test_unknown_arguments_are_refused_in_one_line(tmp_path, args):
    venv = tmp_path / "venv"
    result = subprocess.run(
        ["bash", str(SETUP), *args],
        env=environment(tmp_path, gpu=False, VENV=str(venv)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "--print-torch-plan" in result.stderr
    assert not venv.exists()


# --- a whole run ----------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The script and pyproject.toml alone in a folder: the run cannot touch this checkout."""
    (tmp_path / "project" / "scripts").mkdir(parents=True)
    shutil.copy(SETUP, tmp_path / "project" / "scripts" / "setup.sh")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "project" / "pyproject.toml")
    return tmp_path / "project"


def stand_in_venv(tmp_path: Path) -> tuple[Path, Path]:
    """A venv whose python records every pip call, has no torch, and hands anything else
    (the version check, the probe) to this interpreter."""
    venv, log = tmp_path / "venv", tmp_path / "pip.log"
    body = "\n".join(
        [
            'case "$*" in',
            f'  "-m pip "*) echo "$*" >> "{log}"; exit 0 ;;',
            '  "-c import torch") exit 1 ;;',
            f'  *sys.prefix*) echo "{venv}"; exit 0 ;;',
            "esac",
            f'exec "{sys.executable}" "$@"',
        ]
    )
    write_program(venv / "bin", "python", body)
    return venv, log


def run_setup(project: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(project / "scripts" / "setup.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_run_installs_the_cpu_build_from_the_cpu_index_then_the_project(
    tmp_path, project, cpu_index
):
    venv, log = stand_in_venv(tmp_path)
    env = environment(tmp_path, gpu=False, VENV=str(venv), TORCH_CPU_INDEX_URL=cpu_index.url)
    first = run_setup(project, env)
    assert first.returncode == 0, first.stderr
    torch_call, project_call = log.read_text().splitlines()
    assert torch_call.endswith(f"--index-url {cpu_index.url} {DEFAULT_SPEC}")
    assert project_call.endswith("-e .[dev]") and "--index-url" not in project_call
    # Installed: a second run finds its stamp and asks pip nothing.
    assert run_setup(project, env).returncode == 0
    assert len(log.read_text().splitlines()) == 2


def test_a_run_falls_back_to_the_default_index(tmp_path, project, closed_index):
    venv, log = stand_in_venv(tmp_path)
    env = environment(tmp_path, gpu=False, VENV=str(venv), TORCH_CPU_INDEX_URL=closed_index)
    result = run_setup(project, env)
    assert result.returncode == 0, result.stderr
    torch_call = log.read_text().splitlines()[0]
    assert torch_call.endswith(f" {DEFAULT_SPEC}") and "--index-url" not in torch_call
    assert [line for line in result.stderr.splitlines() if "cannot be reached" in line]
