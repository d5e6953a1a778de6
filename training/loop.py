"""Pipeline stage 4, training: the loop. Truncated BPTT over column batches, evaluations,
checkpoints, until a limit (training.run) stops it.

Knows nothing of the command line: a Trainer takes a TrainConfig, a prepared corpus and,
to continue a run, its last checkpoint; hooks let a caller stop it (signals) or watch it.
A config with `init_from` starts from that checkpoint's weights (training.finetune).

In a data-parallel run (training.distributed) every rank runs this loop on its own columns
in lockstep: all ranks step, evaluate their share of the validation columns and take part
in saving (the hidden state and RNG states are gathered); rank 0 alone reports, samples and
writes the run directory.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from model.allocator import keep_freed_memory
from model.checkpoint import Checkpoint, save_checkpoint
from model.device import resolve_device
from model.network import CharRNN, LstmImpl, preferred_impl
from training.batches import split_batches
from training.checkpoints import (
    RunCounters,
    checkpoint_info,
    restore_run,
    rng_state,
    seed_generators,
    training_state,
)
from training.dataset import PreparedCorpus
from training.distributed import Distributed
from training.evaluate import bits_per_char, evaluation_sample, validation_loss
from training.finetune import fine_tune_weights, load_init, merge_vocabularies
from training.recipe import (
    StepTimer,
    TrainConfig,
    build_optimizer,
    estimate_horizon,
    evaluation_interval,
    learning_rate,
    planned_horizon,
    set_hyperparameters,
)
from training.run import (
    EvalRecord,
    RunDirectory,
    TrainingProgress,
    plot_losses,
    reason_code,
    reason_from_code,
    start_line,
    stop_reason,
)
from training.step import MixedPrecision, TrainStep, WeightAverage, torch_threads


@dataclass(frozen=True)
class TrainHooks:
    should_stop: Callable[[], bool] | None = None  # polled after each step: True saves, stops
    on_evaluation: Callable[[EvalRecord], None] | None = None  # after each one, on rank 0


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
    best_step: int | None  # the step of best_val_loss, whose weights are best.safetensors
    evals_since_best: int  # evaluations since then (patience's count)


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        corpus: PreparedCorpus,
        resume: Checkpoint | None = None,
        progress: bool = True,
        hooks: TrainHooks | None = None,
        dist: Distributed | None = None,
    ):
        """Raises ValueError for a corpus too small for the batch shape, an unusable device
        or precision, a batch that does not split over the ranks of `dist` (None: one
        process), or a checkpoint (resumed, or config.init_from) that does not fit the
        config and corpus."""
        self.config, self.corpus = config, corpus
        self.hooks = hooks or TrainHooks()
        self.dist = dist = dist or Distributed()
        self.show_progress = progress and dist.is_main
        self.device = dist.training_device(resolve_device(config.device))
        self.run_dir = RunDirectory(config.out_dir)
        init = load_init(config) if resume is None and config.init_from is not None else None
        # The model's vocabulary: the data's, or a checkpoint's with the data's new characters.
        base = resume if resume is not None else init
        self.vocab, id_map = corpus.vocab, None
        if base is not None:
            self.vocab, id_map = merge_vocabularies(base.vocab, corpus.vocab)
        train_batches, val_batches = split_batches(
            corpus.train, corpus.val, config.batch_size, config.seq_len, id_map
        )
        self.columns = dist.batch_columns(config.batch_size)  # this rank's, of the batch
        self.train_batches = train_batches.columns(self.columns)
        self.val_batches = val_batches.columns(dist.share(val_batches.batch_size))
        with torch.random.fork_rng(devices=[]):  # seeded initialisation, caller's RNG kept
            torch.manual_seed(config.seed)  # the same on every rank: identical weights
            self.model = CharRNN(config.model_config(len(self.vocab)))
            if config.forget_bias:
                self.model.set_forget_bias(config.forget_bias)
        if init is not None:
            self.model.load_state_dict(fine_tune_weights(init, self.vocab))
        # How the recurrence runs (model/network.py): chosen once, passed to each forward.
        self.impl: LstmImpl = (
            preferred_impl(self.device) if config.lstm_impl == "auto" else config.lstm_impl  # type: ignore[assignment]
        )
        if self.impl == "fused" and self.device.type != "cpu":
            raise ValueError("lstm_impl 'fused' is the CPU kernel; use 'torch' or 'auto' here")
        self.precision = MixedPrecision(config.precision, self.device, self.impl)
        self.model.to(self.device).train()
        self.optimizer = build_optimizer(self.model, config)
        self.train_step = TrainStep(
            self.model, self.impl, self.optimizer, self.precision, dist, config.grad_clip
        )
        self.counters = RunCounters()
        self.hidden = self.model.init_hidden(self.train_batches.batch_size, self.device)
        self._rng: dict | None = None  # None: seed the generators afresh at the start
        restored = None
        if resume is not None:
            restored = restore_run(
                resume, config, corpus, self.model, self.optimizer, self.device, dist.rank,
                dist.world_size,
            )  # fmt: skip
            self.counters, self._rng = restored.counters, restored.rng
            self.hidden = tuple(h[:, self.columns].contiguous() for h in restored.hidden)
            self.precision.load_state_dict(restored.grad_scaler)
            set_hyperparameters(self.optimizer, config)  # the config's, not the saved ones
        elif self.run_dir.last.exists():
            raise ValueError(
                f"{self.run_dir.path} already holds a run ({self.run_dir.last.name}); resume "
                "it or choose another output directory"
            )
        self.average: WeightAverage | None = None
        if config.ema_decay:  # a run that had none starts one from its current weights
            saved = None if restored is None else restored.average
            self.average = WeightAverage(self.model, config.ema_decay, saved[1] if saved else 0)
            if saved is not None:
                self.average.load_weights(saved[0])
        self.horizon = self._horizon()
        self.eval_interval = evaluation_interval(config, len(self.train_batches))
        # The rate of the last step done (reported at an evaluation without new steps).
        self.lr = learning_rate(max(self.counters.step - 1, 0), config, self.horizon)

    def run(self) -> TrainResult:
        """Train until a limit, early stopping or `hooks.should_stop`; always leaves
        last.safetensors behind. Global RNG and thread count are restored afterwards."""
        keep_freed_memory()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch_threads(self.config.threads), torch.random.fork_rng(devices=devices):
            seed_generators(self._rng, self.config.seed, self.dist.rank, self.counters.step)
            return self._train()

    def _train(self) -> TrainResult:
        counters, config, main = self.counters, self.config, self.dist.is_main
        if main:
            self.run_dir.write_config(config)
        self.history = self.run_dir.keep_metrics_up_to(counters.step) if main else []
        self._start = time.monotonic()
        self._elapsed_before = counters.elapsed_seconds
        self._session_first_step = counters.step
        # Summed on the device (float32: MPS has no float64) and read only when shown.
        self._loss_sum = torch.tensor(counters.train_loss_sum, device=self.device)
        self._interval = (time.monotonic(), counters.tokens)  # for chars/s
        self._saved_step = -1
        # Ranks other than 0 report to nowhere.
        stream = None if main else io.StringIO()
        self.progress = TrainingProgress(counters.step, self.horizon, self.show_progress, stream)
        batches, ranks = len(self.train_batches), self.dist.world_size
        line = start_line(
            self.model, self.impl, self.device, batches, counters.step, self.horizon, ranks
        )
        self.progress.write(line)
        probe = StepTimer(counters.step)
        try:
            stop = self._stop_reason()
            while stop is None:
                self._step()
                if (seconds_per_step := probe.measure(counters.step)) is not None:
                    self._estimate_horizon(seconds_per_step)
                if counters.step % self.eval_interval == 0:
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
            counters.best_step,
            counters.evals_since_best,
        )

    def _step(self) -> None:
        """One optimizer step on the next batch."""
        counters, config = self.counters, self.config
        if counters.position.batch == 0:  # a new epoch starts from a zero state
            self.hidden = self.model.init_hidden(self.train_batches.batch_size, self.device)
        # (b, T) each, b = this rank's columns; pinned, so the copy to a GPU is asynchronous
        pin = self.device.type == "cuda"
        inputs, targets = self.train_batches.window(counters.position.batch, pin_memory=pin)
        self.lr = learning_rate(counters.step, config, self.horizon)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        loss, self.hidden = self.train_step(inputs, targets, self.hidden)
        if self.average is not None:
            self.average.update(self.model)
        self._loss_sum += loss
        counters.step += 1
        counters.train_loss_steps += 1
        counters.tokens += targets.numel() * self.dist.world_size
        counters.position = counters.position.advance(len(self.train_batches))
        if self.progress.wants_numbers():
            self.progress.advance(self._train_loss(), self._chars_per_second())
        else:
            self.progress.advance()

    def _stop_reason(self) -> str | None:
        """Why to stop now, agreed by all ranks (a collective: every rank calls it)."""
        requested = self.hooks.should_stop is not None and self.hooks.should_stop()
        reason = stop_reason(self.config, self.counters, self._elapsed(), requested)
        return reason_from_code(self.dist.max_int(reason_code(reason), self.device))

    def _estimate_horizon(self, seconds_per_step: float | None = None) -> None:
        """A time-limited run's horizon: first from the probe's `seconds_per_step`, then at
        each evaluation (None) refined from the whole session's pace, evaluations included,
        so the cosine ends close to the clock. Rank 0's clock decides, so every rank
        follows the same learning rates."""
        counters, max_minutes = self.counters, self.config.max_minutes
        steps = counters.step - self._session_first_step
        first = seconds_per_step is not None
        if max_minutes is None or (counters.horizon_estimate is None) != first or steps < 1:
            return
        if seconds_per_step is None:
            seconds_per_step = (self._elapsed() - self._elapsed_before) / steps
        estimate = estimate_horizon(counters.step, self._elapsed(), seconds_per_step, max_minutes)
        counters.horizon_estimate = self.dist.broadcast_int(estimate, self.device)
        self.horizon = self._horizon()
        self.progress.set_total(self.horizon)

    def _evaluate(self) -> None:
        counters, main = self.counters, self.dist.is_main
        with self.precision.autocast():
            evaluated = self._result_model()
            val_loss = validation_loss(
                evaluated, self.val_batches, self.config.eval_batches, self.dist
            )
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
            sample=evaluation_sample(evaluated, self.vocab, self.config) if main else "",
        )
        improved = counters.record_evaluation(val_loss)
        if main and (improved or not self.run_dir.best.exists()):
            save_checkpoint(self._checkpoint(), self.run_dir.best)
        self._loss_sum.zero_()
        if main:
            self.run_dir.append_metrics(record)
            self.history.append(asdict(record))
            plot_losses(self.history, self.run_dir.plot)
        self._estimate_horizon()
        self._save_last()
        self.progress.evaluated(record, self.horizon)
        if main and self.hooks.on_evaluation is not None:
            self.hooks.on_evaluation(record)
        self._interval = (time.monotonic(), counters.tokens)  # evaluation time not counted

    def _checkpoint(self, state: dict | None = None) -> Checkpoint:
        info = checkpoint_info(
            self.config, self.counters, self._epoch(), self._elapsed(), self.corpus.meta
        )
        return Checkpoint.from_model(self._result_model(), self.vocab, info, state)

    def _result_model(self) -> CharRNN:
        """What the run evaluates, samples and saves: the weight average if there is one."""
        return self.model if self.average is None else self.average.model

    def _save_last(self) -> None:
        """last.safetensors with the training state: every rank hands over its hidden-state
        columns and RNG states (a collective), rank 0 writes."""
        hidden = self.dist.gather_hidden(self.hidden)  # each (L, B, H)
        rank_rngs = self.dist.gather_objects(rng_state())
        if self.dist.is_main:
            counters = replace(
                self.counters,
                elapsed_seconds=self._elapsed(),
                train_loss_sum=float(self._loss_sum),
            )
            scaler = self.precision.state_dict()
            average = None
            if self.average is not None:
                average = (self.model.state_dict(), self.average.updates)
            state = training_state(counters, self.optimizer, hidden, rank_rngs, scaler, average)
            save_checkpoint(self._checkpoint(state), self.run_dir.last)
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
