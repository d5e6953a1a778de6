"""Training and serving throughput on a CUDA GPU, fp32 against bf16.

    python benchmarks/gpu_throughput.py [--train-steps 20] [--serve-steps 200]

Two models: the default (2×256 LSTM) and a large one (3×1024), vocabulary 65 (Shakespeare).

- Training: chars/s of the library's own step (training.step.TrainStep: forward, loss,
  backward, clipping, AdamW) on random ids, batch 64 × 128, for the cuDNN recurrence in
  fp32 and bf16 (`--precision bf16`: autocast, under which PyTorch runs the cuDNN LSTM
  itself in fp16; see training.step). TF32 is off, so fp32 means fp32.
- Serving: chars/s of the service's batched decoder (model/decoding's BatchDecoder: one
  step of every live row, sampling included) with 1, 64 and 256 rows, weights in fp32 and
  in bf16.

Prints one table per part; the last line sums up the large model's bf16 speed-ups. Exits
with a message (status 1) where there is no CUDA GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch

from model.config import ModelConfig
from model.decoding.decoder import BatchDecoder
from model.decoding.params import GenerationParams
from model.network import CharRNN
from training.distributed import Distributed
from training.step import MixedPrecision, TrainStep

VOCAB = 65
MODELS = {"default 2x256": (256, 2), "large 3x1024": (1024, 3)}
TRAIN_RUNS = (("torch", "fp32"), ("torch", "bf16"))
SERVE_BATCHES = (1, 64, 256)
SERVE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _timed(run: Callable[[], None], steps: int, device: torch.device) -> float:
    """Seconds for `steps` calls of `run`, after two warm-up calls (allocations, cuDNN's
    algorithm choice), synchronised so queued GPU work is counted."""
    for _ in range(2):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def train_rate(
    hidden_size: int,
    num_layers: int,
    impl: str,
    precision: str,
    steps: int,
    device: torch.device,
    batch_size: int = 64,
    seq_len: int = 128,
) -> float:
    """Training chars/s: predictions per second of full optimizer steps."""
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(VOCAB, hidden_size, num_layers, 0.5, "lstm")).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda")
    precision_ = MixedPrecision(precision, device, impl)
    step = TrainStep(model, impl, optimizer, precision_, Distributed(), 1.0)
    ids = torch.randint(0, VOCAB, (batch_size, seq_len + 1), device=device)
    state = {"hidden": model.init_hidden(batch_size, device)}

    def run() -> None:
        _, state["hidden"] = step(ids[:, :-1], ids[:, 1:], state["hidden"])

    return batch_size * seq_len * steps / _timed(run, steps, device)


def serve_rate(
    hidden_size: int,
    num_layers: int,
    rows: int,
    dtype: torch.dtype,
    steps: int,
    device: torch.device,
) -> float:
    """Serving chars/s: characters generated per second by `rows` streams together."""
    torch.manual_seed(0)
    config = ModelConfig(VOCAB, hidden_size, num_layers, 0.0, "lstm")
    model = CharRNN(config).to(device=device, dtype=dtype)
    decoder = BatchDecoder(model, capacity=rows)  # on a GPU: the network's own steps
    for row in range(rows):
        params = GenerationParams(
            prime=(1, 2, 3, 4), length=10**9, seed=row, temperature=0.8, top_k=5
        )
        decoder.add(params)
    while decoder.prefilling:
        decoder.prefill(rows)

    def run() -> None:
        decoder.step()

    # Each call draws block.steps characters per row (the rows never end: length 10**9).
    return rows * steps * decoder.block.steps / _timed(run, steps, device)


def _rate(value: float) -> str:
    return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.1f}k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--serve-steps", type=int, default=200, help="timed decoder calls")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_throughput: no CUDA GPU here (torch.cuda.is_available() is False)")
    device = torch.device("cuda")
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    print(
        f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, cuDNN "
        f"{torch.backends.cudnn.version()}"
    )

    train: dict[tuple[str, str, str], float] = {}
    print(f"\ntraining, batch 64 x 128\n{'model':>14} {'impl':>6} {'precision':>9} {'chars/s':>9}")
    for name, (hidden, layers) in MODELS.items():
        for impl, precision in TRAIN_RUNS:
            rate = train_rate(hidden, layers, impl, precision, args.train_steps, device)
            train[name, impl, precision] = rate
            print(f"{name:>14} {impl:>6} {precision:>9} {_rate(rate):>9}")

    serve: dict[tuple[str, int, str], float] = {}
    print(f"\nserving (BatchDecoder)\n{'model':>14} {'rows':>5} {'weights':>7} {'chars/s':>9}")
    for name, (hidden, layers) in MODELS.items():
        for rows in SERVE_BATCHES:
            for label, dtype in SERVE_DTYPES.items():
                rate = serve_rate(hidden, layers, rows, dtype, args.serve_steps, device)
                serve[name, rows, label] = rate
                print(f"{name:>14} {rows:5d} {label:>7} {_rate(rate):>9}")

    large = "large 3x1024"
    train_gain = train[large, "torch", "bf16"] / train[large, "torch", "fp32"]
    serve_gain = serve[large, 256, "bf16"] / serve[large, 256, "fp32"]
    print(
        f"\ngpu throughput: large model bf16/fp32 training x{train_gain:.2f} "
        f"({_rate(train[large, 'torch', 'bf16'])} chars/s), serving at 256 rows "
        f"x{serve_gain:.2f} ({_rate(serve[large, 256, 'bf16'])} chars/s)"
    )


if __name__ == "__main__":
    main()
