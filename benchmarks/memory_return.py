"""Does the server's memory come back after clients that never read are dropped?

Starts the service (`python -m app`, shipped checkpoint) once per variant, each a set of
environment variables, and runs rounds of hostile_clients.py's never-read clients against
it: 16 connections from one address, each a 100,000-character /score with top_n 5 (a
~15 MB answer) read by nobody, until the send deadline resets them. Prints the server's
RSS idle, with every answer held, and 1 s and 5 s after the last reset, per round, and
the median of what each round gave back. Variants run one after the other in this run, so
compare them within it.

    python benchmarks/memory_return.py --rounds 4 --variant default= \\
        --variant 'fixed mmap threshold=MALLOC_MMAP_THRESHOLD_=131072'
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostile_clients import Hostile
from hostile_load import current_rss_mb
from load_client import free_port, wait_healthy

ROOT = Path(__file__).resolve().parent.parent


def variant(text: str) -> tuple[str, dict[str, str]]:
    """'name=VAR=value,VAR=value' → (name, {VAR: value}); 'name=' for no variables."""
    name, _, rest = text.partition("=")
    env = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"not VAR=value: {item!r}")
        env[key] = value
    return name, env


async def one_round(port: int, vocabulary: list[str], pid: int) -> dict[str, float]:
    hostile = Hostile(port, vocabulary, pid)
    hostile.stop.set()  # never_read watches one round to its end, then returns
    await hostile.never_read()
    held = hostile.figures.get("never_read_held_rss_mb", [float("nan")])[0]
    after_1s = current_rss_mb(pid)  # never_read waited 1 s after the last reset
    await asyncio.sleep(4.0)
    dropped = len(hostile.figures.get("never_read_dropped_s", []))
    return {"held": held, "after_1s": after_1s, "after_5s": current_rss_mb(pid), "dropped": dropped}


def run_variant(name: str, extra: dict[str, str], args: argparse.Namespace) -> None:
    port = free_port()
    env = {
        **os.environ,
        **extra,
        "PYTHONPATH": str(ROOT),
        "ACCESS_LOG": "false",
        "SEND_TIMEOUT_SECONDS": str(args.send_timeout),
    }
    command = [sys.executable, "-m", "app", "--checkpoint", str(args.checkpoint)]
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
    server = subprocess.Popen(
        [*command, "--port", str(port)], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_healthy(port, server)
        vocabulary = httpx.get(f"http://127.0.0.1:{port}/model").json()["vocabulary"]
        warm = {"text": "warm up " * 100, "top_n": 5}
        httpx.post(f"http://127.0.0.1:{port}/score", json=warm, timeout=60)
        idle = current_rss_mb(server.pid)
        print(f"{name} {extra or ''}: idle {idle:.0f} MB")
        print("| round | dropped | held MB | 1 s after MB | 5 s after MB | given back (5 s) |")
        print("|--:|--:|--:|--:|--:|--:|")
        back = []
        for n in range(args.rounds):
            figures = asyncio.run(one_round(port, vocabulary, server.pid))
            back.append(figures["held"] - figures["after_5s"])
            print(
                f"| {n + 1} | {figures['dropped']:.0f}/16 | {figures['held']:.0f} | "
                f"{figures['after_1s']:.0f} | {figures['after_5s']:.0f} | {back[-1]:.0f} MB |"
            )
        final = current_rss_mb(server.pid)
        print(
            f"{name}: median given back {statistics.median(back):.0f} MB a round; "
            f"after the last round {final:.0f} MB, {final - idle:+.0f} MB from idle\n"
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", type=Path, default=ROOT / "checkpoints" / "shakespeare.safetensors"
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--send-timeout", type=float, default=3.0)
    parser.add_argument(
        "--variant",
        type=variant,
        action="append",
        help="NAME=VAR=value,… environment of one server (repeatable; default: as it is)",
    )
    args = parser.parse_args()
    for name, extra in args.variant or [("default", {})]:
        started = time.perf_counter()
        run_variant(name, extra, args)
        print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
