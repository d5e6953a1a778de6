"""Pipeline stage 4, training: the run around the loop. Its directory (`train --out`), what
it shows while it trains, and when it stops.

The run directory, where a training run keeps everything it writes:

config.json        the TrainConfig, written when a run (or a resumed run) starts, with this
                   machine's absolute paths (checkpoints, which travel, record them
                   relative to the run: training.checkpoints)
metrics.jsonl      one EvalRecord per evaluation, as a JSON line (damaged lines are skipped)
best.safetensors   the weights with the best validation loss so far (inference only)
last.safetensors   the latest weights with the full training state, for --resume
loss.png           training and validation loss against the step

Progress goes to stderr, so stdout stays for results: a tqdm bar (terminals only) and one
line per evaluation.

A run stops at its limits (steps, epochs, minutes), early stopping, or a request from
outside: Ctrl-C (SIGINT) and SIGTERM become a polite request to stop between steps
(`stop_on_signals`). In a data-parallel run the ranks could disagree on the clock and on
signals, so they agree on one reason through its code (the largest code wins).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import torch
from tqdm import tqdm

from model.network import CharRNN
from training.checkpoints import RunCounters
from training.recipe import TrainConfig

LAST = "last.safetensors"
BEST = "best.safetensors"
# In code order: a rank out of time, or asked to stop, stops every rank at the same step.
STOP_REASONS = ("max_steps", "max_epochs", "early_stopping", "max_minutes", "interrupted")
_POSTFIX_SECONDS = 0.5  # how often the bar's numbers are refreshed


@dataclass(frozen=True)
class EvalRecord:
    """One line of metrics.jsonl."""

    step: int  # optimizer steps done
    epoch: float  # passes over the training split, fractional
    tokens: int  # training characters seen (predictions trained on)
    elapsed_seconds: float  # wall-clock since the run began, over all resumes
    train_loss: float | None  # mean training loss (nats/char) since the last evaluation
    val_loss: float  # validation loss, nats/char
    val_bits_per_char: float  # val_loss / ln 2
    lr: float  # learning rate of the last step
    chars_per_second: float  # training throughput since the last evaluation
    sample: str = ""  # text generated from sample_prime


@dataclass(frozen=True)
class RunDirectory:
    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def last(self) -> Path:
        return self.path / LAST

    @property
    def plot(self) -> Path:
        return self.path / "loss.png"

    def write_config(self, config: TrainConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _replace_file(self.config, json.dumps(config.to_json(), indent=2) + "\n")

    def append_metrics(self, record: EvalRecord) -> None:
        with self.metrics.open("a", encoding="utf-8") as file:
            file.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records written so far. A damaged line (torn by a crash mid-write, or not a
        JSON object with an integer step) is skipped."""
        if not self.metrics.is_file():
            return []
        records = []
        for line in self.metrics.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and type(record.get("step")) is int:
                records.append(record)
        return records

    def keep_metrics_up_to(self, step: int) -> list[dict[str, Any]]:
        """Drop records after `step` (written after the checkpoint a run resumes from) and
        damaged lines, so the file reads as one uninterrupted run; returns the records kept."""
        kept = [r for r in self.read_metrics() if r["step"] <= step]
        self.path.mkdir(parents=True, exist_ok=True)
        _replace_file(self.metrics, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
        return kept


def _replace_file(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary sibling that is flushed to disk before it
    is renamed over `path`: a crash leaves the old file or the new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def resume_path(path: Path) -> Path:
    """A run directory means its last.safetensors; a file is taken as it is."""
    path = Path(path)
    return path / LAST if path.is_dir() else path


def plot_losses(records: Sequence[Mapping], path: Path) -> None:
    """Draw the metrics records' train_loss and val_loss (nats/char) against step into a
    PNG at `path`, replaced atomically. matplotlib is imported here, not at module import
    (it is slow to load), and drawn through the Agg canvas without pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float)]
        if points:
            steps, losses = zip(*points, strict=True)
            axes.plot(steps, losses, marker="." if len(points) < 30 else None, label=label)
    axes.set_xlabel("step")
    axes.set_ylabel("loss (nats/char)")
    axes.grid(alpha=0.3)
    if records:
        axes.legend()
    figure.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    figure.savefig(tmp, format="png")
    os.replace(tmp, path)


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
    impl: str,
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
        f"training {parameters:.2f}M parameters ({config.cell}, {impl}) on {where}, "
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


class StopRequest:
    """Callable as a `should_stop` hook: True once one of the signals has arrived."""

    def __init__(self) -> None:
        self.signal_number: int | None = None

    def __call__(self) -> bool:
        return self.signal_number is not None

    @property
    def exit_code(self) -> int:
        """The shell's convention for death by a signal: 128 + its number (130, 143)."""
        return 128 + (self.signal_number or 0)


@contextmanager
def stop_on_signals(
    signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
) -> Iterator[StopRequest]:
    """Inside the block the first of `signals` only sets the request, so training can
    finish its step and save; the previous handler then comes back for that signal, so a
    second Ctrl-C interrupts at once. All handlers are restored on leaving. Off the main
    thread (where Python cannot install handlers) the request simply never fires."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    # A signal the parent set to be ignored (nohup, a background job) stays ignored.
    previous = {sig: signal.getsignal(sig) for sig in signals}
    previous = {sig: handler for sig, handler in previous.items() if handler != signal.SIG_IGN}

    def handle(number: int, frame: FrameType | None) -> None:
        request.signal_number = request.signal_number or number
        signal.signal(number, previous[signal.Signals(number)])

    for sig in previous:
        signal.signal(sig, handle)
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_reason(
    config: TrainConfig, counters: RunCounters, elapsed_seconds: float, stop_requested: bool
) -> str | None:
    """The first limit reached (steps, epochs, minutes, patience), else "interrupted" when
    a stop was requested, else None: go on."""
    if config.max_steps is not None and counters.step >= config.max_steps:
        return "max_steps"
    if config.max_epochs is not None and counters.position.epoch >= config.max_epochs:
        return "max_epochs"
    if config.max_minutes is not None and elapsed_seconds >= config.max_minutes * 60:
        return "max_minutes"
    if config.patience is not None and counters.evals_since_best >= config.patience:
        return "early_stopping"
    return "interrupted" if stop_requested else None


def reason_code(reason: str | None) -> int:
    """0 for None, else 1 + the reason's place in STOP_REASONS."""
    return 0 if reason is None else STOP_REASONS.index(reason) + 1


def reason_from_code(code: int) -> str | None:
    return None if code == 0 else STOP_REASONS[code - 1]
