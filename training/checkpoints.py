"""Pipeline stage 4, training: what a run's checkpoints hold beyond the weights, and how a
run continues from one (`train --resume`; starting from one is training.finetune).

A checkpoint's `info` says how its weights came about (the training config, validation
loss, corpus name and size, steps); last.safetensors also holds the training state an exact
resume needs: the run's counters and the optimizer, RNG and hidden state (all saved as
tensors and JSON by model.checkpoint, never pickled).

Checkpoints travel (the shipped model is one), so they record no absolute path of the
machine that trained them: `info["train_config"]` holds `out_dir` as "." (the run
directory, where the checkpoint was written), and `data_dir` and `init_from` relative to the
run directory, e.g. "../data/shakespeare" (the name alone where no relative path exists, as
across Windows drives). A resumed run finds its data from the checkpoint's directory.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from model.checkpoint import Checkpoint, CheckpointError
from model.network import CharRNN, Hidden
from model.text import NEWLINES_KEEP
from training.batches import BatchPosition
from training.dataset import PreparedCorpus
from training.finetune import merge_vocabularies
from training.recipe import FIXED_ON_RESUME, TrainConfig

STATE_FORMAT = "charrnn-train-state"
STATE_VERSION = 1


@dataclass
class RunCounters:
    """Where a run is. Mutable: the loop advances it step by step."""

    step: int = 0  # optimizer steps done
    position: BatchPosition = field(default_factory=BatchPosition)  # the next batch
    tokens: int = 0  # training predictions seen
    elapsed_seconds: float = 0.0  # wall-clock of all sessions before the current one
    best_val_loss: float | None = None
    best_step: int | None = None  # the step of best_val_loss (None in runs saved without it)
    last_val_loss: float | None = None  # of the latest evaluation
    evals_since_best: int = 0  # evaluations in a row without a new best (for patience)
    last_eval_step: int | None = None
    horizon_estimate: int | None = None  # steps that fit in max_minutes, once measured
    train_loss_sum: float = 0.0  # summed batch losses since the last evaluation
    train_loss_steps: int = 0

    def record_evaluation(self, val_loss: float) -> bool:
        """Count an evaluation at the current step (the training loss restarts); True when
        it is the best so far."""
        self.last_val_loss, self.last_eval_step = val_loss, self.step
        self.train_loss_steps = 0
        improved = self.best_val_loss is None or val_loss < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_step, self.evals_since_best = val_loss, self.step, 0
        else:
            self.evals_since_best += 1
        return improved

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "position": self.position.to_json(),
            "tokens": self.tokens,
            "elapsed_seconds": self.elapsed_seconds,
            "best_val_loss": self.best_val_loss,
            "best_step": self.best_step,
            "last_val_loss": self.last_val_loss,
            "evals_since_best": self.evals_since_best,
            "last_eval_step": self.last_eval_step,
            "horizon_estimate": self.horizon_estimate,
            "train_loss_sum": self.train_loss_sum,
            "train_loss_steps": self.train_loss_steps,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunCounters:
        values = dict(data)
        values["position"] = BatchPosition.from_json(data["position"])
        return cls(**values)


def training_state(
    counters: RunCounters,
    optimizer: torch.optim.Optimizer,
    hidden: Hidden,
    rank_rngs: list[dict[str, Any]] | None = None,
    grad_scaler: dict[str, Any] | None = None,
    average: tuple[dict[str, Tensor], int] | None = None,
) -> dict[str, Any]:
    """The checkpoint's training_state: everything but the weights that the next step
    depends on. `hidden` is the state carried into the next batch, (L, B, H) each, all
    ranks' columns together in a data-parallel run. `rank_rngs`: every rank's RNG states
    in a data-parallel run (default: this process's). `grad_scaler`: the loss scale of
    mixed precision. `average`: with a weight average (whose weights the checkpoint's
    are), the raw weights the optimizer continues from and the average's update count."""
    rank_rngs = rank_rngs or [rng_state()]
    state = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "counters": counters.to_json(),
        "optimizer": optimizer.state_dict(),
        "rng": rank_rngs[0],
        "hidden": [h.detach().cpu() for h in hidden],
    }
    if len(rank_rngs) > 1:  # ranks 1.. (each tensor once: safetensors refuses duplicates)
        state["other_rngs"] = rank_rngs[1:]
    if grad_scaler is not None:
        state["grad_scaler"] = grad_scaler
    if average is not None:
        raw_weights, updates = average
        state["weight_average"] = {"raw_weights": raw_weights, "updates": updates}
    return state


