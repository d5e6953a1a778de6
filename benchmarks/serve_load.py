"""Load benchmark: N concurrent streaming clients against our server and baselines.

    python benchmarks/serve_load.py                  # naive baseline and ours, N = 1, 8, 64, 256
    python benchmarks/serve_load.py --servers ours --clients 1,64
    python benchmarks/serve_load.py --servers ours --clients 64 --requests plain,options,regex
    python benchmarks/serve_load.py --servers ours --clients 64 --models 1,4
    python benchmarks/serve_load.py --servers other,ours --other-tree /tmp/old  # another checkout

Each server runs as its own process on a free port with the same checkpoint (access logs
off). `baseline` is benchmarks/naive_server.py (one sampling loop per request) on the
seed's HTTP stack (uvicorn's h11 and asyncio), `baseline-c` the same on httptools and
uvloop (the stack ours runs on: a character per event leans on it); `other` is
`python -m app` from another checkout of this repository (`--other-tree`), to compare two
versions in one run. Each client comes from its own loopback address (127.0.1.1, ...: as
many users would; the service limits requests per client), POSTs /generate/stream asking
for `--length` chars over a plain socket and reads the SSE events (benchmarks/load_client.py).
The request kinds:

    plain     top_k 5
    options   top_k 5, a stop string, repetition_penalty 1.2, logprobs 5
    regex     top_k 5, regex ([A-Z][a-z]+( [a-z]+){3,8}\\. )+ (sentences of a fixed shape,
              repeated until the length)

With `--models M`, the server serves M copies of the checkpoint (MODELS_DIR) and the
clients are spread over them. All servers are started at once and stay up; per N each
repeat runs every server and request kind in turn (only one is busy at a time), so a
shared machine's drift falls on all of them alike. Per N it prints the median run's
aggregate chars/s, p50/p99 time to first char, p99 gap between events, errors, the
server's peak RSS, and where the CPU went (cores busy on average: the server's main
thread, which runs the event loop; its other threads, which decode; this client process,
which shares the machine); then ratios against the first server / request kind / model
count.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "shakespeare.safetensors"
sys.path.insert(0, str(ROOT / "benchmarks"))

from load_client import (  # noqa: E402
    REQUESTS,
    LoadResult,
    free_port,
    percentile,
    run_load,
    wait_healthy,
)


def naive(kind: str) -> bool:
    """Whether a server kind is the naive server (on either HTTP stack)."""
    return kind in ("baseline", "baseline-c")


def server_command(kind: str, target: Path, port: int, other_tree: Path | None) -> list[str]:
    if naive(kind):
        script = str(ROOT / "benchmarks" / "naive_server.py")
        stack = "c" if kind == "baseline-c" else "seed"
        command = [sys.executable, script, "--checkpoint", str(target), "--port", str(port)]
        return [*command, "--http-stack", stack]
    if target.is_dir():
        return [sys.executable, "-m", "app", "--port", str(port)]  # MODELS_DIR: env
    return [sys.executable, "-m", "app", "--checkpoint", str(target), "--port", str(port)]


@dataclass
class Server:
    """One server process under test: `kind` serving `models` copies of the checkpoint."""

    kind: str
    models: int
    port: int
    process: subprocess.Popen
    names: list[str] | None  # the model names clients ask for (None: the default model)
    folder: Path | None  # MODELS_DIR, removed at the end

    @property
    def label(self) -> str:
        return f"{self.kind}/{{}}/{self.models}m"


def start_server(kind: str, args: argparse.Namespace, models: int) -> Server:
    port = free_port()
    env = {**os.environ, "LOG_LEVEL": "warning", "ACCESS_LOG": "false"}
    tree = args.other_tree if kind == "other" else ROOT
    env["PYTHONPATH"] = str(tree)
    target, names, folder = args.checkpoint, None, None
    if models > 1:
        folder = Path(tempfile.mkdtemp(prefix="serve-load-models-"))
        names = [f"m{n}" for n in range(models)]
        for name in names:
            shutil.copyfile(args.checkpoint, folder / f"{name}.safetensors")
        env.update(MODELS_DIR=str(folder), CHECKPOINT="", MAX_LOADED_MODELS=str(models))
        target = folder
    process = subprocess.Popen(server_command(kind, target, port, tree), env=env, cwd=tree)
    return Server(kind, models, port, process, names, folder)


def warm_up(server: Server) -> None:
    """Wait until healthy, then load every model and compile before measuring."""
    wait_healthy(server.port, server.process)
    for name in server.names or [None]:
        for clients in (1, 8):
            warm = [name] if name else None
            asyncio.run(
                run_load(server.port, clients, 20, server.process.pid, REQUESTS["plain"], warm)
            )


def stop_server(server: Server) -> None:
    server.process.terminate()
    server.process.wait(30)
    if server.folder is not None:
        shutil.rmtree(server.folder, ignore_errors=True)


def bench(servers: list[Server], args: argparse.Namespace) -> dict:
    """{(kind, models): {(request kind, N): median LoadResult}}. All servers are up at
    once, idle but for the one being measured, and the runs take turns (server by server,
    request kind by kind, within each repeat), so a shared machine's drift is spread over
    all of them; each one's run with the median chars/s of `repeats` is kept."""
    runs: dict[tuple[str, int], dict[tuple[str, int], list[LoadResult]]] = {
        (server.kind, server.models): {} for server in servers
    }
    for n in args.clients:
        for _ in range(args.repeats):
            for server in servers:
                clients = args.baseline_clients if naive(server.kind) else args.clients
                if n not in clients:
                    continue
                kinds = ["plain"] if naive(server.kind) else args.requests.split(",")
                for request_kind in kinds:
                    result = asyncio.run(
                        run_load(
                            server.port,
                            n,
                            args.length,
                            server.process.pid,
                            REQUESTS[request_kind],
                            server.names,
                        )
                    )
                    runs[server.kind, server.models].setdefault((request_kind, n), []).append(
                        result
                    )
        for server in servers:
            for (request_kind, clients), done in runs[server.kind, server.models].items():
                if clients == n:
                    print_row(server.label.format(request_kind), median_run(done))
    return {
        key: {point: median_run(done) for point, done in points.items()}
        for key, points in runs.items()
    }


