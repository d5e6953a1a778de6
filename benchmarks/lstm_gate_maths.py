"""One LSTM layer's recurrence, forward and backward: compiled gate maths against the same
maths as PyTorch ops, alternated in one process.

    python benchmarks/lstm_gate_maths.py [--rounds 7] [--shapes 64x32,128x100]

model.lstm_kernel with H = 256 on random projections, for each batch × seq_len shape:
the recurrence's forward and backward (the per-step GEMMs are the same in both; only the
gate maths differ). Prints median milliseconds per pass and the ratio; the last line is
the ratio at the last shape.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from model.lstm_kernel import lstm_recurrence

HIDDEN = 256


def one_pass(gate_maths: str, inputs: tuple[torch.Tensor, ...], grad: torch.Tensor) -> None:
    projection, h0, c0, weight = (t.detach().requires_grad_() for t in inputs)
    outputs, _, _ = lstm_recurrence(projection, h0, c0, weight, gate_maths)
    outputs.backward(grad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--shapes", default="64x32,128x100", help="batch×seq_len, comma-separated")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, H = {HIDDEN}")
    print("| batch × seq | torch ops ms | compiled ms | speed-up |")
    print("|---|--:|--:|--:|")
    ratio = 0.0
    for shape in args.shapes.split(","):
        batch, steps = (int(n) for n in shape.split("x"))
        generator = torch.Generator().manual_seed(0)
        inputs = (
            torch.randn(steps, batch, 4 * HIDDEN, generator=generator),
            torch.randn(batch, HIDDEN, generator=generator) * 0.1,
            torch.randn(batch, HIDDEN, generator=generator) * 0.1,
            torch.randn(4 * HIDDEN, HIDDEN, generator=generator) * 0.06,
        )
        grad = torch.randn(steps, batch, HIDDEN, generator=generator)
        times: dict[str, list[float]] = {"torch": [], "compiled": []}
        for gate_maths in times:
            one_pass(gate_maths, inputs, grad)  # warm-up (and numba's compile or cache load)
        for _ in range(args.rounds):
            for gate_maths, series in times.items():
                started = time.perf_counter()
                one_pass(gate_maths, inputs, grad)
                series.append(time.perf_counter() - started)
        torch_ms, compiled_ms = (statistics.median(times[k]) * 1e3 for k in times)
        ratio = torch_ms / compiled_ms
        print(f"| {batch} × {steps} | {torch_ms:.1f} | {compiled_ms:.1f} | {ratio:.2f}× |")
    print(f"compiled gate maths: {ratio:.2f}x the PyTorch-ops recurrence (median, last shape)")


if __name__ == "__main__":
    main()
