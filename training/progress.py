"""What a run shows while it trains: a tqdm bar (terminals only) and one line per
evaluation, both on stderr so stdout stays for results."""

from __future__ import annotations

import sys
import time
from typing import TextIO

import torch
from tqdm import tqdm

from model.network import CharRNN
from training.run_dir import EvalRecord

_POSTFIX_SECONDS = 0.5  # how often the bar's numbers are refreshed


class TrainingProgress:
    """The bar counts optimizer steps towards `total` (the schedule's horizon), so its ETA
    is the time to the horizon. Without a terminal (or with show_bar False) there is no
    bar, and the evaluation lines are all there is."""

    def __init__(
        self, initial: int, total: int | None, show_bar: bool, stream: TextIO | None = None
    ):
        self.stream = stream or sys.stderr
        enabled = show_bar and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = tqdm(
            total=total,
            initial=initial,
            unit="step",
            dynamic_ncols=True,
            file=self.stream,
            disable=not enabled,
            leave=True,
        )
        self._numbers: dict[str, str] = {}
        self._last_postfix = 0.0

    @property
    def enabled(self) -> bool:
        return not self.bar.disable

    def set_total(self, total: int | None) -> None:
        self.bar.total = total
        self.bar.refresh()

    def wants_numbers(self) -> bool:
        """True when the bar would show new numbers: reading the loss costs a device sync,
        so the loop asks first."""
        return self.enabled and time.monotonic() - self._last_postfix >= _POSTFIX_SECONDS

    def advance(self, train_loss: float | None = None, chars_per_second: float | None = None):
        if train_loss is not None:
            self._numbers["loss"] = f"{train_loss:.3f}"
        if chars_per_second is not None:
            self._numbers["chars/s"] = _si(chars_per_second)
        if train_loss is not None or chars_per_second is not None:
            self._last_postfix = time.monotonic()
            self.bar.set_postfix(self._numbers, refresh=False)
        self.bar.update(1)

    def evaluated(self, record: EvalRecord, total_steps: int | None) -> None:
        self._numbers["val"] = f"{record.val_loss:.3f}"
        self._numbers["bits/char"] = f"{record.val_bits_per_char:.3f}"
        self.bar.set_postfix(self._numbers, refresh=True)
        self.write(format_record(record, total_steps))
        if record.sample:
            self.write(f"--- sample at step {record.step} ---\n{record.sample}\n---")

    def write(self, line: str) -> None:
        """A line above the bar (or plainly, without one)."""
        tqdm.write(line, file=self.stream)

    def close(self) -> None:
        self.bar.close()


def start_line(
    model: CharRNN,
    device: torch.device,
    batches_per_epoch: int,
    step: int,
    horizon: int | None,
    processes: int = 1,
) -> str:
    """What is about to train, e.g. "training 0.80M parameters (lstm, fused) on cpu,
    136 batches an epoch, from step 0 of 5000" ("on cpu × 4 processes" data-parallel)."""
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    config = model.config
    where = f"{device.type} × {processes} processes" if processes > 1 else f"{device}"
    return (
        f"training {parameters:.2f}M parameters ({config.cell}, {model.impl}) on {where}, "
        f"{batches_per_epoch} batches an epoch, from step {step}"
        + (f" of {horizon}" if horizon else " (horizon measured after the first steps)")
    )


def format_record(record: EvalRecord, total_steps: int | None) -> str:
    """One line per evaluation, e.g.
    step 500/3000 | epoch 1.62 | train 1.4213 | val 1.5012 (2.1658 bits/char) | lr 2.85e-03
    | 41.2k chars/s | 2m03s"""
    of = f"/{total_steps}" if total_steps else ""
    train = f"{record.train_loss:.4f}" if record.train_loss is not None else "-"
    return (
        f"step {record.step}{of} | epoch {record.epoch:.2f} | train {train} | "
        f"val {record.val_loss:.4f} ({record.val_bits_per_char:.4f} bits/char) | "
        f"lr {record.lr:.2e} | {_si(record.chars_per_second)} chars/s | "
        f"{format_duration(record.elapsed_seconds)}"
    )


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _si(value: float) -> str:
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:.0f}"
