"""The decoding step alone, in GFLOP/s and as a fraction of this machine's sgemm.

    python benchmarks/decode_step.py                          # B = 1, 8, 64, 256; 1 and 2 threads
    python benchmarks/decode_step.py --batches 64 --threads 1 --rounds 9
    python benchmarks/decode_step.py --other-tree /tmp/old    # another checkout's step beside ours
    python benchmarks/decode_step.py --threads 1 --clock thread  # CPU time: a shared machine

The step is the engine's call: `KernelRows(model, B, threads).advance(rows, ids)` over B rows
of the checkpoint (model/decoding/network_rows.py, model/decoding/step.py). Its FLOPs per
row (a multiply-add counts 2; the gate maths and the softmax are not counted):

    first layer        2·H·4H         its input product is a table lookup (V-free)
    each upper layer   2·(2·H·4H)     input and recurrent products
    head               2·H·V
    2×256, V = 71:     2·(256·1024 + 2·256·1024) + 2·256·71 = 1,609,216 per row

Beside it, at the same thread count (torch.set_num_threads), the two references:
- shapes: torch.matmul of each of the step's products, (B, H)·(H, 4H) for the 2L-1 LSTM
  products and (B, H)·(H, V) for the head, into preallocated outputs: what a BLAS does
  with the same work in the same pieces;
- 2048²: one square sgemm, the machine's peak as far as this process sees it.

Each round times every (variant, B, threads) and the references once, interleaved, each
measurement long enough (~`--seconds`) to swamp the timer. The table gives each rate as
the median over rounds [and the best round], each fraction as the median of the
per-round ratios [and best over best]; the machine may be shared, so the load average
is printed before and after. `--clock thread` times by the calling thread's CPU time
instead (one thread only): other processes' turns on the core drop out, their effect on
the caches does not.

`--other-tree PATH` also times another checkout's step (its model/decoding/step.py and
network_rows.py; the rest from this tree), for a before/after in one run.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from model.checkpoint import load_checkpoint
from model.config import ModelConfig
from model.decoding.network_rows import KernelRows

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "shakespeare.safetensors"
SQUARE = 2048


def flops_per_row(config: ModelConfig) -> int:
    """The step's multiply-adds × 2 for one row (see the module docstring)."""
    hidden, gates = config.hidden_size, 4 * config.hidden_size
    lstm = 2 * hidden * gates * (1 + 2 * (config.num_layers - 1))
    return lstm + 2 * hidden * config.vocab_size


def product_shapes(config: ModelConfig) -> list[tuple[int, int]]:
    """(K, N) of each of the step's products, in the step's order."""
    hidden = config.hidden_size
    lstm = [(hidden, 4 * hidden)] * (2 * config.num_layers - 1)
    return [*lstm, (hidden, config.vocab_size)]


