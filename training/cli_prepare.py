"""The `prepare` sub-command: command-line options in, a `prepare` call, one line out."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.data import PrepareConfig, prepare
from training.errors import DataError

# Only for the too-short check: a corpus must hold one batch of the training run's shape.
DEFAULT_BATCH_SIZE = 64
DEFAULT_SEQ_LEN = 128


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
        default=DEFAULT_BATCH_SIZE,
        help="the training batch size, to check the corpus holds one batch (default: %(default)s)",
    )
    parser.add_argument(
        "--seq-len",
        type=_positive_int,
        default=DEFAULT_SEQ_LEN,
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
