"""The fastest any LSTM implementation could train here: the step's GEMMs alone.

    python benchmarks/lstm_gemm_bound.py [--rounds 7] [--steps 2]

The throughput target is 1.4× the seed's training chars/s (default model, batch 128 × seq
100). A training step of the 2 × 256 LSTM must at least run these matrix products; this
script times exactly them, into preallocated buffers, with no gate maths, no dropout, no
loss, no optimizer and no Python autograd, and alternates that with the seed's full step
(benchmarks/naive_seed.py) in the same process. The ratio it prints is an upper bound on
any implementation that uses this machine's GEMM (MKL/oneDNN through torch): real steps
add the element-wise work on top.

Three schedules are timed, and the bound is the fastest:
- per layer (torch-rnn's): the input projections of all steps in one GEMM, then one
  (B, H) × (H, 4H) GEMM per step and layer; backward mirrors it;
- wavefront: layer 1 at step t + 1 and layer 2 at step t in one (B, 2H) × (2H, 8H) GEMM
  per step (a quarter of it multiplies a zero block, traded for fewer, larger GEMMs);
- batch halves: the per-layer schedule on 64 rows in each of two Python threads, with
  one torch thread each (small GEMMs run faster per core single-threaded than split).
"""

from __future__ import annotations

import argparse
import statistics
import threading

import numpy as np
import torch
from naive_seed import SeedTrainer  # benchmarks/ is the script's own directory
from train_speed import (
    BATCH,
    HIDDEN,
    SEQ,
    VOCAB,
    flops_per_char,
    matmul_flops_per_second,
    time_steps,
)

from model.allocator import keep_freed_memory


class GemmOnlyStep:
    """The matrix products of one training step, nothing else, in preallocated buffers."""

    def __init__(self, wavefront: bool, batch: int = BATCH):
        b, t, h, v = batch, SEQ, HIDDEN, VOCAB
        self.batch = batch
        self.wavefront = wavefront
        self.w_hh1, self.w_ih2, self.w_hh2 = (torch.randn(4 * h, h) * 0.05 for _ in range(3))
        self.w_out = torch.randn(v, h) * 0.05
        self.w_wave = torch.randn(2 * h, 8 * h) * 0.05  # [[W_hh1ᵀ, W_ih2ᵀ], [0, W_hh2ᵀ]]
        self.h1, self.h2 = torch.randn(t, b, h), torch.randn(t, b, h)  # (T, B, H)
        self.h12 = torch.randn(t, b, 2 * h)  # (T, B, 2H)
        self.gates1, self.gates2 = torch.empty(t, b, 4 * h), torch.empty(t, b, 4 * h)
        self.gates12 = torch.empty(t, b, 8 * h)  # (T, B, 8H)
        self.dgates1, self.dgates2 = torch.randn(t, b, 4 * h), torch.randn(t, b, 4 * h)
        self.dgates12 = torch.randn(t, b, 8 * h)
        self.dh = torch.empty(t, b, h)
        self.dh12 = torch.empty(t, b, 2 * h)
        self.logits = torch.empty(t * b, v)
        self.dlogits = torch.randn(t * b, v)
        self.dw_rec = torch.empty(4 * h, h)
        self.dw_wave = torch.empty(2 * h, 8 * h)
        self.dw_out = torch.empty(v, h)

    def step(self) -> None:
        t, flat = SEQ, self.batch * SEQ
        h2_flat = self.h2.view(flat, HIDDEN)
        if self.wavefront:
            for s in range(t):  # forward: both layers per step in one GEMM
                torch.mm(self.h12[s], self.w_wave, out=self.gates12[s])
            for s in range(t):  # backward through time: the transposed product
                torch.mm(self.dgates12[s], self.w_wave.t(), out=self.dh12[s])
            torch.mm(self.h12.view(flat, -1).t(), self.dgates12.view(flat, -1), out=self.dw_wave)
        else:
            torch.mm(self.h1.view(flat, HIDDEN), self.w_ih2.t(), out=self.gates2.view(flat, -1))
            recurrences = ((self.w_hh1, self.h1, self.gates1), (self.w_hh2, self.h2, self.gates2))
            for w, hs, gates in recurrences:
                for s in range(t):
                    gates[s].addmm_(hs[s], w.t())
            for w, dgates in ((self.w_hh2, self.dgates2), (self.w_hh1, self.dgates1)):
                for s in range(t):
                    torch.mm(dgates[s], w, out=self.dh[s])
            # the input gradient of layer 2 (into layer 1's output), all steps at once
            torch.mm(self.dgates2.view(flat, -1), self.w_ih2, out=self.dh.view(flat, -1))
            # the weight gradients W_hh1, W_ih2, W_hh2: Σ_t dgates_tᵀ·h_t as one GEMM each
            products = ((self.h1, self.dgates1), (self.h1, self.dgates2), (self.h2, self.dgates2))
            for hs, dgates in products:
                torch.mm(dgates.view(flat, -1).t(), hs.view(flat, -1), out=self.dw_rec)
        torch.mm(h2_flat, self.w_out.t(), out=self.logits)  # the output layer
        torch.mm(self.dlogits.t(), h2_flat, out=self.dw_out)
        torch.mm(self.dlogits, self.w_out, out=self.dh.view(flat, -1))


