"""Hostile load: 64 well-behaved streams beside clients that try to break the service.

    python benchmarks/hostile_load.py [--streams 64] [--length 500] [--repeats 7]
                                      [--server-cpus 0-3] [--attacks NAME,...]
                                      [--send-timeout 5]

The server is `python -m app` (the shipped checkpoint, default settings) in its own process.
Each well-behaved stream comes from its own loopback address (127.0.1.N, as 64 users
would), POSTs /generate/stream for `--length` chars and records the gaps between its
chunks. The same 64 streams run twice per repeat, alternately: quiet, then while hostile
clients (benchmarks/hostile_clients.py: from 127.0.0.66-71, in a process of their own)
send at the same time:

  fields      bodies with huge, negative, NaN and wrongly typed fields, a regex bomb
  primes      bursts of 2,000-char primes (length 1)
  slow        headers and bodies trickled a byte at a time, idle sockets
  scan        random methods and paths
  hangups     streams dropped mid-way
  score_burst 64 concurrent /score of 250,000 characters with top_n 5 (from 127.0.0.80),
              again as soon as all are answered
  flood       as many long streams as the server lets one client open (held open), and
              more every 0.1 s from 300 connections (429s, as fast as they come back)
  regex_flood 24 requests at a time (from 127.0.0.81), each a pattern never sent before
              that is slow to compile (a{3000}, a{3001}, ...; (a|b)*a(a|b){20}, {21}, ...)
  never_read  16 connections (from 127.0.0.82) with a 4 KB receive buffer, each sending a
              /score of 100,000 characters with top_n 5 (a ~15 MB reply) and reading none
              of it; watched until the server drops them, then again

and probes (GET /health every 100 ms, /metrics every second, and every 0.5 s a request
with a simple regex never sent before, from a client of its own: 127.0.0.90) run beside
the 64 streams, in both phases, so that the hostile clients are the only difference
between them. `--attacks regex_flood,scan` runs only those (default: all).
The server runs with SEND_TIMEOUT_SECONDS = --send-timeout (default 5 s, shorter than the
service's 30 s, so that the clients that never read are dropped within a hostile phase);
well-behaved clients, which read, never meet it.
The attackers' own CPU time is taken from the same cores as the server's, unless
--server-cpus puts the server on CPUs of its own (every client, attackers included, then
runs on the others, as if on machines of their own).

It prints, per phase (medians over repeats): streams completed / N, their aggregate chars/s
and p99 gap between chunks, and the ratio hostile/quiet; per phase, /health failures and p99
latency; the server's peak RSS; the tracebacks in its log; what the hostile requests got;
and the cores each side used (the server's event loop, its decoding threads, the
attackers' process), which on a small machine shows how much of it the attack itself took.
and, for the clients that never read, how long after their reply's first byte the server
dropped them and its RSS while they were held and once they were gone (the server's RSS
is also given idle, before the first phase, and after the last).
Targets: N/N complete, ratio >= 0.7, p99 gap < 250 ms, RSS < 1 GB, /health always 200,
the simple regex answered in under 1 s, no traceback, clients that never read dropped
within SEND_TIMEOUT_SECONDS + 5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from hostile_clients import Hostile, attack  # noqa: E402
from load_client import (  # noqa: E402
    REQUESTS,
    client_address,
    cpu_seconds,
    free_port,
    one_stream,
    peak_rss_mb,
    percentile,
    wait_healthy,
)

CPU_KEYS = ("loop", "threads", "attackers")  # the server's event loop and other threads
SIMPLE_REGEX_CLIENT = "127.0.0.90"  # the regex probe's own address


class Probes:
    """GET /health every 100 ms and GET /metrics every second, as an orchestrator would;
    and every 0.5 s, from another client, a short request with a simple regex that no
    request has sent before (so it compiles), every other time the same without a regex:
    what the answer takes besides the compile."""

    def __init__(self, port: int):
        self.port = port
        self.stop = asyncio.Event()
        self.health: list[float] = []
        self.health_failures = 0
        self.regex: list[float] = []  # seconds to each answer
        self.plain: list[float] = []  # the same request without its regex
        self.regex_failures = 0
        self.regex_sent = 0

    async def run(self) -> None:
        await asyncio.gather(self.orchestrator(), self.simple_regex())

    async def simple_regex(self) -> None:
        transport = httpx.AsyncHTTPTransport(local_address=SIMPLE_REGEX_CLIENT)
        base = f"http://127.0.0.1:{self.port}"
        async with httpx.AsyncClient(base_url=base, timeout=30, transport=transport) as c:
            while not self.stop.is_set():
                self.regex_sent += 1
                body = {"prime": "The ", "length": 10, "regex": f"[a-z ]{{1,{self.regex_sent}}}"}
                plain = self.regex_sent % 2 == 0
                if plain:
                    del body["regex"]
                started = time.perf_counter()
                try:
                    ok = (await c.post("/generate", json=body)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                (self.plain if plain else self.regex).append(time.perf_counter() - started)
                self.regex_failures += not ok
                await asyncio.sleep(0.5)

    async def orchestrator(self) -> None:
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


def current_rss_mb(pid: int) -> float:
    """VmRSS: the process's resident set now (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_list(text: str) -> set[int]:
    """'0-3,6' → {0, 1, 2, 3, 6}."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a CPU list like 0-3,6: {text!r}") from None
    if not cpus:
        raise argparse.ArgumentTypeError(f"no CPU in {text!r}")
    return cpus


def process_cpu(pid: int) -> float:
    """CPU seconds so far of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu(pid: int) -> float:
    """CPU seconds so far of the running child processes of `pid` (the server's regex
    workers), which cpu_seconds(pid) does not count."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def phase(
    port: int, streams: int, length: int, probes: Probes | None, server: int, attacker: int = 0
) -> dict:
    """The streams, once; CPU use is in cores (CPU seconds per wall second)."""
    running = []
    if probes is not None:
        probes.stop.clear()
        running = [asyncio.create_task(probes.run())]
    before = cpu_seconds(server), process_cpu(attacker) if attacker else 0.0
    workers = children_cpu(server)
    started = time.perf_counter()
    plain = REQUESTS["plain"]
    results = await asyncio.gather(
        *(one_stream(port, length, n, plain, None, client_address(n)) for n in range(streams))
    )
    seconds = time.perf_counter() - started
    after = cpu_seconds(server), process_cpu(attacker) if attacker else 0.0
    cpu = {name: (after[0][name] - before[0][name]) / seconds for name in after[0]}
    cpu["attackers"] = (after[1] - before[1]) / seconds
    cpu["regex workers"] = (children_cpu(server) - workers) / seconds
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
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--server-cpus",
        type=cpu_list,
        help="run the server on these CPUs (e.g. 0-3) and every client, the attackers "
        "included, on the others, as if on machines of their own (default: all share)",
    )
    parser.add_argument(
        "--send-timeout",
        type=float,
        default=5.0,
        help="the server's SEND_TIMEOUT_SECONDS (default 5)",
    )
    parser.add_argument(
        "--attacks",
        type=lambda text: set(text.split(",")),
        help="only these attacks, comma-separated (default: all; names in the docstring)",
    )
    args = parser.parse_args()
    unknown = {name for name in args.attacks or () if not callable(getattr(Hostile, name, None))}
    if unknown:
        parser.error(f"no attack named {', '.join(sorted(unknown))}")
    placement = "server and clients share every CPU"
    if args.server_cpus is not None:
        others = os.sched_getaffinity(0) - args.server_cpus
        if not args.server_cpus <= os.sched_getaffinity(0) or not others:
            parser.error(
                "--server-cpus must name CPUs of this machine and leave one for the clients"
            )
        os.sched_setaffinity(0, others)  # this process's clients; the attackers inherit it
        placement = f"server on CPUs {sorted(args.server_cpus)}, clients on {sorted(others)}"

    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115 (kept)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ACCESS_LOG": "false",
        "LOG_LEVEL": "info",
        "SEND_TIMEOUT_SECONDS": str(args.send_timeout),
    }
    command = [
        sys.executable,
        "-m",
        "app",
        "--checkpoint",
        str(args.checkpoint),
        "--port",
        str(port),
    ]
    pin = None if args.server_cpus is None else lambda: os.sched_setaffinity(0, args.server_cpus)
    server = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pin
    )
    try:
        wait_healthy(port, server)
        vocabulary = httpx.get(f"http://127.0.0.1:{port}/model").json()["vocabulary"]
        asyncio.run(phase(port, 8, 50, None, server.pid))  # warm-up
        warm = {"prime": "a", "length": 1, "regex": "[a-z]"}  # starts the regex workers
        httpx.post(f"http://127.0.0.1:{port}/generate", json=warm, timeout=60)
        idle_rss = current_rss_mb(server.pid)
        quiet, hostile_runs = [], []
        probes = {"quiet": Probes(port), "hostile": Probes(port)}
        statuses: collections.Counter[str] = collections.Counter()
        figures: dict[str, list[float]] = collections.defaultdict(list)
        spawn = multiprocessing.get_context("spawn")
        for _ in range(args.repeats):
            quiet.append(
                asyncio.run(phase(port, args.streams, args.length, probes["quiet"], server.pid))
            )
            stop, tally = spawn.Event(), spawn.Queue()
            attacker = spawn.Process(
                target=attack, args=(port, vocabulary, stop, tally, args.attacks, server.pid)
            )
            attacker.start()
            time.sleep(3)  # let the attack build up first
            under_attack = phase(
                port, args.streams, args.length, probes["hostile"], server.pid, attacker.pid
            )
            hostile_runs.append(asyncio.run(under_attack))
            stop.set()
            counts, measured = tally.get(timeout=300)
            statuses.update(counts)
            for name, values in measured.items():
                figures[name] += values
            attacker.join(60)
        time.sleep(2)
        rss, end_rss = peak_rss_mb(server.pid), current_rss_mb(server.pid)
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
        f"median of {args.repeats}; {placement}"
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
    for name, probe in probes.items():
        print(
            f"/health {name}: {probe.health_failures} failures of {len(probe.health)}, "
            f"p99 {percentile(probe.health, 99) * 1e3:.0f} ms"
        )
    for name, probe in probes.items():
        slow = sum(seconds >= 1.0 for seconds in probe.regex)
        print(
            f"simple regex from another client, {name}: {len(probe.regex)} requests, "
            f"{probe.regex_failures} failed (with those without), p99 "
            f"{percentile(probe.regex, 99) * 1e3:.0f} ms, max "
            f"{max(probe.regex, default=0) * 1e3:.0f} ms, {slow} at 1 s or more; without "
            f"the regex: p99 {percentile(probe.plain, 99) * 1e3:.0f} ms"
        )
    runs = {"quiet": quiet, "hostile": hostile_runs}
    print(
        "regex workers' CPU (cores): "
        + ", ".join(
            f"{name} {statistics.median(run['cpu']['regex workers'] for run in phase_runs):.2f}"
            for name, phase_runs in runs.items()
        )
    )
    print(
        f"server peak RSS: {rss:.0f} MB (idle before {idle_rss:.0f} MB, after the last phase "
        f"{end_rss:.0f} MB), still running: {alive}, tracebacks in its log: {tracebacks}"
    )
    dropped = figures.get("never_read_dropped_s", [])
    if dropped or "never_read" in (args.attacks or {"never_read"}):
        late = sum(seconds > args.send_timeout + 5 for seconds in dropped)
        held = figures.get("never_read_held_rss_mb", [])
        after = figures.get("never_read_after_rss_mb", [])
        print(
            f"clients that never read: {len(dropped)} dropped, seconds from their reply's "
            f"first byte to the drop: median {statistics.median(dropped or [0]):.1f}, max "
            f"{max(dropped, default=0):.1f}, {late} later than SEND_TIMEOUT_SECONDS "
            f"{args.send_timeout:g} + 5 s (from the request's send: max "
            f"{max(figures.get('never_read_sent_to_drop_s', []), default=0):.1f}); server "
            f"RSS with all held {'/'.join(f'{mb:.0f}' for mb in held) or '-'} MB, "
            f"1 s after all dropped {'/'.join(f'{mb:.0f}' for mb in after) or '-'} MB"
        )
    errors = sum((run["errors"] for run in quiet + hostile_runs), collections.Counter())
    if errors:
        print(f"well-behaved stream errors: {dict(errors)}")
    print("hostile requests by outcome:", dict(sorted(statuses.items())))
    print(f"server log: {log.name}")


if __name__ == "__main__":
    main()
