"""Where a training step's time goes: the seed's step and ours, profiled op by op.

    python benchmarks/step_profile.py [--rounds 5]

The two steps of benchmarks/train_speed.py (default model, batch 128 × seq 100),
alternated in one process, each round under torch.profiler. Prints each step's
milliseconds by op (medians over rounds; the largest ops), then the time inside oneDNN's
LSTM layers (nn.LSTM's CPU kernels: both layers in the seed's step, the second in ours)
and their FLOP/s against this machine's GEMM peak: the fastest any of the step's GEMM
shapes, or a 2048² one, ran in this process (each round, median of repeats; the best over
rounds, so it errs high).

Last, what the 1.4× target would leave for the part of our step outside oneDNN's layer (the
first layer, the output layer, dropout, loss, optimizer), next to what that part takes
now and what its GEMMs alone would take at the GEMM peak with everything else free.
benchmarks/lstm_gemm_bound.py times those GEMMs in the step's own order instead.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from naive_seed import SeedTrainer  # benchmarks/ is the script's own directory
from torch.profiler import ProfilerActivity, profile
from train_speed import (
    BATCH,
    HIDDEN,
    SEQ,
    VOCAB,
    OurStep,
    flops_per_char,
    matmul_flops_per_second,
)

from model.allocator import keep_freed_memory

ONEDNN_LSTM = ("aten::mkldnn_rnn_layer", "aten::mkldnn_rnn_layer_backward")
CHARS = BATCH * SEQ
TARGET = 1.4  # the throughput target, ours/baseline


def gemm_flops_per_second(repeats: int = 20) -> float:
    """The fastest of the step's GEMM shapes (per-step recurrences both ways round, the
    weight gradient over all steps) and a 2048² square, each the median of `repeats`."""
    b, h, steps = BATCH, HIDDEN, SEQ
    shapes = [(b, h, 4 * h), (4 * h, h, b), (b, 4 * h, h), (h, 4 * h, b), (4 * h, steps * b, h)]
    best = matmul_flops_per_second()
    for m, k, n in shapes:
        left, right, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
        times = []
        for _ in range(repeats + 1):  # the first is a warm-up
            started = time.perf_counter()
            torch.mm(left, right, out=out)
            times.append(time.perf_counter() - started)
        best = max(best, 2 * m * k * n / statistics.median(times[1:]))
    return best


def profiled_ms(step, x, y) -> dict[str, float]:
    """One step's self CPU milliseconds by op name."""
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step(x, y)
    return {event.key: event.self_cpu_time_total / 1e3 for event in profiler.key_averages()}


def median_by_op(rounds: list[dict[str, float]]) -> dict[str, float]:
    names = {name for one in rounds for name in one}
    return {name: statistics.median(one.get(name, 0.0) for one in rounds) for name in names}


def median_ms(rounds: list[dict[str, float]], ops: tuple[str, ...] | None = None) -> float:
    """Median over rounds of the milliseconds of `ops` (all ops when None)."""
    return statistics.median(
        sum(one.values()) if ops is None else sum(one.get(op, 0.0) for op in ops) for one in rounds
    )


def lstm_layer_flops(input_size: int, hidden: int = HIDDEN) -> float:
    """Training FLOPs of one LSTM layer for one step's characters (3 × forward)."""
    return 3.0 * 2 * 4 * hidden * (input_size + hidden) * CHARS


def print_ops(title: str, by_op: dict[str, float], total: float, top: int) -> None:
    print(f"\n{title}: {total:.0f} ms a step")
    print("| op | ms | share |")
    print("|---|--:|--:|")
    for name, ms in sorted(by_op.items(), key=lambda item: -item[1])[:top]:
        print(f"| {name} | {ms:.1f} | {ms / total:.0%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--top", type=int, default=8, help="ops listed per step")
    args = parser.parse_args()
    keep_freed_memory()
    rng = np.random.default_rng(0)
    data = rng.integers(0, VOCAB, size=(BATCH, SEQ + 1))
    x_numpy, y_numpy = data[:, :-1], data[:, 1:]
    x, y = torch.from_numpy(x_numpy), torch.from_numpy(y_numpy)
    baseline, ours = SeedTrainer(VOCAB), OurStep()
    for _ in range(2):  # warm-up: allocations, numba's compiled kernels
        baseline.step(x_numpy, y_numpy)
        ours.step(x, y)
    baseline_rounds, our_rounds, peak = [], [], 0.0
    for _ in range(args.rounds):
        baseline_rounds.append(profiled_ms(baseline.step, x_numpy, y_numpy))
        our_rounds.append(profiled_ms(ours.step, x, y))
        peak = max(peak, gemm_flops_per_second())

    baseline_total, our_total = median_ms(baseline_rounds), median_ms(our_rounds)
    baseline_lstm = median_ms(baseline_rounds, ONEDNN_LSTM)
    our_lstm = median_ms(our_rounds, ONEDNN_LSTM)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH} × seq {SEQ}"
    )
    print_ops("baseline (the seed's step)", median_by_op(baseline_rounds), baseline_total, args.top)
    print_ops("ours", median_by_op(our_rounds), our_total, args.top)

    # oneDNN's work: the seed's two layers (the first with its one-hot input product), our second.
    baseline_lstm_flops = lstm_layer_flops(VOCAB) + lstm_layer_flops(HIDDEN)
    our_lstm_flops = lstm_layer_flops(HIDDEN)
    rest_flops = flops_per_char() * CHARS - our_lstm_flops  # our first layer and output layer
    print(f"\nGEMM peak (the fastest of the step's shapes and 2048²): {peak / 1e9:.1f} GFLOP/s")
    print("| step | oneDNN LSTM ms | share of step | its GFLOP/s |")
    print("|---|--:|--:|--:|")
    for name, ms, total, flops in (
        ("baseline", baseline_lstm, baseline_total, baseline_lstm_flops),
        ("ours", our_lstm, our_total, our_lstm_flops),
    ):
        print(f"| {name} | {ms:.0f} | {ms / total:.0%} | {flops / ms / 1e6:.0f} |")
    rest_at_peak = rest_flops / peak * 1e3
    budget = baseline_total / TARGET - our_lstm
    print(
        f"ours outside oneDNN's layer: {our_total - our_lstm:.0f} ms now; its GEMMs alone at the "
        f"peak: {rest_at_peak:.0f} ms; left to it at {TARGET}x: {budget:.0f} ms"
    )
    ratio = baseline_total / our_total
    print(f"step profile: ours/baseline = {ratio:.2f}x (medians of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
