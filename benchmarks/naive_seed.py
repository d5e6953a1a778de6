"""The seed's plain training implementation: the baseline every training figure is compared to.

Written the way the seed (and most char-rnn tutorials) do it: a numpy one-hot built per
batch, `nn.LSTM(V, 256, 2, dropout=0.5, batch_first=True)`, `nn.Dropout(0.5)`,
`contiguous().view(-1, 256)`, `nn.Linear`, Adam(lr=1e-3), gradient clipping at 5,
batch 128 × seq 100, the last 10 % of the text held out.

    python benchmarks/naive_seed.py ../shared/data/tinyshakespeare.txt --minutes 2
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn


class SeedNet(nn.Module):
    def __init__(
        self, vocab_size: int, hidden_size: int = 256, num_layers: int = 2, dropout: float = 0.5
    ):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.lstm = nn.LSTM(vocab_size, hidden_size, num_layers, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_size, vocab_size)

    def forward(self, x, hidden):
        out, hidden = self.lstm(x, hidden)
        out = self.dropout(out)
        out = out.contiguous().view(-1, self.hidden_size)
        return self.fc(out), hidden

    def init_hidden(self, batch_size: int):
        zeros = torch.zeros(self.num_layers, batch_size, self.hidden_size)
        return zeros, zeros.clone()


def one_hot_encode(arr: np.ndarray, n_labels: int) -> np.ndarray:
    one_hot = np.zeros((arr.size, n_labels), dtype=np.float32)
    one_hot[np.arange(one_hot.shape[0]), arr.flatten()] = 1.0
    return one_hot.reshape((*arr.shape, n_labels))


def get_batches(arr: np.ndarray, batch_size: int, seq_length: int) -> Iterator:
    """The seed's layout: `batch_size` rows; window k+1 of a row continues window k."""
    chars_per_batch = batch_size * seq_length
    n_batches = len(arr) // chars_per_batch
    arr = arr[: n_batches * chars_per_batch].reshape((batch_size, -1))
    for n in range(0, arr.shape[1], seq_length):
        x = arr[:, n : n + seq_length]
        y = np.zeros_like(x)
        try:
            y[:, :-1], y[:, -1] = x[:, 1:], arr[:, n + seq_length]
        except IndexError:
            y[:, :-1], y[:, -1] = x[:, 1:], arr[:, 0]
        yield x, y


class SeedTrainer:
    """One training step and the validation loss, the seed's way."""

    def __init__(
        self,
        vocab_size: int,
        lr: float = 1e-3,
        clip: float = 5.0,
        batch_size: int = 128,
        seq_length: int = 100,
    ):
        self.vocab_size = vocab_size
        self.net = SeedNet(vocab_size)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.criterion = nn.CrossEntropyLoss()
        self.clip = clip
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.hidden = self.net.init_hidden(batch_size)

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        self.net.train()
        inputs = torch.from_numpy(one_hot_encode(x, self.vocab_size))
        targets = torch.from_numpy(y)
        self.hidden = tuple(h.data for h in self.hidden)  # detach between batches
        self.net.zero_grad()
        output, self.hidden = self.net(inputs, self.hidden)
        loss = self.criterion(output, targets.reshape(-1).long())
        loss.backward()
        nn.utils.clip_grad_norm_(self.net.parameters(), self.clip)
        self.opt.step()
        return loss.item()

    @torch.no_grad()
    def validation_loss(self, val: np.ndarray) -> float:
        self.net.eval()
        hidden = self.net.init_hidden(self.batch_size)
        losses = []
        for x, y in get_batches(val, self.batch_size, self.seq_length):
            output, hidden = self.net(torch.from_numpy(one_hot_encode(x, self.vocab_size)), hidden)
            losses.append(self.criterion(output, torch.from_numpy(y).reshape(-1).long()).item())
        return float(np.mean(losses))


def load_corpus(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Ids of the first 90 % (train) and last 10 % (validation), and the vocabulary size."""
    text = path.read_text(encoding="utf-8")
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    ids = np.fromiter((lookup[c] for c in text), dtype=np.int64, count=len(text))
    split = int(len(ids) * 0.9)
    return ids[:split], ids[split:], len(chars)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text", type=Path)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--eval-every", type=int, default=100, help="steps")
    args = parser.parse_args()
    train, val, vocab_size = load_corpus(args.text)
    trainer = SeedTrainer(vocab_size)
    started, step = time.perf_counter(), 0
    while time.perf_counter() - started < args.minutes * 60:
        trainer.hidden = trainer.net.init_hidden(trainer.batch_size)
        for x, y in get_batches(train, trainer.batch_size, trainer.seq_length):
            loss = trainer.step(x, y)
            step += 1
            if step % args.eval_every == 0:
                elapsed = time.perf_counter() - started
                print(
                    f"step {step} {elapsed:.0f}s train {loss:.3f} "
                    f"val {trainer.validation_loss(val):.3f}",
                    flush=True,
                )
            if time.perf_counter() - started >= args.minutes * 60:
                break
    print(f"final val loss {trainer.validation_loss(val):.4f} nats/char after {step} steps")


if __name__ == "__main__":
    main()
