"""The command line, `python -m training <command>` (or `charrnn-train <command>`): a map
from sub-command to its arguments and its function, and the `prepare` and `eval` commands.
Each command turns flags into library calls and their result into output; every error is
one `error: ...` line on stderr and exit status 2.

    prepare  text → a prepared-data directory             (training.prepare)
    train    a prepared-data directory → a run directory   (training.cli_train)
    eval     a checkpoint's loss in nats and bits per char on text files (training.evaluate)
    sample   a checkpoint's text, streamed to stdout       (training.inference)
    score    each character's surprisal under a checkpoint  (training.inference)
    chat-template  show or set a checkpoint's chat template (training.chat_template)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from model.checkpoint import load_checkpoint
from model.device import resolve_device
from model.text import NEWLINES_KEEP
from training.chat_template import add_chat_template_arguments, run_chat_template
from training.cli_train import add_train_arguments, run_train
from training.evaluate import EVAL_SEQ_LEN, EvalResult, combine_results, evaluate_text
from training.inference import (
    add_sample_arguments,
    add_score_arguments,
    run_sample,
    run_score,
)
from training.prepare import PrepareConfig, prepare
from training.recipe import TrainConfig
from training.sources import DataError, read_text_file

Command = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]


def commands() -> dict[str, Command]:
    """Each sub-command's (add its arguments, run it, one line of help)."""
    return {
        "prepare": (add_prepare_arguments, run_prepare, "turn text into a prepared-data directory"),
        "train": (add_train_arguments, run_train, "train a model on a prepared-data directory"),
        "eval": (add_eval_arguments, run_eval, "score a checkpoint on text files"),
        "sample": (add_sample_arguments, run_sample, "generate text from a checkpoint"),
        "score": (add_score_arguments, run_score, "each character's surprisal under a checkpoint"),
        "chat-template": (
            add_chat_template_arguments,
            run_chat_template,
            "show or set the chat template a checkpoint carries",
        ),
    }


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors as one `error: ...` line and exit status 2, like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="charrnn-train", description="Prepare data for, train, evaluate and sample char-RNNs."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (add_arguments, run, text) in commands().items():
        command = subparsers.add_parser(name, help=text, description=text)
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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = PrepareConfig()
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="text files, directories (searched recursively), '-' for stdin, "
        "or a built-in corpus: shakespeare",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="the prepared-data directory to write (prepared data already there is replaced)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=defaults.val_fraction,
        help="fraction of the text, from its end, held out for validation (default: %(default)s)",
    )
    parser.add_argument(
        "--encoding",
        default=defaults.encoding,
        help="text encoding of the inputs (default: %(default)s)",
    )
    parser.add_argument(
        "--glob",
        default=defaults.glob,
        help="which files of an input directory to read, e.g. '*.txt' (default: %(default)s)",
    )
    parser.add_argument(
        "--max-vocab",
        type=_positive_int,
        default=defaults.max_vocab,
        help="keep at most this many characters, the rarest becoming U+FFFD (default: all)",
    )
    parser.add_argument(
        "--min-count",
        type=_positive_int,
        default=defaults.min_count,
        help="characters seen fewer times become U+FFFD (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=TrainConfig.batch_size,
        help="the training batch size, to check the corpus holds one batch (default: %(default)s)",
    )
    parser.add_argument(
        "--seq-len",
        type=_positive_int,
        default=TrainConfig.seq_len,
        help="the training sequence length, for the same check (default: %(default)s)",
    )
    documents = parser.add_mutually_exclusive_group()
    documents.add_argument(
        "--documents",
        dest="documents",
        action="store_const",
        const="file",
        help="each input file is a document: the documents are joined with the separator "
        "U+241E '␞', which stands before each one and joins the vocabulary",
    )
    documents.add_argument(
        "--doc-per-line",
        dest="documents",
        action="store_const",
        const="line",
        help="each non-empty line is a document (line endings become the separator)",
    )
    parser.add_argument(
        "--keep-newlines",
        dest="newlines",
        action="store_const",
        const=NEWLINES_KEEP,
        default=defaults.newlines,
        help="keep line endings as they are (default: CRLF and lone CR become LF)",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")


def run_prepare(args: argparse.Namespace) -> int:
    """Run `prepare` with the parsed options; 0 on success, 2 on bad input or options."""
    try:
        config = PrepareConfig(
            val_fraction=args.val_fraction,
            encoding=args.encoding,
            glob=args.glob,
            max_vocab=args.max_vocab,
            min_count=args.min_count,
            min_chars=args.batch_size * args.seq_len + 1,
            min_val_chars=args.seq_len + 1,
            documents=args.documents,
            newlines=args.newlines,
        )
    except ValueError as error:  # an option out of range, e.g. --val-fraction 1.5
        return _fail(error)
    try:
        meta = prepare(args.inputs, args.out, config, progress=not args.no_progress)
    except DataError as error:
        return _fail(error)
    unknown = f", {meta.unknown_count:,} mapped to U+FFFD" if meta.unknown_count else ""
    documents = f" in {meta.document_count:,} documents" if meta.documents else ""
    print(
        f"prepared {meta.corpus}: {meta.source_chars:,} chars{documents}, vocab {len(meta.vocab)} "
        f"({meta.dtype.name}{unknown}), train {meta.train_size:,}, val {meta.val_size:,} "
        f"-> {args.out}"
    )
    return 0


def _fail(error: Exception) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 2


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="a .safetensors file")
    parser.add_argument("texts", nargs="+", type=Path, metavar="TEXT_FILE", help="text to score")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    parser.add_argument("--encoding", default="utf-8", help="of the text files (default: utf-8)")
    parser.add_argument(
        "--seq-len",
        type=int,
        default=EVAL_SEQ_LEN,
        help="characters per forward pass; the state carries across (default: %(default)s)",
    )


def run_eval(args: argparse.Namespace) -> int:
    """Print nats/char, bits/char, perplexity, characters scored and characters out of the
    vocabulary (left out) for each file, and their total; 2 on bad input."""
    try:
        if args.seq_len < 1:
            raise ValueError(f"--seq-len must be at least 1, got {args.seq_len}")
        device = resolve_device(args.device)
        checkpoint = load_checkpoint(args.checkpoint)
        results = []
        for path in args.texts:
            text = read_text_file(path, args.encoding)
            result = evaluate_text(checkpoint, text, device, seq_len=args.seq_len)
            results.append(result)
            print(format_result(str(path), result), flush=True)
    except (ValueError, OSError) as error:  # CheckpointError included
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    if len(results) > 1:
        print(format_result("total", combine_results(results)))
    return 0


def format_result(name: str, result: EvalResult) -> str:
    return (
        f"{name}: {result.nats_per_char:.4f} nats/char, {result.bits_per_char:.4f} bits/char, "
        f"perplexity {result.perplexity:.3f}, {result.chars:,} chars, "
        f"{result.oov_chars:,} out of vocabulary"
    )
