"""The same load through each API: N clients asking for the same text as a native stream,
an OpenAI stream, a whole /generate and a whole completion, against the native stream.

    python benchmarks/api_load.py [--clients 64] [--length 500] [--repeats 7]
                                  [--tree ../other]

The server is `python -m app` (the shipped checkpoint) in its own process, or from another
checkout with --tree, to compare two versions. Each client comes from its own loopback
address and reads its response over a plain socket (the bytes are counted, not parsed:
the client's own CPU stays small). Each repeat runs every kind in turn. Per kind it prints
the median aggregate chars/s and the server's event loop CPU in cores (the loop writes the
chunks, and shares the GIL with the decoding threads), then each kind's chars/s against
the native stream's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from load_client import client_address, cpu_seconds, free_port, wait_healthy  # noqa: E402

KINDS = {  # kind → (path, body fields for a prime, a length and a seed)
    "native stream": ("/generate/stream", lambda n, seed: {"length": n, "seed": seed}),
    "openai stream": (
        "/v1/completions",
        lambda n, seed: {"max_tokens": n, "seed": seed, "stream": True},
    ),
    "whole /generate": ("/generate", lambda n, seed: {"length": n, "seed": seed}),
    "whole completion": ("/v1/completions", lambda n, seed: {"max_tokens": n, "seed": seed}),
}
PRIMES = {"/v1/completions": "prompt"}


async def one(port: int, kind: str, length: int, seed: int, model: str) -> int:
    """One request; → the response's bytes."""
    path, fields = KINDS[kind]
    body = {PRIMES.get(path, "prime"): "The ", **fields(length, seed)}
    if path.startswith("/v1/"):
        body["model"] = model
    data = json.dumps(body).encode()
    source = client_address(seed)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (path.encode(), len(data)) + data
    )
    await writer.drain()
    received = 0
    while chunk := await reader.read(65536):
        received += len(chunk)
    writer.close()
    return received


async def run(port: int, pid: int, kind: str, clients: int, length: int, model: str) -> tuple:
    before, started = cpu_seconds(pid), time.perf_counter()
    sizes = await asyncio.gather(*(one(port, kind, length, n, model) for n in range(clients)))
    seconds = time.perf_counter() - started
    loop = (cpu_seconds(pid)["loop"] - before["loop"]) / seconds
    if min(sizes) < length:
        raise RuntimeError(f"{kind}: a response of {min(sizes)} bytes, for {length} chars")
    return clients * length / seconds, loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--length", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout to serve")
    args = parser.parse_args()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(args.tree), "ACCESS_LOG": "false"}
    env["LOG_LEVEL"] = "warning"
    command = [sys.executable, "-m", "app", "--port", str(port)]
    server = subprocess.Popen(command, env=env, cwd=args.tree)
    results: dict[str, list[tuple]] = {kind: [] for kind in KINDS}
    try:
        wait_healthy(port, server)
        name = httpx.get(f"http://127.0.0.1:{port}/model").json()["name"]  # OpenAI's model
        for kind in KINDS:  # warm up
            asyncio.run(run(port, server.pid, kind, 8, 20, name))
        for _ in range(args.repeats):
            for kind in KINDS:
                results[kind].append(
                    asyncio.run(run(port, server.pid, kind, args.clients, args.length, name))
                )
    finally:
        server.terminate()
        server.wait(30)
    print(
        f"{os.cpu_count()} CPUs, {args.clients} clients x {args.length} chars, "
        f"median of {args.repeats}, {args.tree}"
    )
    print("| kind | chars/s | event loop cores | against the native stream |")
    print("|---|--:|--:|--:|")
    native = statistics.median(rate for rate, _ in results["native stream"])
    for kind, runs in results.items():
        rate = statistics.median(rate for rate, _ in runs)
        loop = statistics.median(loop for _, loop in runs)
        print(f"| {kind} | {rate:.0f} | {loop:.2f} | {rate / native:.2f}x |")


if __name__ == "__main__":
    main()