class BatchHalvesStep:
    """The per-layer GEMMs of 64 rows on each of two threads, one torch thread each."""

    def __init__(self):
        self.halves = [GemmOnlyStep(wavefront=False, batch=BATCH // 2) for _ in range(2)]

    def step(self) -> None:
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        other = threading.Thread(target=self.halves[1].step)
        other.start()
        self.halves[0].step()
        other.join()
        torch.set_num_threads(previous)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=2, help="steps per measurement")
    args = parser.parse_args()
    keep_freed_memory()
    rng = np.random.default_rng(0)
    data = rng.integers(0, VOCAB, size=(BATCH, SEQ + 1))
    batches = [(data[:, :-1], data[:, 1:])] * args.steps  # the same batch each step
    baseline = SeedTrainer(VOCAB)
    schedules = {
        "per layer": GemmOnlyStep(wavefront=False).step,
        "wavefront": GemmOnlyStep(wavefront=True).step,
        "batch halves": BatchHalvesStep().step,
    }
    time_steps(baseline.step, batches[:1])  # warm-up
    for step in schedules.values():
        step()

    rates: dict[str, list[float]] = {"baseline": [], **{name: [] for name in schedules}}
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, batch {BATCH} × seq {SEQ}")
    print("| round | seed step chars/s | GEMMs only: " + " | ".join(schedules) + " |")
    print("|--:|--:|" + "--:|" * len(schedules))
    for round_ in range(args.rounds):
        rates["baseline"].append(time_steps(baseline.step, batches))
        for name, step in schedules.items():
            rates[name].append(time_steps(lambda _x, _y, step=step: step(), batches))
        row = " | ".join(f"{rates[k][-1]:.0f}" for k in rates)
        print(f"| {round_} | {row} |", flush=True)
    peak, flops = matmul_flops_per_second(), flops_per_char()
    medians = {k: statistics.median(v) for k, v in rates.items()}
    print(f"matmul peak (2048²): {peak / 1e9:.1f} GFLOP/s; training FLOPs/char: {flops:,.0f}")
    for name, rate in medians.items():
        mfu, ratio = rate * flops / peak, rate / medians["baseline"]
        print(f"{name}: median {rate:.0f} chars/s, MFU {mfu:.0%}, {ratio:.2f}x the seed")
    best = max(medians[name] for name in schedules)
    print(
        f"GEMM-only bound: {best / medians['baseline']:.2f}x the seed's step "
        f"(median of {args.rounds} rounds; the target: 1.4x)"
    )


if __name__ == "__main__":
    main()
