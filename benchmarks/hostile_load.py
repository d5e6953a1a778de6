"""Hostile load: 64 well-behaved streams beside clients that try to break the service.

    python benchmarks/hostile_load.py [--streams 64] [--length 500] [--repeats 3]

The server is `python -m app` (the shipped checkpoint, default settings) in its own process.
Each well-behaved stream comes from its own loopback address (127.0.1.N, as 64 users
would), POSTs /generate/stream for `--length` chars and records the gaps between its
chunks. The same 64 streams run twice per repeat, alternately: quiet, then while hostile
clients (from 127.0.0.66-71, in a process of their own) send at the same time:

  fields      bodies with huge, negative, NaN and wrongly typed fields, a regex bomb
  primes      bursts of 2,000-char primes (length 1)
  slow        headers and bodies trickled a byte at a time, idle sockets
  scan        random methods and paths
  hangups     streams dropped mid-way
  flood       as many long streams as the server lets one client open (held open), and
              more every 0.1 s from 300 connections (429s, as fast as they come back)

and probes (GET /health every 100 ms, /metrics every second) run beside the 64 streams.
The attackers' own CPU time is taken from the same cores as the server's.

It prints, per phase (medians over repeats): streams completed / N, their aggregate chars/s
and p99 gap between chunks, and the ratio hostile/quiet; /health failures and its p99
latency; the server's peak RSS; the tracebacks in its log; what the hostile requests got;
and the cores each side used (the server's event loop, its decoding threads, the
attackers' process), which on a small machine shows how much of it the attack itself took.
Targets: N/N complete, ratio >= 0.7, p99 gap < 250 ms, RSS < 1 GB, /health always 200,
no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve_load import cpu_seconds, free_port, peak_rss_mb, percentile, wait_healthy  # noqa: E402

CPU_KEYS = ("loop", "threads", "attackers")  # the server's event loop and other threads
ATTACKERS = [f"127.0.0.{n}" for n in range(66, 72)]  # one address per kind of attack


@dataclass
class Stream:
    chars: int = 0
    gaps: list[float] = field(default_factory=list)
    error: str | None = None


async def request(
    port: int, raw: bytes, source: str, read: bool = True, timeout: float = 30.0
) -> int | None:
    """Send raw bytes from `source`; → the status code (None if the connection failed)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    except OSError:
        return None
    try:
        writer.write(raw)
        await writer.drain()
        if not read:
            return None
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        return int(head.split(b" ", 2)[1])
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
        return None
    finally:
        writer.close()


def post(path: str, body: bytes, method: bytes = b"POST") -> bytes:
    return (
        method + b" " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: "
        b"application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
    )


async def good_stream(port: int, source: str, length: int, seed: int) -> Stream:
    body = json.dumps({"prime": "The ", "length": length, "top_k": 5, "seed": seed}).encode()
    result = Stream()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    except OSError as error:
        return Stream(error=type(error).__name__)
    last = None
    try:
        writer.write(post("/generate/stream", body))
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if int(head.split(b" ", 2)[1]) != 200:
            return Stream(error=head.split(b"\r\n", 1)[0].decode())
        pending = b""
        while True:
            data = await reader.read(65536)
            if not data:
                break
            pending += data
            *events, pending = pending.split(b"\n\n")
            for event in events:
                if b"event: chars" not in event:
                    continue
                now = time.perf_counter()
                if last is not None:
                    result.gaps.append(now - last)
                last = now
                result.chars += len(json.loads(event.split(b"data: ", 1)[1].split(b"\r\n")[0]))
    except (OSError, asyncio.IncompleteReadError, ValueError) as error:
        result.error = type(error).__name__
    finally:
        writer.close()
    if result.error is None and result.chars != length:
        result.error = f"{result.chars} of {length} chars"
    return result


