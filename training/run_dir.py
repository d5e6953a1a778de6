"""The run directory (`train --out`): where a training run keeps everything it writes.

config.json        the TrainConfig, written when a run (or a resumed run) starts
metrics.jsonl      one EvalRecord per evaluation, as a JSON line
best.safetensors   the weights with the best validation loss so far (inference only)
last.safetensors   the latest weights with the full training state, for --resume
loss.png           training and validation loss against the step
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from training.config import TrainConfig

LAST = "last.safetensors"
BEST = "best.safetensors"


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
        tmp = self.config.with_name(".config.json.tmp")
        tmp.write_text(json.dumps(config.to_json(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.config)

    def append_metrics(self, record: EvalRecord) -> None:
        with self.metrics.open("a", encoding="utf-8") as file:
            file.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records written so far; a torn last line (a crash mid-write) is skipped."""
        if not self.metrics.is_file():
            return []
        records = []
        for line in self.metrics.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def keep_metrics_up_to(self, step: int) -> list[dict[str, Any]]:
        """Drop records after `step` — written after the checkpoint a run resumes from —
        so the file reads as one uninterrupted run. Returns the records kept."""
        records = [r for r in self.read_metrics() if r.get("step", 0) <= step]
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.metrics.with_name(".metrics.jsonl.tmp")
        tmp.write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
        )
        os.replace(tmp, self.metrics)
        return records


def resume_path(path: Path) -> Path:
    """A run directory means its last.safetensors; a file is taken as it is."""
    path = Path(path)
    return path / LAST if path.is_dir() else path