def resumed_config(checkpoint: Checkpoint, run_dir: Path, **changes: Any) -> TrainConfig:
    """The config of the run that wrote `checkpoint`, found in `run_dir`, with `changes` (a
    longer max_steps, a new out_dir, ...): its recorded data_dir is taken relative to
    `run_dir` (an absolute one stays as it is). Raises CheckpointError when it holds none,
    ValueError for bad changes."""
    try:
        saved = TrainConfig.from_json(checkpoint.info["train_config"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"no usable training config in the checkpoint ({error})") from None
    run_dir = Path(run_dir).resolve()
    located = {"data_dir": (run_dir / saved.data_dir).resolve(), "out_dir": run_dir}
    if saved.init_from is not None:
        located["init_from"] = (run_dir / saved.init_from).resolve()
    return saved.with_changes(**(located | changes))


def check_resumable(checkpoint: Checkpoint, config: TrainConfig, corpus: PreparedCorpus) -> None:
    """Raise ValueError unless `config` and `corpus` can continue `checkpoint`'s run: a
    training state is there, nothing in FIXED_ON_RESUME changed, and the data is the same
    (size, and no character the run's vocabulary lacks, so the saved position means the
    same text)."""
    if checkpoint.training_state is None:
        raise ValueError("the checkpoint has no training state (only last.safetensors has)")
    saved = TrainConfig.from_json(checkpoint.info.get("train_config", {}))
    for name in FIXED_ON_RESUME:
        if getattr(saved, name) != getattr(config, name):
            raise ValueError(
                f"cannot change {name} when resuming (the run has {getattr(saved, name)!r}, "
                f"asked for {getattr(config, name)!r})"
            )
    if merge_vocabularies(checkpoint.vocab, corpus.vocab)[0] != checkpoint.vocab:
        raise ValueError("the prepared data holds characters the checkpoint's vocabulary lacks")
    chars, run_chars = corpus.meta.get("source_chars"), checkpoint.info.get("corpus_chars")
    if chars != run_chars:
        raise ValueError(
            f"the prepared data holds {chars} characters, the run was trained on {run_chars}: "
            "not the same data"
        )


@dataclass(frozen=True)
class RestoredState:
    """What a resumed run continues from, besides the raw weights and the optimizer."""

    counters: RunCounters
    hidden: Hidden  # the full state, each (L, B, H), on the training device
    rng: dict[str, Any] | None  # this rank's RNG states; None: the world size changed
    grad_scaler: dict[str, Any] | None  # the loss scale of a mixed-precision run
    average: tuple[dict[str, Tensor], int] | None  # the weight average's weights, updates


def restore_run(
    checkpoint: Checkpoint,
    config: TrainConfig,
    corpus: PreparedCorpus,
    model: CharRNN,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> RestoredState:
    """Continue `checkpoint`'s run: check that `config` and `corpus` can (check_resumable),
    load the raw weights into `model` and the optimizer's state into `optimizer`, and return
    the rest (the RNG states are for `set_rng_state` when the run starts). A run resumed on
    another number of processes gets no RNG states: its dropout streams cannot continue,
    and start afresh. Raises ValueError for a state this code did not write."""
    check_resumable(checkpoint, config, corpus)
    state = checkpoint.training_state
    if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
        raise ValueError(
            f"training state of format {state.get('format')!r} version {state.get('version')!r};"
            f" this build resumes {STATE_FORMAT!r} version {STATE_VERSION}"
        )
    # With an average, the checkpoint's weights are the average's and the training state
    # holds the raw ones the optimizer continues from.
    saved_average = state.get("weight_average")
    model.load_state_dict(
        checkpoint.weights if saved_average is None else saved_average["raw_weights"]
    )
    try:
        counters = RunCounters.from_json(state["counters"])
        optimizer.load_state_dict(state["optimizer"])
        hidden = tuple(h.to(device) for h in state["hidden"])
        rank_rngs = [state["rng"], *state.get("other_rngs", [])]
        rng = dict(rank_rngs[rank]) if len(rank_rngs) == world_size else None
        average = None
        if saved_average is not None:
            average = (checkpoint.weights, int(saved_average["updates"]))
    except (KeyError, TypeError, RuntimeError) as error:
        raise ValueError(f"damaged training state: {error}") from error
    return RestoredState(counters, hidden, rng, state.get("grad_scaler"), average)


def rng_state() -> dict[str, Any]:
    """The generators that training draws from: the CPU one (initialisation, and dropout
    on the CPU) and, once used, CUDA's and MPS's (dropout there)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    mps = getattr(torch, "mps", None)
    if mps is not None and torch.backends.mps.is_available():
        state["mps"] = mps.get_rng_state()
    return state


def seed_generators(saved: dict[str, Any] | None, seed: int, rank: int, step: int) -> None:
    """Set the generators a run draws dropout from: the saved states of a resumed run;
    else `seed + rank`, a stream of its own for each data-parallel rank (just `seed` on one
    process); else (resumed on another number of ranks, whose saved streams do not map)
    a seed mixed from seed, rank and step."""
    if saved is not None:
        set_rng_state(saved)
    elif step == 0:
        torch.manual_seed(seed + rank)
    else:
        torch.manual_seed(int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0]))


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])


def checkpoint_info(
    config: TrainConfig,
    counters: RunCounters,
    epoch: float,
    elapsed_seconds: float,
    corpus_meta: dict[str, Any],
) -> dict[str, Any]:
    """The checkpoint's `info`: how these weights came about, for people and the app. The
    validation loss is the latest evaluation's (nats/char)."""
    val_loss = counters.last_val_loss
    return {
        "train_config": config.to_json() | relative_paths(config),
        "val_loss": val_loss,
        "val_bits_per_char": None if val_loss is None else val_loss / math.log(2),
        "step": counters.step,
        "epoch": epoch,
        "tokens": counters.tokens,
        "corpus": corpus_meta.get("corpus"),
        "corpus_chars": corpus_meta.get("source_chars"),
        "newlines": corpus_meta.get("newlines", NEWLINES_KEEP),  # as meta.json: see model.text
        "elapsed_seconds": elapsed_seconds,
        "torch_version": torch.__version__,
    }


def relative_paths(config: TrainConfig) -> dict[str, str | None]:
    """`data_dir`, `out_dir` and `init_from` as a checkpoint records them: relative to the
    run directory (see the module docstring), with "/" separators on every system."""

    def relative(path: Path) -> str:
        try:
            return Path(os.path.relpath(path, config.out_dir)).as_posix()
        except ValueError:  # on another drive (Windows): no relative path leads there
            return path.name

    init_from = None if config.init_from is None else relative(config.init_from)
    return {"data_dir": relative(config.data_dir), "out_dir": ".", "init_from": init_from}