class Hostile:
    """The hostile clients, each a loop until `stop` is set; statuses are tallied."""

    def __init__(self, port: int, vocabulary: list[str]):
        self.port = port
        self.vocabulary = [c for c in vocabulary if c not in '"\\'] or ["a"]
        self.stop = asyncio.Event()
        self.statuses: collections.Counter[str] = collections.Counter()
        self.rng = random.Random(0)

    def tally(self, kind: str, status: int | None) -> None:
        self.statuses[f"{kind} {status if status is not None else 'closed'}"] += 1

    async def fields(self) -> None:
        bodies = [
            b'{"prime": "a", "length": 5, "top_k": 9223372036854775808}',
            b'{"prime": "a", "length": -1}',
            b'{"prime": "a", "temperature": NaN}',
            b'{"prime": "a", "temperature": 1e999}',
            b'{"prime": "a", "top_p": "lots"}',
            b'{"prime": "\\ud800"}',
            b'{"prime": "a", "regex": "(a|b)*a(a|b){40}"}',
            b'{"prime": "a", "stop": ["a","b","c","d","e"]}',
            b'{"prime": "a", "logit_bias": {"a": 1e308}}',
            b'{"prime": 12345}',
            b"\xff\xfe\xfd",
            b"[" * 5000,
        ]
        while not self.stop.is_set():
            body = self.rng.choice(bodies)
            path = self.rng.choice(["/generate", "/generate/stream", "/score"])
            self.tally("fields", await request(self.port, post(path, body), ATTACKERS[0]))
            await asyncio.sleep(0.01)

    async def primes(self) -> None:
        while not self.stop.is_set():
            burst = []
            for _ in range(16):
                prime = "".join(self.rng.choices(self.vocabulary, k=2000))
                body = json.dumps({"prime": prime, "length": 1}).encode()
                burst.append(request(self.port, post("/generate", body), ATTACKERS[1], timeout=120))
            for status in await asyncio.gather(*burst):
                self.tally("primes", status)
            await asyncio.sleep(0.5)

    async def slow(self) -> None:
        async def trickle(raw: bytes) -> None:
            try:
                _, writer = await asyncio.open_connection(
                    "127.0.0.1", self.port, local_addr=(ATTACKERS[2], 0)
                )
            except OSError:
                return
            try:
                for byte in raw:
                    if self.stop.is_set():
                        break
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(1.0)
                self.tally("slow", None)
            except OSError:
                self.tally("slow", None)  # the server hung up on it: what should happen
            finally:
                writer.close()

        while not self.stop.is_set():
            tasks = [trickle(post("/generate", b'{"prime": "a", "length": 5}')) for _ in range(40)]
            tasks += [trickle(b"") for _ in range(20)]  # idle sockets
            await asyncio.gather(*tasks)

    async def scan(self) -> None:
        methods = [b"GET", b"PUT", b"DELETE", b"PATCH", b"BREW", b"X" * 30, b"TRACE"]
        while not self.stop.is_set():
            method = self.rng.choice(methods) + str(self.rng.randrange(1000)).encode()
            path = "/" + "".join(self.rng.choices("abcdefgh/", k=self.rng.randrange(1, 40)))
            self.tally("scan", await request(self.port, post(path, b"{}", method), ATTACKERS[3]))
            await asyncio.sleep(0.005)

    async def hangups(self) -> None:
        body = json.dumps({"prime": "a", "length": 2000}).encode()
        while not self.stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", self.port, local_addr=(ATTACKERS[4], 0)
                )
                writer.write(post("/generate/stream", body))
                await writer.drain()
                await reader.read(2000)
                writer.transport.abort()  # gone mid-stream, without a goodbye
                self.tally("hangups", None)
            except OSError:
                pass
            await asyncio.sleep(0.05)

    async def flood(self) -> None:
        """As many long streams as one client may open, held open and read slowly."""
        body = json.dumps({"prime": "a", "length": 2000}).encode()

        async def one() -> None:
            while not self.stop.is_set():
                try:
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1", self.port, local_addr=(ATTACKERS[5], 0)
                    )
                except OSError:
                    await asyncio.sleep(0.1)
                    continue
                try:
                    writer.write(post("/generate/stream", body))
                    await writer.drain()
                    head = await reader.readuntil(b"\r\n\r\n")
                    self.tally("flood", int(head.split(b" ", 2)[1]))
                    while not self.stop.is_set() and await reader.read(256):
                        await asyncio.sleep(0.05)
                except (OSError, asyncio.IncompleteReadError):
                    pass
                finally:
                    writer.close()
                await asyncio.sleep(0.1)

        await asyncio.gather(*(one() for _ in range(300)))

    def tasks(self) -> list:
        return [
            self.fields(),
            self.primes(),
            self.slow(),
            self.scan(),
            self.hangups(),
            self.flood(),
        ]


def attack(port: int, vocabulary: list[str], stop: Any, statuses: Any) -> None:
    """The hostile clients until `stop` (a multiprocessing Event) is set, in a process of
    their own as they would be on machines of their own; their tally goes to `statuses`."""
    hostile = Hostile(port, vocabulary)

    async def run() -> None:
        tasks = [asyncio.create_task(task) for task in hostile.tasks()]
        while not stop.is_set():
            await asyncio.sleep(0.05)
        hostile.stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())
    statuses.put(dict(hostile.statuses))


class Probes:
    """GET /health every 100 ms and GET /metrics every second, as an orchestrator would."""

    def __init__(self, port: int):
        self.port = port
        self.stop = asyncio.Event()
        self.health: list[float] = []
        self.health_failures = 0

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=10) as c:
            tick = 0
            while not self.stop.is_set():
                started = time.perf_counter()
                try:
                    ok = (await c.get("/health")).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.health.append(time.perf_counter() - started)
                self.health_failures += not ok
                tick += 1
                if tick % 10 == 0:
                    with contextlib.suppress(httpx.HTTPError):
                        await c.get("/metrics")
                await asyncio.sleep(0.1)


