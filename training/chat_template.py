"""The `chat-template` command: show, set or remove the chat template a checkpoint carries
(model/chat_template.py: how POST /v1/chat/completions writes a conversation for it), and
the same choice at `train` time.

    python -m training chat-template CKPT                      show it
    python -m training chat-template CKPT --template play      each message a speech
        [--names user=ROMEO,assistant=JULIET,system=CHORUS]      (the corpus's `NAME:` layout)
    python -m training chat-template CKPT --template FILE       a Jinja file of your own
        [--stop '\\n\\n']                                          (and where replies end)
    python -m training chat-template CKPT --template default   remove it: the plain default

`train ... --chat-template play` (with `--chat-names`, `--chat-stop`) writes it into the
run's best and last checkpoints when the run ends or stops; a resumed run keeps the one
its checkpoint carries unless given another. The checkpoint is rewritten atomically (a
server polling it sees the old file or the new one).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from model.chat_template import (
    INFO_KEY,
    MAX_TEMPLATE_CHARS,
    PLAIN,
    ChatTemplate,
    ChatTemplateError,
    play_template,
    stored_template,
)
from model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from model.vocab import Vocabulary

BUILT_IN = ("play", "default")
# What a template must write without failing: the check run before one is stored.
SAMPLE = (
    {"role": "user", "content": ""},
    {"role": "assistant", "content": ""},
    {"role": "user", "content": ""},
)
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def add_template_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """--template, --names and --stop (with `prefix`: --chat-template, ... for `train`)."""
    parser.add_argument(
        f"--{prefix}template",
        metavar="play|default|FILE",
        help="the chat template: play (each message a `NAME:` speech, for corpora laid out "
        "as plays), default (none stored: the plain one) or a Jinja file",
    )
    parser.add_argument(
        f"--{prefix}names",
        metavar="ROLE=NAME,...",
        help="with play: the speakers of system, user and assistant "
        "(default: system=CHORUS,user=ROMEO,assistant=JULIET)",
    )
    parser.add_argument(
        f"--{prefix}stop",
        action="append",
        metavar="TEXT",
        help="where a reply ends when a request gives no stop (repeat for several; \\n is a "
        "newline); play's default: a blank line",
    )


def template_from_args(args: argparse.Namespace, prefix: str = "") -> ChatTemplate | None:
    """The template the flags ask for; None for `default`. Raises ValueError (a bad
    flag, a file that cannot be read or a template that does not render)."""
    dest = prefix.replace("-", "_")
    choice = getattr(args, f"{dest}template")
    names, stops = getattr(args, f"{dest}names"), getattr(args, f"{dest}stop")
    flag = f"--{prefix}template"
    if choice is None or choice == "default":
        if names is not None or stops is not None:
            raise ValueError(f"--{prefix}names and --{prefix}stop go with {flag} play or FILE")
        if choice is None:
            raise ValueError(f"no {flag} given")
        return None
    if names is not None and choice != "play":
        raise ValueError(f"--{prefix}names goes with {flag} play")
    if choice == "play":
        template = play_template(parse_names(names or ""))
    else:
        template = ChatTemplate(_read_template(Path(choice)))
    if stops is not None:
        template = replace(template, stop=tuple(unescape(stop) for stop in stops))
    check_template(template)
    return template


def parse_names(text: str) -> dict[str, str]:
    """`user=ROMEO,assistant=JULIET` as {role: name}."""
    names = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        role, sep, name = item.partition("=")
        if not sep:
            raise ValueError(f"names: {item!r} is not ROLE=NAME")
        names[role.strip()] = name.strip()
    return names


def unescape(text: str) -> str:
    r"""`\n`, `\t` and `\\` as a newline, a tab and a backslash (a shell passes them as
    typed)."""
    return re.sub(r"\\([nt\\])", lambda match: _ESCAPES[match.group(1)], text)


def check_template(template: ChatTemplate, vocab: Vocabulary | None = None) -> None:
    """Raise ChatTemplateError unless the template writes a plain conversation (user,
    assistant, user), and, given the model's vocabulary, only characters it knows."""
    text = template.render(SAMPLE, MAX_TEMPLATE_CHARS)
    missing = vocab.missing(text + "".join(template.stop)) if vocab is not None else []
    if missing:
        raise ChatTemplateError(
            f"the chat template writes characters the model does not know: {missing!r}"
        )


def set_chat_template(path: Path, template: ChatTemplate | None) -> Checkpoint:
    """Store `template` in the checkpoint's info (None removes it), rewriting the file
    atomically; everything else is kept as it is. Raises CheckpointError or
    ChatTemplateError (a template with characters the model does not know)."""
    checkpoint = load_checkpoint(path)
    info = {key: value for key, value in checkpoint.info.items() if key != INFO_KEY}
    if template is not None:
        check_template(template, checkpoint.vocab)
        info[INFO_KEY] = template.to_json()
    updated = replace(checkpoint, info=info)
    save_checkpoint(updated, path)
    return updated


def run_template(
    args: argparse.Namespace, resumed: Checkpoint | None, vocab: Vocabulary
) -> ChatTemplate | None:
    """`train`'s template: the flags', else the resumed run's (None: none). Raises
    ChatTemplateError, before the run, for one that writes characters the data lacks."""
    if args.chat_template is not None or args.chat_names or args.chat_stop:
        template = template_from_args(args, "chat-")
    else:
        template = stored_template(resumed.info) if resumed is not None else None
    if template is not None:
        check_template(template, vocab)
    return template


def stamp_run(paths: Sequence[Path], template: ChatTemplate | None) -> None:
    """Write `template` into a run's checkpoints (those that exist); nothing for None."""
    if template is None:
        return
    for path in paths:
        if path.is_file():
            set_chat_template(path, template)


def _read_template(path: Path) -> str:
    """A template file's text. Raises ValueError for one that cannot be read, is too big
    or is not UTF-8."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(4 * MAX_TEMPLATE_CHARS + 1)  # UTF-8: at most 4 bytes a char
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or error}") from None
    if len(data) > 4 * MAX_TEMPLATE_CHARS:
        raise ValueError(f"{path}: a chat template has at most {MAX_TEMPLATE_CHARS:,} characters")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None


def add_chat_template_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoints",
        nargs="+",
        type=Path,
        metavar="CHECKPOINT",
        help=".safetensors files; without --template, their templates are shown",
    )
    add_template_arguments(parser)


def run_chat_template(args: argparse.Namespace) -> int:
    """Show or set the checkpoints' chat templates; 0 when done, 2 on bad input."""
    try:
        if args.template is None and args.names is None and args.stop is None:
            for path in args.checkpoints:
                print(describe(path, stored_template(load_checkpoint(path).info)))
            return 0
        template = template_from_args(args)
        for path in args.checkpoints:
            set_chat_template(path, template)
            print(describe(path, template, written=True))
    except (ValueError, OSError) as error:  # CheckpointError, ChatTemplateError
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    return 0


def describe(path: Path, template: ChatTemplate | None, written: bool = False) -> str:
    """What a checkpoint now carries, for the terminal."""
    verb = "now has" if written else "has"
    if template is None:
        stops = ", ".join(repr(stop) for stop in PLAIN.stop)
        return f"{path}: {verb} no chat template (the plain default applies; stop {stops})"
    stops = ", ".join(repr(stop) for stop in template.stop) or "none"
    return f"{path}: {verb} this chat template (stop {stops}):\n{template.template}"