def median_run(runs: list[LoadResult]) -> LoadResult:
    return sorted(runs, key=lambda run: run.chars_per_second)[len(runs) // 2]


def print_row(label: str, result: LoadResult) -> None:
    firsts = [r.first_char for r in result.results if r.first_char is not None]
    gaps = [g for r in result.results for g in r.gaps]
    print(
        f"| {label:22} | {result.clients:4d} | {result.chars_per_second:10.0f} | "
        f"{percentile(firsts, 50) * 1e3:9.1f} | {percentile(firsts, 99) * 1e3:9.1f} | "
        f"{percentile(gaps, 99) * 1e3:9.1f} | {result.errors:6d} | {result.peak_rss_mb:8.0f} | "
        f"{result.cpu['loop']:.2f} | {result.cpu['threads']:.2f} | {result.cpu['client']:.2f} |",
        flush=True,
    )


def plot(results: dict, path: Path, length: int) -> None:
    """Aggregate chars/s and p99 time to first char against N, each server (plain
    requests, one model) a line, in one figure of two panels."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (rate_axes, first_axes) = pyplot.subplots(1, 2, figsize=(10, 4))
    for (kind, models), runs in results.items():
        points = sorted((n, result) for (request, n), result in runs.items() if request == "plain")
        if models != 1 or not points:
            continue
        clients = [n for n, _ in points]
        label = {"ours": "this service", "baseline": "naive server"}.get(kind, kind)
        rate_axes.plot(clients, [r.chars_per_second for _, r in points], "o-", label=label)
        firsts = [
            percentile([s.first_char for s in r.results if s.first_char is not None], 99) * 1e3
            for _, r in points
        ]
        first_axes.plot(clients, firsts, "o-", label=label)
    for axes, title in (
        (rate_axes, "aggregate chars/s"),
        (first_axes, "p99 time to first char (ms)"),
    ):
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        axes.set_xlabel(f"concurrent streams ({length} chars each)")
        axes.set_title(title)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--clients", default="1,8,64,256", help="comma-separated N values")
    parser.add_argument("--baseline-clients", default=None, help="N values for the baseline")
    parser.add_argument("--length", type=int, default=500)
    servers = "baseline, baseline-c, ours, other"
    parser.add_argument("--servers", default="baseline,ours", help=servers)
    parser.add_argument("--other-tree", type=Path, help="a checkout for the `other` server")
    parser.add_argument("--requests", default="plain", help=f"of {', '.join(REQUESTS)}")
    parser.add_argument("--models", default="1", help="comma-separated model counts (ours)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per N; the median is shown")
    parser.add_argument("--plot", type=Path, help="a PNG of chars/s and p99 TTFC against N")
    args = parser.parse_args()
    args.clients = [int(n) for n in args.clients.split(",")]
    args.baseline_clients = [int(n) for n in (args.baseline_clients or "").split(",") if n] or (
        args.clients
    )
    if "other" in args.servers and args.other_tree is None:
        parser.error("--servers other needs --other-tree")

    print(
        f"{os.cpu_count()} CPUs, {args.length} chars per client, median of {args.repeats} runs, "
        f"checkpoint {args.checkpoint.name}"
    )
    print(
        "| server/request/models | N | chars/s | p50 TTFC ms | p99 TTFC ms | p99 gap ms "
        "| errors | RSS MB | CPU: loop | threads | client |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    servers: list[Server] = []
    try:
        for kind in args.servers.split(","):
            model_counts = [1] if naive(kind) else [int(m) for m in args.models.split(",")]
            servers += [start_server(kind, args, models) for models in model_counts]
        for server in servers:
            warm_up(server)
        results = bench(servers, args)
    finally:
        for server in servers:
            stop_server(server)
    if args.plot is not None:
        plot(results, args.plot, args.length)
    first = next(iter(results))
    for (kind, models), runs in results.items():
        for (request_kind, n), result in runs.items():
            base = results[first].get(("plain", n))
            plain = runs.get(("plain", n))
            if base is not None and (kind, models) != first and request_kind == "plain":
                ratio = result.chars_per_second / base.chars_per_second
                print(f"{kind}/{models}m vs {first[0]}/{first[1]}m at N={n}: {ratio:.2f}x chars/s")
            one_model = results.get((kind, 1), {}).get((request_kind, n))
            if one_model is not None and models != 1 and first != (kind, 1):
                ratio = result.chars_per_second / one_model.chars_per_second
                print(f"{kind}/{models}m vs {kind}/1m at N={n}: {ratio:.2f}x chars/s")
            if plain is not None and request_kind != "plain":
                ratio = result.chars_per_second / plain.chars_per_second
                print(f"{kind}/{models}m {request_kind} vs plain at N={n}: {ratio:.2f}x chars/s")


if __name__ == "__main__":
    main()
