"""Training throughput: the seed's plain step against ours, alternated in one process.

    python benchmarks/train_speed.py [--rounds 7] [--steps 3]

Default model (2×256 LSTM, V = 65), batch 128 × seq 100. Each round times `--steps`
training steps of the baseline (benchmarks/naive_seed.py: numpy one-hot + nn.LSTM) and
then of ours (gathered one-hot + the hand-written LSTM kernel); alternating keeps both
under the same machine noise. Prints median chars/s of each, the ratio, and MFU:
model FLOP/s ÷ the fp32 matmul FLOP/s of this machine measured here (2048×2048).

Model FLOPs per character (multiply-add = 2 FLOPs), training = 3 × forward:
    forward = 2·4H·H            (layer 1 recurrence; its one-hot input product is a gather: 0)
            + 2·4H·2H·(L - 1)   (upper layers: input and recurrent products)
            + 2·H·V             (output layer)
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from naive_seed import SeedTrainer  # benchmarks/ is the script's own directory

from model.allocator import keep_freed_memory
from model.config import ModelConfig
from model.network import CharRNN, detach_hidden

VOCAB, HIDDEN, LAYERS, BATCH, SEQ = 65, 256, 2, 128, 100


def flops_per_char(hidden: int = HIDDEN, layers: int = LAYERS, vocab: int = VOCAB) -> float:
    forward = 2 * 4 * hidden * hidden + 2 * 4 * hidden * 2 * hidden * (layers - 1)
    forward += 2 * hidden * vocab
    return 3.0 * forward


def matmul_flops_per_second(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * size**3 / statistics.median(times)


class OurStep:
    def __init__(self):
        self.model = CharRNN(ModelConfig(vocab_size=VOCAB)).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=2e-3, weight_decay=0.0)
        self.hidden = self.model.init_hidden(BATCH)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        logits, hidden = self.model(x, self.hidden, "fused")  # (B, T, V)
        self.hidden = detach_hidden(hidden)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        return loss.item()


def time_steps(step, batches) -> float:
    started = time.perf_counter()
    for x, y in batches:
        step(x, y)
    return len(batches) * BATCH * SEQ / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3, help="steps per measurement")
    args = parser.parse_args()
    keep_freed_memory()
    rng = np.random.default_rng(0)
    data = rng.integers(0, VOCAB, size=(args.steps, BATCH, SEQ + 1))
    numpy_batches = [(d[:, :-1], d[:, 1:]) for d in data]
    torch_batches = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in numpy_batches]
    baseline, ours = SeedTrainer(VOCAB), OurStep()
    time_steps(baseline.step, numpy_batches[:1])  # warm-up
    time_steps(ours.step, torch_batches[:1])

    baseline_rates, our_rates = [], []
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH} × seq {SEQ}"
    )
    print("| round | baseline chars/s | ours chars/s | ratio |")
    print("|--:|--:|--:|--:|")
    for round_ in range(args.rounds):
        baseline_rates.append(time_steps(baseline.step, numpy_batches))
        our_rates.append(time_steps(ours.step, torch_batches))
        print(
            f"| {round_} | {baseline_rates[-1]:.0f} | {our_rates[-1]:.0f} | "
            f"{our_rates[-1] / baseline_rates[-1]:.2f} |",
            flush=True,
        )
    peak = matmul_flops_per_second()
    base, mine = statistics.median(baseline_rates), statistics.median(our_rates)
    flops = flops_per_char()
    print(
        f"matmul peak (2048²): {peak / 1e9:.1f} GFLOP/s; model FLOPs/char (training): {flops:,.0f}"
    )
    print(f"baseline: median {base:.0f} chars/s, MFU {base * flops / peak:.0%}")
    print(f"ours:     median {mine:.0f} chars/s, MFU {mine * flops / peak:.0%}")
    print(f"train speed: ours/baseline = {mine / base:.2f}x (median of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