def process_cpu(pid: int) -> float:
    """CPU seconds so far of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def phase(
    port: int, streams: int, length: int, probes: Probes | None, server: int, attacker: int = 0
) -> dict:
    """The streams, once; CPU use is in cores (CPU seconds per wall second)."""
    running = []
    if probes is not None:
        probes.stop.clear()
        running = [asyncio.create_task(probes.run())]
    before = cpu_seconds(server), process_cpu(attacker) if attacker else 0.0
    started = time.perf_counter()
    results = await asyncio.gather(
        *(good_stream(port, f"127.0.1.{n + 1}", length, n) for n in range(streams))
    )
    seconds = time.perf_counter() - started
    after = cpu_seconds(server), process_cpu(attacker) if attacker else 0.0
    cpu = {name: (after[0][name] - before[0][name]) / seconds for name in after[0]}
    cpu["attackers"] = (after[1] - before[1]) / seconds
    if probes is not None:
        probes.stop.set()
        await asyncio.gather(*running, return_exceptions=True)
    done = [r for r in results if r.error is None]
    return {
        "completed": len(done),
        "chars_per_second": sum(r.chars for r in done) / seconds,
        "p99_gap_ms": percentile([g for r in results for g in r.gaps], 99) * 1e3,
        "errors": collections.Counter(r.error for r in results if r.error),
        "cpu": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", type=Path, default=ROOT / "checkpoints" / "shakespeare.safetensors"
    )
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--length", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115 (kept)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ACCESS_LOG": "false", "LOG_LEVEL": "info"}
    command = [
        sys.executable,
        "-m",
        "app",
        "--checkpoint",
        str(args.checkpoint),
        "--port",
        str(port),
    ]
    server = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(port, server)
        vocabulary = httpx.get(f"http://127.0.0.1:{port}/model").json()["vocabulary"]
        asyncio.run(phase(port, 8, 50, None, server.pid))  # warm-up
        quiet, hostile_runs = [], []
        probes = Probes(port)
        statuses: collections.Counter[str] = collections.Counter()
        spawn = multiprocessing.get_context("spawn")
        for _ in range(args.repeats):
            quiet.append(asyncio.run(phase(port, args.streams, args.length, None, server.pid)))
            stop, tally = spawn.Event(), spawn.Queue()
            attacker = spawn.Process(target=attack, args=(port, vocabulary, stop, tally))
            attacker.start()
            time.sleep(3)  # let the attack build up first
            under_attack = phase(port, args.streams, args.length, probes, server.pid, attacker.pid)
            hostile_runs.append(asyncio.run(under_attack))
            stop.set()
            statuses.update(tally.get(timeout=120))
            attacker.join(60)
        rss = peak_rss_mb(server.pid)
        alive = server.poll() is None
    finally:
        server.terminate()
        server.wait(30)
    log.seek(0)
    text = log.read()
    tracebacks = text.count("Traceback")

    def median(runs: list[dict], key: str) -> float:
        return statistics.median(run[key] for run in runs)

    print(
        f"{os.cpu_count()} CPUs, {args.streams} streams x {args.length} chars, "
        f"median of {args.repeats}"
    )
    print("| phase | completed | chars/s | p99 gap ms | CPU: loop | threads | attackers |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for name, runs in (("quiet", quiet), ("hostile", hostile_runs)):
        completed = min(run["completed"] for run in runs)
        cores = [statistics.median(run["cpu"][key] for run in runs) for key in CPU_KEYS]
        print(
            f"| {name} | {completed}/{args.streams} | {median(runs, 'chars_per_second'):.0f} | "
            f"{median(runs, 'p99_gap_ms'):.0f} | " + " | ".join(f"{c:.2f}" for c in cores) + " |"
        )
    ratio = median(hostile_runs, "chars_per_second") / median(quiet, "chars_per_second")
    print(f"hostile/quiet chars/s: {ratio:.2f}x (target >= 0.7)")
    health = probes.health
    print(
        f"/health: {probes.health_failures} failures of {len(health)}, "
        f"p99 {percentile(health, 99) * 1e3:.0f} ms"
    )
    print(
        f"server peak RSS: {rss:.0f} MB, still running: {alive}, "
        f"tracebacks in its log: {tracebacks}"
    )
    errors = sum((run["errors"] for run in quiet + hostile_runs), collections.Counter())
    if errors:
        print(f"well-behaved stream errors: {dict(errors)}")
    print("hostile requests by outcome:", dict(sorted(statuses.items())))
    print(f"server log: {log.name}")


if __name__ == "__main__":
    main()
