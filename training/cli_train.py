"""The `train` command: flags in, a TrainConfig and a Trainer run (training.loop), one
summary line out. A new run starts from fresh weights; `--resume` continues a run exactly
where it stopped (training.checkpoints); `--init-from` fine-tunes a checkpoint's weights
(training.finetune) with the "fine-tune" preset unless another is given.

Ctrl-C or SIGTERM stop the run after the current step, save last.safetensors and print the
command that resumes it; the exit status is then 130 (SIGINT) or 143 (SIGTERM).

Under torchrun (`torchrun --nproc-per-node N -m training train ...`) every process runs
this command as one rank of a data-parallel run (training.distributed); rank 0 prints.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from model.checkpoint import Checkpoint, load_checkpoint
from model.config import CELLS
from model.device import resolve_device
from training.chat_template import add_template_arguments, run_template, stamp_run
from training.checkpoints import resumed_config
from training.dataset import load_prepared
from training.distributed import DEFAULT_TIMEOUT_SECONDS, DistributedError, process_group
from training.evaluate import bits_per_char
from training.finetune import fine_tune_config
from training.loop import Trainer, TrainHooks, TrainResult
from training.recipe import (
    ARCHITECTURE,
    LSTM_IMPL_CHOICES,
    OPTIMIZERS,
    PRECISIONS,
    PRESETS,
    SCHEDULES,
    TrainConfig,
    preset,
)
from training.run import BEST, resume_path, stop_on_signals


def _optional(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.strip().lower() in ("none", "off") else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return parse


# Every TrainConfig field but the two paths: (flag type, extra add_argument options, help).
_OPTIONS: dict[str, tuple[Callable[[str], Any], dict[str, Any], str]] = {
    "hidden_size": (int, {}, "LSTM units per layer"),
    "num_layers": (int, {}, "stacked recurrent layers"),
    "dropout": (float, {}, "dropout between layers and before the output layer"),
    "cell": (str, {"choices": CELLS}, "recurrent cell"),
    "forget_bias": (float, {}, "the LSTM forget gates' bias at initialisation"),
    "batch_size": (int, {}, "parallel streams (columns of the corpus) per batch"),
    "seq_len": (int, {}, "characters per stream per step (truncated-BPTT length)"),
    "lr": (float, {}, "peak learning rate"),
    "optimizer": (str, {"choices": OPTIMIZERS}, "optimizer"),
    "weight_decay": (float, {}, "decoupled weight decay of the weight matrices"),
    "betas": (float, {"nargs": 2, "metavar": ("BETA1", "BETA2")}, "Adam betas"),
    "schedule": (str, {"choices": SCHEDULES}, "learning-rate schedule after the warm-up"),
    "warmup_steps": (int, {}, "steps of linear warm-up to the peak rate"),
    "min_lr_ratio": (float, {}, "cosine floor as a fraction of --lr"),
    "grad_clip": (_optional(float), {}, "max gradient norm ('none': no clipping)"),
    "ema_decay": (float, {}, "evaluate and save a moving average of the weights (0: off)"),
    "max_epochs": (_optional(int), {}, "stop after this many passes over the data"),
    "max_steps": (_optional(int), {}, "stop after this many optimizer steps"),
    "max_minutes": (_optional(float), {}, "stop after this much wall-clock time"),
    "eval_every": (int, {}, "steps between evaluations"),
    "evals_per_epoch": (
        _optional(int),
        {},
        "evaluate at least this often per pass over the data ('none': --eval-every only)",
    ),
    "eval_batches": (_optional(int), {}, "validation batches per evaluation ('none': all)"),
    "patience": (
        _optional(int),
        {},
        "stop after this many evaluations without a better validation loss ('none': never)",
    ),
    "seed": (int, {}, "random seed (initialisation, dropout, samples)"),
    "device": (str, {}, "auto, cpu, cuda, cuda:N or mps"),
    "lstm_impl": (str, {"choices": LSTM_IMPL_CHOICES}, "LSTM kernel: auto picks by device"),
    "threads": (_optional(int), {}, "CPU threads for PyTorch ('none': PyTorch's default)"),
    "precision": (
        str,
        {"choices": PRECISIONS},
        "fp32; bf16 or fp16 (mixed precision, CUDA with lstm_impl torch only)",
    ),
    "sample_prime": (str, {}, "text the evaluation samples start from"),
    "sample_length": (int, {}, "characters sampled at each evaluation (0: none)"),
    "sample_temperature": (float, {}, "temperature of those samples"),
}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data_dir",
        nargs="?",
        type=Path,
        metavar="DATA_DIR",
        help="a prepared-data directory (from `prepare`); optional with --resume",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="RUN_DIR",
        help="the run directory to write; with --resume, defaults to the resumed run's",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue a run exactly where it stopped: its directory or a last.safetensors; "
        "options given change the saved config (not the model or batch shape)",
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        metavar="CHECKPOINT",
        help="fine-tune: start a new run from this checkpoint's weights, with its network "
        "(its vocabulary gains the data's new characters) and the fine-tune preset",
    )
    parser.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        help="start from a named set of settings (flags given too override it): "
        + "; ".join(f"{name}: {values or 'the defaults'}" for name, values in PRESETS.items()),
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_template_arguments(parser, prefix="chat-")  # written into the run's checkpoints
    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help="under torchrun: how long a rank waits for the others before failing "
        "(default: %(default)g)",
    )
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for name, (kind, extra, text) in _OPTIONS.items():
        default = defaults[name]
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else repr(default)
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=kind,
            default=argparse.SUPPRESS,
            help=f"{text} (default: {shown})",
            **extra,
        )


def run_train(args: argparse.Namespace) -> int:
    """Train with the parsed options; 0 when done, 2 on bad input, 130/143 when stopped by
    SIGINT/SIGTERM (after saving last.safetensors)."""
    given = {name: getattr(args, name) for name in _OPTIONS if hasattr(args, name)}
    try:
        config, checkpoint = _config(args, given)
        corpus = load_prepared(config.data_dir)
        template = run_template(args, checkpoint, corpus.vocab)  # stored when the run ends
        device = resolve_device(config.device)
        with process_group(device, args.dist_timeout) as dist, stop_on_signals() as stop:
            hooks = TrainHooks(should_stop=stop)
            trainer = Trainer(config, corpus, checkpoint, not args.no_progress, hooks, dist)
            result = trainer.run()
            if dist.is_main:
                stamp_run([trainer.run_dir.best, trainer.run_dir.last], template)
    except (ValueError, OSError, DistributedError) as error:  # DataError, CheckpointError
        return _fail(error)
    if result.stop_reason == "interrupted":
        launch = [sys.executable]
        if dist.enabled:  # the same number of processes continues the dropout streams
            launch = ["torchrun", f"--nproc-per-node={dist.world_size}"]
        command = shlex.join([*launch, "-m", "training", "train", "--resume", str(result.run_dir)])
        if dist.is_main:
            print(
                f"stopped at step {result.step}, saved {trainer.run_dir.last}; resume with: "
                f"{command}",
                file=sys.stderr,
            )
        return stop.exit_code if stop() else 130  # else another rank was asked to stop
    if dist.is_main:
        print(_summary(result))
    return 0


def _config(
    args: argparse.Namespace, given: dict[str, Any]
) -> tuple[TrainConfig, Checkpoint | None]:
    """The run's config and the checkpoint it resumes (None for a new run). Paths are made
    absolute so a run can be resumed from any working directory; a resumed run's data is
    where its checkpoint says, relative to the checkpoint's directory, unless given."""
    data_dir = args.data_dir.resolve() if args.data_dir else None
    if args.resume is None:
        if data_dir is None or args.out is None:
            raise ValueError("train needs DATA_DIR and --out RUN_DIR (or --resume RUN_DIR)")
        if args.init_from is None:
            settings = {**preset(args.preset or "default"), **given}
            return TrainConfig(data_dir, args.out.resolve(), **settings), None
        init = load_checkpoint(args.init_from)
        # A preset's network settings give way to the checkpoint's; flags given do not.
        chosen = preset(args.preset or "fine-tune").items()
        settings = {**{k: v for k, v in chosen if k not in ARCHITECTURE}, **given}
        path = args.init_from.resolve()
        return fine_tune_config(init, path, data_dir, args.out.resolve(), **settings), None
    if args.init_from is not None:
        raise ValueError("--init-from starts a new run; --resume continues one: give only one")
    if args.preset is not None:
        raise ValueError("--preset starts a new run; a resumed run keeps its saved settings")
    path = resume_path(args.resume)
    checkpoint = load_checkpoint(path)
    changes = {**given, "out_dir": (args.out or path.parent).resolve()}
    if data_dir is not None:  # the data moved: the saved position still means the same text
        changes["data_dir"] = data_dir
    return resumed_config(checkpoint, path.parent, **changes), checkpoint


def _summary(result: TrainResult) -> str:
    """The one line a finished run prints: why it stopped, its best validation loss and the
    checkpoint to serve, best.safetensors (last.safetensors is for --resume: after early
    stopping its weights are the ones that stopped improving), e.g.
    done (early stopping): step 1452, epoch 11.08, best val loss 1.3469 nats/char (1.9432
    bits/char) at step 1188, none better in the 4 evaluations since; serve RUN/best.safetensors
    """
    reason = result.stop_reason.replace("_", " ")
    head = f"done ({reason}): step {result.step}, epoch {result.epoch:.2f}"
    if result.best_val_loss is None:  # not evaluated (a run always is before this line)
        return f"{head}, not evaluated -> {result.run_dir}"
    bits = bits_per_char(result.best_val_loss)
    best = f"best val loss {result.best_val_loss:.4f} nats/char ({bits:.4f} bits/char)"
    if result.best_step is not None:  # None: resumed from a run saved without it
        best += f" at step {result.best_step}"
    if result.stop_reason == "early_stopping":
        best += f", none better in the {result.evals_since_best} evaluations since"
    return f"{head}, {best}; serve {result.run_dir / BEST}"


def _fail(error: BaseException) -> int:
    print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
    return 2
