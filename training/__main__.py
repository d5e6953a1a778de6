"""`python -m training <command>` (or `charrnn-train <command>`): a map from sub-command to
its arguments and its function in the cli_* modules.

    prepare  text → a prepared-data directory
    train    a prepared-data directory → a run directory with checkpoints
    eval     a checkpoint's loss (nats and bits per char) on text files
    sample   a checkpoint's text, streamed to stdout
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from training.cli_eval import add_eval_arguments, run_eval
from training.cli_prepare import add_prepare_arguments, run_prepare
from training.cli_sample import add_sample_arguments, run_sample
from training.cli_train import add_train_arguments, run_train

Command = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]
COMMANDS: dict[str, Command] = {
    "prepare": (add_prepare_arguments, run_prepare, "turn text into a prepared-data directory"),
    "train": (add_train_arguments, run_train, "train a model on a prepared-data directory"),
    "eval": (add_eval_arguments, run_eval, "score a checkpoint on text files"),
    "sample": (add_sample_arguments, run_sample, "generate text from a checkpoint"),
}


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors as one `error: ...` line and exit status 2, like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="charrnn-train", description="Prepare data for, train, evaluate and sample char-RNNs."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (add_arguments, run, text) in COMMANDS.items():
        command = commands.add_parser(name, help=text, description=text)
        add_arguments(command)
        command.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 2 error, 130/143 stopped by a signal)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, already printed)
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return args.run(args)
    except KeyboardInterrupt:  # a second Ctrl-C during training, or one outside it
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # the promise: one line, never a traceback
        print(f"error: {type(error).__name__}: {' '.join(str(error).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
