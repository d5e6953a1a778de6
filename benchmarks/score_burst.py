"""A burst of concurrent /score requests from one client, beside a light client's one.

    python benchmarks/score_burst.py [--count 64] [--chars 250000] [--top-n 5] [--root DIR]

The server is `python -m app` (the shipped checkpoint, default settings) from --root (this
tree by default; another checkout to compare code on the same machine) in its own process.
One client (127.0.0.2) sends --count texts of --chars characters (tiny Shakespeare, from
different places) with top_n at once; a moment later a second client (127.0.0.3) scores 200
characters. The client reads each response's bytes and drops them (no JSON parse: its CPU
is the server's on a small machine).

Prints the seconds until the whole burst is answered, the light request's seconds, and the
server's resident memory: idle (after a warm-up) and the most sampled during the burst
(every 0.1 s), and their difference. Targets: RSS under idle + 600 MB, the burst in at most
half the time of the code it replaces on the same machine, the light request in seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from load_client import free_port, wait_healthy  # noqa: E402

TINY = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def score(port: int, source: str, text: str, top_n: int) -> tuple[int, int, float]:
    """One POST /score from `source`; → (status, body bytes, seconds)."""
    transport = httpx.AsyncHTTPTransport(local_address=source)
    started = time.perf_counter()
    async with httpx.AsyncClient(transport=transport, timeout=3600) as client:
        body = {"text": text, "top_n": top_n, "skip_unknown": True}
        async with client.stream("POST", f"http://127.0.0.1:{port}/score", json=body) as reply:
            size = 0
            async for chunk in reply.aiter_raw():
                size += len(chunk)
            return reply.status_code, size, time.perf_counter() - started


async def burst(port: int, pid: int, args: argparse.Namespace, corpus: str) -> dict:
    texts = []
    for n in range(args.count):
        start = (n * 7919) % max(1, len(corpus) - args.chars)
        texts.append((corpus * 3)[start : start + args.chars])
    peak = [rss_mb(pid)]
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            peak.append(rss_mb(pid))
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    heavy = [asyncio.create_task(score(port, "127.0.0.2", t, args.top_n)) for t in texts]
    await asyncio.sleep(1.0)
    light = await score(port, "127.0.0.3", corpus[:200], args.top_n)
    results = await asyncio.gather(*heavy)
    seconds = time.perf_counter() - started
    done.set()
    await sampler
    statuses: dict[int, int] = {}
    for status, _, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    return {
        "burst_seconds": round(seconds, 1),
        "statuses": statuses,
        "light_status": light[0],
        "light_seconds": round(light[2], 2),
        "peak_rss_mb": round(max(peak)),
        "response_mb": round(sum(size for _, size, _ in results) / 2**20),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--chars", type=int, default=250_000)
    parser.add_argument("--top-n", type=int, default=5)
    parser.add_argument("--root", type=Path, default=ROOT, help="the code tree to serve")
    args = parser.parse_args()
    corpus = TINY.read_text()
    port = free_port()
    root = args.root.resolve()
    env = {**os.environ, "PYTHONPATH": str(root), "ACCESS_LOG": "false", "LOG_LEVEL": "warning"}
    server = subprocess.Popen([sys.executable, "-m", "app", "--port", str(port)], env=env, cwd=root)
    try:
        wait_healthy(port, server)
        asyncio.run(score(port, "127.0.0.4", corpus[:5000], args.top_n))  # warm-up
        time.sleep(1.0)
        idle = rss_mb(server.pid)
        result = asyncio.run(burst(port, server.pid, args, corpus))
    finally:
        server.terminate()
        server.wait(30)
    result = {
        "root": str(root),
        "count": args.count,
        "chars": args.chars,
        "top_n": args.top_n,
        "idle_rss_mb": round(idle),
        **result,
    }
    result["rss_over_idle_mb"] = result["peak_rss_mb"] - result["idle_rss_mb"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