def _module_from(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # numba's cache locates a module's functions through it
    spec.loader.exec_module(module)
    return module


def other_kernel_rows(tree: Path) -> type:
    """Another checkout's KernelRows, stepping with that checkout's step module. Both files
    are loaded from a temporary copy: numba caches compiled code beside the source under
    the module's name, and these names are not the checkout's own."""
    copy = Path(tempfile.mkdtemp(prefix="decode-step-other-"))
    atexit.register(shutil.rmtree, copy, True)
    for name in ("step.py", "network_rows.py"):
        shutil.copyfile(tree / "model" / "decoding" / name, copy / name)
    step = _module_from(copy / "step.py", "other_step")
    ours = sys.modules["model.decoding.step"]
    sys.modules["model.decoding.step"] = step  # what its network_rows imports
    try:
        rows = _module_from(copy / "network_rows.py", "other_rows")
    finally:
        sys.modules["model.decoding.step"] = ours
    return rows.KernelRows


Clock = Callable[[], float]
CLOCKS: dict[str, Clock] = {"wall": time.perf_counter, "thread": time.thread_time}


def timed(run: Callable[[], object], repeats: int, torch_threads: int, clock: Clock) -> float:
    """Seconds per call of `run` by `clock`, over `repeats` calls, torch at `torch_threads`
    intra-op threads (1 again afterwards, so that idle OpenMP workers leave the cores to
    the kernel's own threads)."""
    torch.set_num_threads(torch_threads)
    try:
        started = clock()
        for _ in range(repeats):
            run()
        return (clock() - started) / repeats
    finally:
        torch.set_num_threads(1)


def repeats_for(run: Callable[[], object], seconds: float, torch_threads: int) -> int:
    """How many calls of `run` take about `seconds` (after a warm-up call)."""
    timed(run, 1, torch_threads, time.perf_counter)
    once = timed(run, 3, torch_threads, time.perf_counter)
    return max(3, round(seconds / max(once, 1e-7)))


class StepCase:
    """One (variant, B, threads): the engine's advance over B rows, from a fixed state."""

    def __init__(self, rows_type: type, model: torch.nn.Module, batch: int, threads: int):
        self.rows = rows_type(model, batch, threads)
        rng = np.random.default_rng(batch)
        self.rows.h[:] = rng.uniform(-0.5, 0.5, self.rows.h.shape).astype(np.float32)
        self.rows.c[:] = rng.uniform(-1.0, 1.0, self.rows.c.shape).astype(np.float32)
        self.ids = rng.integers(0, model.config.vocab_size, batch)
        self.index = np.arange(batch)

    def __call__(self) -> None:
        self.rows.advance(self.index, self.ids)


class ShapesCase:
    """The step's products as torch.matmul calls: (B, K)·(K, N) for each (K, N)."""

    def __init__(self, config: ModelConfig, batch: int):
        shapes = product_shapes(config)
        self.inputs = [torch.randn(batch, k) for k, _ in shapes]
        self.weights = [torch.randn(k, n) * 0.05 for k, n in shapes]
        self.outputs = [torch.empty(batch, n) for _, n in shapes]

    def __call__(self) -> None:
        for x, w, out in zip(self.inputs, self.weights, self.outputs, strict=True):
            torch.matmul(x, w, out=out)


def square_case() -> Callable[[], None]:
    a, b, out = torch.randn(SQUARE, SQUARE), torch.randn(SQUARE, SQUARE), torch.empty(0)

    def run() -> None:
        torch.matmul(a, b, out=out)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--batches", default="1,8,64,256", help="comma-separated B values")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (median shown)")
    parser.add_argument("--seconds", type=float, default=0.1, help="per measurement")
    parser.add_argument("--other-tree", type=Path, help="a checkout whose step runs too")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall time, or the calling thread's CPU time (--threads 1 only: it leaves out "
        "the time other processes take the core, on a shared machine)",
    )
    args = parser.parse_args()
    batches = [int(value) for value in args.batches.split(",")]
    thread_counts = [int(value) for value in args.threads.split(",")]
    if args.clock == "thread" and thread_counts != [1]:
        parser.error("--clock thread times the calling thread only: use it with --threads 1")
    clock = CLOCKS[args.clock]

    torch.set_num_threads(1)
    model = load_checkpoint(args.checkpoint).build_model()
    config = model.config
    per_row = flops_per_row(config)
    variants = {"ours": KernelRows}
    if args.other_tree:
        variants = {"other": other_kernel_rows(args.other_tree), **variants}

    # Every measurement: a name → (callable, repeats, FLOPs per call, torch's threads).
    cases: dict[tuple, tuple[Callable[[], object], int, int, int]] = {}
    for threads in thread_counts:
        square = square_case()
        repeats = repeats_for(square, args.seconds, threads)
        cases["square", threads] = square, repeats, 2 * SQUARE**3, threads
        for batch in batches:
            flops = per_row * batch
            shapes = ShapesCase(config, batch)
            repeats = repeats_for(shapes, args.seconds, threads)
            cases["shapes", batch, threads] = shapes, repeats, flops, threads
            for name, rows_type in variants.items():
                step = StepCase(rows_type, model, batch, threads)
                cases[name, batch, threads] = step, repeats_for(step, args.seconds, 1), flops, 1

    print(f"# {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}")
    print(f"# {config.num_layers}×{config.hidden_size}, V = {config.vocab_size}: "
          f"{per_row:,} FLOPs per row and step")  # fmt: skip
    print(f"# load average before: {load_average()}; {args.clock} clock")
    rates: dict[tuple, list[float]] = {key: [] for key in cases}
    for _ in range(args.rounds):
        for key, (run, repeats, flops, torch_threads) in cases.items():
            rates[key].append(flops / timed(run, repeats, torch_threads, clock) / 1e9)
    print(f"# load average after: {load_average()}; medians of {args.rounds} rounds\n")
    print_table(rates, variants, batches, thread_counts, per_row)


def print_table(
    rates: dict[tuple, list[float]],
    variants: dict[str, type],
    batches: list[int],
    thread_counts: list[int],
    per_row: int,
) -> None:
    """Each rate as `median [best]`, each fraction as `median of the per-round ratios
    [best / best]`: another process's load only ever slows a measurement down, so on a
    shared machine the best round is the nearer to the machine's own figure."""

    def rate(values: list[float]) -> str:
        return f"{statistics.median(values):.1f} [{max(values):.1f}]"

    def ratio(top: list[float], bottom: list[float]) -> str:
        per_round = statistics.median(a / b for a, b in zip(top, bottom, strict=True))
        return f"{per_round:.0%} [{max(top) / max(bottom):.0%}]"

    print("| step | B | threads | µs/step | GFLOP/s | shapes sgemm GFLOP/s | of shapes "
          "| 2048² GFLOP/s | of 2048² |")  # fmt: skip
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for threads in thread_counts:
        square = rates["square", threads]
        for batch in batches:
            shapes = rates["shapes", batch, threads]
            for name in variants:
                step = rates[name, batch, threads]
                micros = per_row * batch / (statistics.median(step) * 1e9) * 1e6
                print(
                    f"| {name} | {batch} | {threads} | {micros:,.0f} | {rate(step)} "
                    f"| {rate(shapes)} | {ratio(step, shapes)} "
                    f"| {rate(square)} | {ratio(step, square)} |"
                )
    if "other" in variants:
        print("\n| B | threads | ours / other |\n|--:|--:|--:|")
        for threads in thread_counts:
            for batch in batches:
                ours, other = rates["ours", batch, threads], rates["other", batch, threads]
                per_round = statistics.median(a / b for a, b in zip(ours, other, strict=True))
                best = max(ours) / max(other)
                print(f"| {batch} | {threads} | {per_round:.2f}× [{best:.2f}×] |")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


if __name__ == "__main__":
    main()
