"""The training recipe: every setting of a training run in one place (TrainConfig, checked on
creation), the named presets, and the two things the recipe builds: the optimizer and the
learning-rate schedule.

The schedule is a pure function of the step, so a resumed run needs only the step (and a
measured horizon, when there is one) to continue it.

    lr ▲   warm-up    cosine decay
       │    ╱‾‾‾‾‾‾‾‾──╮__
       │   ╱              ‾‾──╮__
       │  ╱                      ‾‾──────── min_lr_ratio · lr  (held after the horizon)
       └──┴────────────────────────────┴──▶ step
          warmup_steps               horizon

The horizon is the step at which the decay ends: the smallest of max_steps and
max_epochs × batches per epoch, and, with max_minutes, an estimate of the steps that fit
in the time (see `estimate_horizon`). Until that estimate exists — the first
HORIZON_PROBE_STEPS steps, normally still inside the warm-up — a run limited by time alone
holds the peak rate.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from model.config import ModelConfig
from model.device import DEVICE_CHOICES
from model.network import LSTM_IMPLS, CharRNN

OPTIMIZERS: tuple[str, ...] = ("adamw", "adam", "nadam")
# fp32 everywhere; bf16 and fp16 are mixed precision on CUDA (training.step)
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
SCHEDULES: tuple[str, ...] = ("cosine", "constant")
LSTM_IMPL_CHOICES: tuple[str, ...] = ("auto", *LSTM_IMPLS)
# The weights' shapes: a fine-tuned run (init_from) takes them from its checkpoint.
ARCHITECTURE: tuple[str, ...] = ("hidden_size", "num_layers", "cell")
# What a resumed run cannot change: the weights' shapes, the optimizer state's meaning, and
# the batch layout that the saved data position and hidden state refer to.
FIXED_ON_RESUME: tuple[str, ...] = (*ARCHITECTURE, "dropout", "batch_size", "seq_len", "optimizer")

# Steps timed to estimate a time-limited run's horizon. The first step is left out of the
# timing: it pays for one-off allocations (and cuDNN's algorithm search on a GPU).
HORIZON_PROBE_STEPS = 20
# Fields added after runs were saved without them, and the value that means what those runs
# did, so that such a run resumes as it was (not with the current default).
_BEFORE_THE_FIELD: dict[str, Any] = {"ema_decay": 0.0}

# Named starting points (`train --preset NAME`); flags given next to a preset override it.
# "default" is TrainConfig's own defaults: the model's 2×256 LSTM, dropout 0.5, the tuned recipe.
# "quality": a larger network for a longer run (benchmarks/results/time_to_loss_quality.md).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # (measured without weight decay and weight averaging, both later defaults)
    "quality": {
        "hidden_size": 512,
        "dropout": 0.25,
        "seq_len": 32,
        "lr": 3e-3,
        "weight_decay": 0.0,
        "ema_decay": 0.0,
    },
    # `train --init-from`'s. Fine-tuning the shipped model on the standard library's
    # docstrings, lr 2e-2 beat 3e-3, 5e-3, 1e-2 and 4e-2 at 500 and 1,500 steps (it must
    # also teach the new characters), a short warm-up beat the default's 100 steps, and
    # dropout 0.1 beat the model's 0.5 by 0.16 bits/char at 1,650 steps (0 did as well;
    # 0.1 keeps some guard for small corpora) (docs/training-fine-tuning.md). A small text
    # is learnt by heart after a few passes: evaluating twice a pass, the run stops once
    # two passes (4 evaluations) bring no better validation loss.
    "fine-tune": {
        "lr": 2e-2,
        "warmup_steps": 20,
        "dropout": 0.1,
        "evals_per_epoch": 2,
        "patience": 4,
    },
}


def preset(name: str) -> dict[str, Any]:
    """The TrainConfig fields a preset sets; ValueError naming the choices otherwise."""
    _choice(name, tuple(PRESETS), "preset")
    return dict(PRESETS[name])


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Training stops at whichever of max_epochs, max_steps and
    max_minutes comes first; at least one must be set."""

    data_dir: Path  # a prepared-data directory (`python -m training prepare`)
    out_dir: Path  # the run directory: config, metrics, checkpoints, loss plot
    # Fine-tuning: start from this checkpoint's weights, whose architecture the fields below
    # must match (training.finetune); None: fresh weights.
    init_from: Path | None = None
    # The network: its defaults are the model's own (model.config.ModelConfig).
    hidden_size: int = ModelConfig.hidden_size  # units per recurrent layer
    num_layers: int = ModelConfig.num_layers  # stacked recurrent layers
    dropout: float = ModelConfig.dropout  # between the layers and before the output layer
    cell: str = ModelConfig.cell  # "lstm", "gru" or "rnn"
    # The LSTM forget gates' bias at initialisation (0: PyTorch's uniform init untouched).
    forget_bias: float = 0.0
    # Batches (training.batches).
    batch_size: int = 64  # parallel streams: the corpus is cut into this many columns
    # 32: at a fixed wall-clock budget, more (shorter) updates beat longer windows
    # (benchmarks/results/recipe_sweep_10min_*.md); the state still carries across batches.
    seq_len: int = 32  # steps of backpropagation through time per batch
    # Optimizer (build_optimizer, below).
    lr: float = 1e-2  # peak rate after the warm-up (best of benchmarks/recipe_sweep.py)
    optimizer: str = "adamw"  # "adamw" (decoupled weight decay), "adam" or "nadam" (Nesterov)
    # On the weight matrices only, never the biases. At the same 3800 steps: 0 gave 1.5185,
    # 0.05 1.5115, 0.1 1.5144, 0.2 1.5411 (benchmarks/results/recipe_sweep_3800steps_*.md).
    weight_decay: float = 0.05
    # beta2 0.99 rather than 0.999: the second moment follows a character model's quickly
    # shrinking gradients more closely.
    betas: tuple[float, float] = (0.9, 0.99)
    # Learning-rate schedule (learning_rate, below).
    schedule: str = "cosine"  # "cosine": decay to min_lr_ratio·lr at the horizon; "constant"
    warmup_steps: int = 100  # linear warm-up from lr/warmup_steps to lr (0: none)
    min_lr_ratio: float = 0.1  # the cosine's floor as a fraction of lr
    grad_clip: float | None = 1.0  # max global gradient norm; None: no clipping
    # Evaluate, sample and save an exponential moving average of the weights with this decay
    # (training.step.WeightAverage); 0: the raw weights. At 3800 steps: 1.5054 against 1.5097.
    ema_decay: float = 0.99
    # Limits; None: no limit from that one. The first to come stops the run, and the
    # smallest known in steps is the cosine's horizon (max_minutes: measured, see below).
    max_epochs: int | None = None  # passes over the training split
    max_steps: int | None = None  # optimizer steps
    max_minutes: float | None = None  # wall-clock, evaluations included, summed over resumes
    # Evaluation on the held-out split.
    eval_every: int = 500  # steps between evaluations (one more always runs at the end)
    # Evaluate at least this often per pass over the training split, so that patience means
    # as much on a small text as on a large one (evaluation_interval); None: eval_every only.
    evals_per_epoch: int | None = None
    eval_batches: int | None = None  # cap on validation batches per evaluation; None: all
    patience: int | None = None  # stop after this many evaluations without a better val loss
    # Reproducibility and hardware.
    seed: int = 1337  # initialisation, dropout and samples: same seed, same run on a CPU
    device: str = "auto"  # "auto" → CUDA, then MPS, then CPU; or "cpu", "cuda:1", ...
    lstm_impl: str = "auto"  # "fused" (hand-written, CPU), "torch" (cuDNN); auto: by device
    threads: int | None = None  # torch.set_num_threads during training; None: leave as is
    # "fp32"; on CUDA also "bf16" or "fp16" (autocast and loss scaling), which need the
    # "torch" recurrence (training.step.MixedPrecision)
    precision: str = "fp32"
    # The sample shown and logged at each evaluation.
    sample_prime: str = ""  # "" starts as after a newline (documents: at a document's start)
    sample_length: int = 200  # characters; 0: no sample
    sample_temperature: float = 0.8

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if self.init_from is not None:
            object.__setattr__(self, "init_from", Path(self.init_from))
        object.__setattr__(self, "betas", tuple(self.betas))
        self.model_config(vocab_size=1)  # the network's own checks
        _at_least(self, 1, "batch_size", "seq_len", "eval_every")
        _at_least(self, 0, "warmup_steps", "sample_length", "seed")
        _at_least(
            self, 1, "max_epochs", "max_steps", "evals_per_epoch", "eval_batches", "patience",
            "threads", optional=True,
        )  # fmt: skip
        _choice(self.optimizer, OPTIMIZERS, "optimizer")
        _choice(self.schedule, SCHEDULES, "schedule")
        _choice(self.lstm_impl, LSTM_IMPL_CHOICES, "lstm_impl")
        _choice(self.precision, PRECISIONS, "precision")
        _choice(self.device.split(":")[0].strip().lower(), DEVICE_CHOICES, "device")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not math.isfinite(self.forget_bias):
            raise ValueError(f"forget_bias must be a finite number, got {self.forget_bias}")
        if self.forget_bias != 0.0 and self.init_from is not None:
            raise ValueError("forget_bias initialises fresh weights; init_from brings its own")
        if self.forget_bias != 0.0 and self.cell != "lstm":
            raise ValueError(f"forget_bias is the LSTM's forget gates; cell is {self.cell!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be ≥ 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1) (0: off), got {self.ema_decay}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(
                f"grad_clip must be > 0 (or None for no clipping), got {self.grad_clip}"
            )
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be > 0, got {self.max_minutes}")
        if self.max_epochs is None and self.max_steps is None and self.max_minutes is None:
            raise ValueError(
                "set at least one of max_epochs, max_steps or max_minutes: training needs an end"
            )
        if not self.sample_temperature > 0:
            raise ValueError(f"sample_temperature must be > 0, got {self.sample_temperature}")
        if self.cell != "lstm" and self.lstm_impl == "fused":
            raise ValueError(f"lstm_impl 'fused' is the LSTM kernel; cell is {self.cell!r}")
        if self.precision != "fp32" and self.lstm_impl == "fused":
            raise ValueError(f"precision {self.precision} needs lstm_impl 'torch' or 'auto'")

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(vocab_size, self.hidden_size, self.num_layers, self.dropout, self.cell)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["data_dir"], data["out_dir"] = str(self.data_dir), str(self.out_dir)
        data["init_from"] = None if self.init_from is None else str(self.init_from)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        """Raises ValueError for unknown fields or values out of range."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown training config fields: {', '.join(unknown)}")
        return cls(**{**_BEFORE_THE_FIELD, **data})

    def with_changes(self, **changes: Any) -> TrainConfig:
        """A copy with some fields replaced, checked again."""
        return replace(self, **changes)


def _at_least(config: TrainConfig, low: int, *names: str, optional: bool = False) -> None:
    for name in names:
        value = getattr(config, name)
        if value is None and optional:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")


def _choice(value: str, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def build_optimizer(model: CharRNN, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam(W) or NAdam with weight decay on the matrices only: decaying biases only
    hurts. NAdam's decay is decoupled, as AdamW's."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": matrices}, {"params": vectors}]
    kinds = {
        "adamw": torch.optim.AdamW,
        "adam": torch.optim.Adam,
        "nadam": partial(torch.optim.NAdam, decoupled_weight_decay=True),
    }
    optimizer = kinds[config.optimizer](groups, lr=config.lr)
    set_hyperparameters(optimizer, config)
    return optimizer


def set_hyperparameters(optimizer: torch.optim.Optimizer, config: TrainConfig) -> None:
    matrices, vectors = optimizer.param_groups
    for group in (matrices, vectors):
        group["betas"] = config.betas
    matrices["weight_decay"], vectors["weight_decay"] = config.weight_decay, 0.0


def learning_rate(step: int, config: TrainConfig, horizon: int | None) -> float:
    """The rate for step `step` (0-based: the step about to run)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant" or horizon is None:
        return config.lr
    decay_steps = max(1, horizon - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    min_lr = config.lr * config.min_lr_ratio
    return min_lr + 0.5 * (config.lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def evaluation_interval(config: TrainConfig, batches_per_epoch: int) -> int:
    """Steps between evaluations: eval_every, or less when evals_per_epoch asks for more
    evaluations a pass (at least one step). On a 300,000-character text (131 batches of
    64 × 32) evals_per_epoch 2 evaluates every 66 steps; each evaluation then scores the
    validation split (a tenth of the text) in about 3 % of a pass's time, whatever the
    text's size."""
    if config.evals_per_epoch is None:
        return config.eval_every
    return min(config.eval_every, max(1, -(-batches_per_epoch // config.evals_per_epoch)))


def planned_horizon(
    config: TrainConfig, batches_per_epoch: int, estimate: int | None = None
) -> int | None:
    """The decay's last step from the limits known in steps, and the time estimate if
    there is one. None: time is the only limit and it has not been measured yet."""
    candidates = [estimate]
    if config.max_steps is not None:
        candidates.append(config.max_steps)
    if config.max_epochs is not None:
        candidates.append(config.max_epochs * batches_per_epoch)
    known = [c for c in candidates if c is not None]
    return min(known) if known else None


def estimate_horizon(
    step: int, elapsed_seconds: float, seconds_per_step: float, max_minutes: float
) -> int:
    """Steps that fit in `max_minutes`: those done, plus the time left over the measured
    step time. Evaluations are not in the measurement, so with frequent evaluations this
    overshoots a little and the run ends on the clock slightly before the decay does."""
    remaining = max(0.0, max_minutes * 60.0 - elapsed_seconds)
    return step + max(1, int(remaining / max(seconds_per_step, 1e-9)))


class StepTimer:
    """Times HORIZON_PROBE_STEPS steps of a session, from the end of its first step."""

    def __init__(self, step: int):
        self.start_step = step + 1
        self.started = 0.0

    def measure(self, step: int) -> float | None:
        """Call after each step: the mean seconds per step once, when the probe ends."""
        if step == self.start_step:
            self.started = time.monotonic()
        elif step == self.start_step + HORIZON_PROBE_STEPS:
            return (time.monotonic() - self.started) / HORIZON_PROBE_STEPS
        return None
