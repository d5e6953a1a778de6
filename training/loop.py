"""The training loop: truncated BPTT over column batches, evaluation, checkpoints, limits.

Knows nothing of the command line: a Trainer takes a TrainConfig, a prepared corpus and,
to continue a run, its last checkpoint; hooks let a caller stop it (signals) or watch it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from model.checkpoint import Checkpoint, save_checkpoint
from model.device import preferred_lstm_impl, resolve_device
from model.network import CharRNN, detach_hidden
from model.sampling import SamplingConfig, generate
from training.batches import split_batches
from training.config import TrainConfig
from training.data import PreparedCorpus
from training.evaluate import bits_per_char, validation_loss
from training.optimizer import build_optimizer, set_hyperparameters
from training.plot import plot_losses
from training.progress import TrainingProgress, start_line
from training.run_dir import EvalRecord, RunDirectory
from training.runtime import torch_threads, tune_allocator
from training.schedule import StepTimer, estimate_horizon, learning_rate, planned_horizon
from training.state import (
    RunCounters,
    check_resumable,
    checkpoint_info,
    restore_training_state,
    set_rng_state,
    training_state,
)


@dataclass(frozen=True)
class TrainHooks:
    should_stop: Callable[[], bool] | None = None  # polled after each step: True saves, stops
    on_evaluation: Callable[[EvalRecord], None] | None = None  # after each evaluation


@dataclass(frozen=True)
class TrainResult:
    # "max_steps", "max_epochs", "max_minutes", "early_stopping" or "interrupted"
    stop_reason: str
    step: int
    epoch: float
    tokens: int
    best_val_loss: float | None
    last_val_loss: float | None  # None when the run was interrupted before evaluating
    elapsed_seconds: float
    run_dir: Path


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        corpus: PreparedCorpus,
        resume: Checkpoint | None = None,
        progress: bool = True,
        hooks: TrainHooks | None = None,
    ):
        """Raises ValueError for a corpus too small for the batch shape, an unusable device
        or a checkpoint that does not fit the config and corpus."""
        self.config, self.corpus = config, corpus
        self.hooks = hooks or TrainHooks()
        self.show_progress = progress
        self.device = resolve_device(config.device)
        self.run_dir = RunDirectory(config.out_dir)
        self.train_batches, self.val_batches = split_batches(
            corpus.train, corpus.val, config.batch_size, config.seq_len
        )
        with torch.random.fork_rng(devices=[]):  # seeded initialisation, caller's RNG kept
            torch.manual_seed(config.seed)
            self.model = CharRNN(config.model_config(len(corpus.vocab)))
        self.model.impl = (
            preferred_lstm_impl(self.device) if config.lstm_impl == "auto" else config.lstm_impl
        )
        self.model.to(self.device).train()
        self.optimizer = build_optimizer(self.model, config)
        self.counters = RunCounters()
        self.hidden = self.model.init_hidden(config.batch_size, self.device)
        self._rng: dict | None = None  # None: seed the generators afresh at the start
        if resume is not None:
            check_resumable(resume, config, corpus)
            self.model.load_state_dict(resume.weights)
            self.counters, self.hidden, self._rng = restore_training_state(
                resume.training_state, self.optimizer, self.device
            )
            set_hyperparameters(self.optimizer, config)  # the config's, not the saved ones
        elif self.run_dir.last.exists():
            raise ValueError(
                f"{self.run_dir.path} already holds a run ({self.run_dir.last.name}); resume "
                "it or choose another output directory"
            )
        self.horizon = self._horizon()
        # The rate of the last step done (reported at an evaluation without new steps).
        self.lr = learning_rate(max(self.counters.step - 1, 0), config, self.horizon)

    def run(self) -> TrainResult:
        """Train until a limit, early stopping or `hooks.should_stop`; always leaves
        last.safetensors behind. Global RNG and thread count are restored afterwards."""
        tune_allocator()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch_threads(self.config.threads), torch.random.fork_rng(devices=devices):
            if self._rng is None:
                torch.manual_seed(self.config.seed)
            else:
                set_rng_state(self._rng)
            return self._train()

    def _train(self) -> TrainResult:
        counters, config = self.counters, self.config
        self.run_dir.write_config(config)
        self.history = self.run_dir.keep_metrics_up_to(counters.step)
        self._start = time.monotonic()
        self._elapsed_before = counters.elapsed_seconds
        self._session_first_step = counters.step
        # Summed on the device (float32: MPS has no float64) and read only when shown.
        self._loss_sum = torch.tensor(counters.train_loss_sum, device=self.device)
        self._interval = (time.monotonic(), counters.tokens)  # for chars/s
        self._saved_step = -1
        self.progress = TrainingProgress(counters.step, self.horizon, self.show_progress)
        self.progress.write(
            start_line(
                self.model, self.device, len(self.train_batches), counters.step, self.horizon
            )
        )
        probe = StepTimer(counters.step)
        try:
            stop = self._stop_reason()
            while stop is None:
                self._step()
                if (seconds_per_step := probe.measure(counters.step)) is not None:
                    self._estimate_horizon(seconds_per_step)
                if counters.step % config.eval_every == 0:
                    self._evaluate()
                stop = self._stop_reason()
            if stop != "interrupted" and counters.last_eval_step != counters.step:
                self._evaluate()
            if self._saved_step != counters.step:
                self._save_last()
        finally:
            self.progress.close()
        return TrainResult(
            stop,
            counters.step,
            self._epoch(),
            counters.tokens,
            counters.best_val_loss,
            counters.last_val_loss,
            self._elapsed(),
            self.run_dir.path,
        )

    def _step(self) -> None:
        """One optimizer step on the next batch."""
        counters, config = self.counters, self.config
        if counters.position.batch == 0:  # a new epoch starts from a zero state
            self.hidden = self.model.init_hidden(config.batch_size, self.device)
        inputs, targets = self.train_batches.window(counters.position.batch)  # (B, T) each
        inputs, targets = inputs.to(self.device), targets.to(self.device)
        self.lr = learning_rate(counters.step, config, self.horizon)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        logits, hidden = self.model(inputs, self.hidden)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())  # mean over B·T
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.optimizer.step()
        self.hidden = detach_hidden(hidden)  # values carry on, the graph stops here
        self._loss_sum += loss.detach()
        counters.step += 1
        counters.train_loss_steps += 1
        counters.tokens += targets.numel()
        counters.position = counters.position.advance(len(self.train_batches))
        if self.progress.wants_numbers():
            self.progress.advance(self._train_loss(), self._chars_per_second())
        else:
            self.progress.advance()

    def _stop_reason(self) -> str | None:
        counters, config = self.counters, self.config
        if config.max_steps is not None and counters.step >= config.max_steps:
            return "max_steps"
        if config.max_epochs is not None and counters.position.epoch >= config.max_epochs:
            return "max_epochs"
        if config.max_minutes is not None and self._elapsed() >= config.max_minutes * 60:
            return "max_minutes"
        if config.patience is not None and counters.evals_since_best >= config.patience:
            return "early_stopping"
        if self.hooks.should_stop is not None and self.hooks.should_stop():
            return "interrupted"
        return None

    def _estimate_horizon(self, seconds_per_step: float) -> None:
        if self.config.max_minutes is None or self.counters.horizon_estimate is not None:
            return
        self.counters.horizon_estimate = estimate_horizon(
            self.counters.step, self._elapsed(), seconds_per_step, self.config.max_minutes
        )
        self.horizon = self._horizon()
        self.progress.set_total(self.horizon)

    def _refine_horizon(self) -> None:
        """Re-estimate a time-limited run's horizon from the whole session's pace, evaluations
        included, so the cosine ends close to the clock (the first estimate saw no eval)."""
        steps = self.counters.step - self._session_first_step
        if self.config.max_minutes is None or self.counters.horizon_estimate is None or steps < 1:
            return
        seconds_per_step = (self._elapsed() - self._elapsed_before) / steps
        self.counters.horizon_estimate = estimate_horizon(
            self.counters.step, self._elapsed(), seconds_per_step, self.config.max_minutes
        )
        self.horizon = self._horizon()
        self.progress.set_total(self.horizon)

    def _evaluate(self) -> None:
        counters = self.counters
        val_loss = validation_loss(self.model, self.val_batches, self.config.eval_batches)
        record = EvalRecord(
            step=counters.step,
            epoch=self._epoch(),
            tokens=counters.tokens,
            elapsed_seconds=self._elapsed(),
            train_loss=self._train_loss(),
            val_loss=val_loss,
            val_bits_per_char=bits_per_char(val_loss),
            lr=self.lr,
            chars_per_second=self._chars_per_second(),
            sample=self._sample(),
        )
        counters.last_val_loss = val_loss
        improved = counters.best_val_loss is None or val_loss < counters.best_val_loss
        if improved:
            counters.best_val_loss, counters.evals_since_best = val_loss, 0
        else:
            counters.evals_since_best += 1
        if improved or not self.run_dir.best.exists():
            save_checkpoint(self._checkpoint(with_state=False), self.run_dir.best)
        counters.last_eval_step = counters.step
        counters.train_loss_steps = 0
        self._loss_sum.zero_()
        self.run_dir.append_metrics(record)
        self.history.append(asdict(record))
        plot_losses(self.history, self.run_dir.plot)
        self._refine_horizon()
        self._save_last()
        self.progress.evaluated(record, self.horizon)
        if self.hooks.on_evaluation is not None:
            self.hooks.on_evaluation(record)
        self._interval = (time.monotonic(), counters.tokens)  # evaluation time not counted

    def _sample(self) -> str:
        config = self.config
        if config.sample_length == 0:
            return ""
        sampling = SamplingConfig(
            length=config.sample_length,
            temperature=config.sample_temperature,
            seed=config.seed,
            skip_unknown=True,
        )
        try:
            text = "".join(generate(self.model, self.corpus.vocab, config.sample_prime, sampling))
        finally:
            self.model.train()  # generation switched it to eval mode
        return config.sample_prime + text

    def _checkpoint(self, with_state: bool) -> Checkpoint:
        counters = self.counters
        info = checkpoint_info(
            self.config, counters, self._epoch(), self._elapsed(), self.corpus.meta
        )
        state = None
        if with_state:
            snapshot = replace(
                counters, elapsed_seconds=self._elapsed(), train_loss_sum=float(self._loss_sum)
            )
            state = training_state(snapshot, self.optimizer, self.hidden)
        return Checkpoint.from_model(self.model, self.corpus.vocab, info, state)

    def _save_last(self) -> None:
        save_checkpoint(self._checkpoint(with_state=True), self.run_dir.last)
        self._saved_step = self.counters.step

    def _horizon(self) -> int | None:
        return planned_horizon(self.config, len(self.train_batches), self.counters.horizon_estimate)

    def _elapsed(self) -> float:
        return self._elapsed_before + time.monotonic() - self._start

    def _epoch(self) -> float:
        return self.counters.position.fraction(len(self.train_batches))

    def _train_loss(self) -> float | None:
        steps = self.counters.train_loss_steps
        return float(self._loss_sum) / steps if steps else None

    def _chars_per_second(self) -> float:
        started, tokens = self._interval
        seconds = time.monotonic() - started
        return (self.counters.tokens - tokens) / seconds if seconds > 0 else 0.0
