"""The docs hold against the code: every environment setting the service reads, every flag of
`python -m training` (each sub-command) and of `python -m app`, and every metric appear in
README.md or docs/*.md, in inline code (a table or the text, not only an example block);
and every relative link and #anchor there resolves.

The names come from the code itself (the settings class's fields, the argparse parsers, the
metrics registry), so a new setting, flag or metric without a line of docs fails here.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import unicodedata
from pathlib import Path
from unittest import mock
from urllib.parse import unquote

import pytest
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[1]


def settings_class() -> type[BaseSettings]:
    """The service's settings class: the one place to change if its module moves."""
    from app.settings import Settings

    return Settings


def app_parser() -> argparse.ArgumentParser:
    """`python -m app`'s parser. The module builds it inside parse_args(), so it is caught
    there, before it parses anything."""
    from app import __main__ as app_main

    build = getattr(app_main, "build_parser", None)
    if build is not None:
        return build()
    caught: list[argparse.ArgumentParser] = []

    class Caught(Exception):
        pass

    def catch(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        caught.append(self)
        raise Caught

    with (
        mock.patch.object(argparse.ArgumentParser, "parse_args", catch),
        contextlib.suppress(Caught),
    ):
        app_main.parse_args([])
    assert caught, "app/__main__.py's parse_args() built no parser"
    return caught[0]


def training_parser() -> argparse.ArgumentParser:
    from training.cli import build_parser

    return build_parser()


def metric_families() -> set[str]:
    """The metric names a scrape shows, without the client library's `_created` series."""
    from app.http.metrics import Metrics

    text = Metrics(lambda: None).render().decode()
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    return {name for name in names if not name.endswith("_created")}


# --- reading the docs ------------------------------------------------------------------------

FENCE = re.compile(r"^(```|~~~)")
INLINE_CODE = re.compile(r"`([^`\n]+)`")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"\n]*\")?\)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def doc_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def inline_code(texts: list[str]) -> list[str]:
    """Every inline code span of the texts, outside fenced blocks."""
    return [span for text in texts for span in INLINE_CODE.findall("\n".join(prose_lines(text)))]


def undocumented(names: list[str], spans: list[str], flag: bool = False) -> list[str]:
    """The names that no code span holds as a whole word (`MAX_LENGTH`, `MAX_LENGTH=1`,
    `--seed N`; not `MAX_LENGTHS` or `--seed-x`)."""
    tail = r"(?![\w-])" if flag else r"(?!\w)"
    missing = []
    for name in names:
        word = re.compile(r"(?<![\w-])" + re.escape(name) + tail)
        if not any(word.search(span) for span in spans):
            missing.append(name)
    return missing


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the text as rendered (links as their text, no
    backticks), lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    kept = "".join(
        char
        for char in text
        if char.isalnum() or char in " -_" or unicodedata.category(char).startswith("M")
    )
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if match is None:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(paths: list[Path]) -> list[tuple[Path, str]]:
    """(file, target) for each link or image of the files that is not a URL."""
    found = []
    for path in paths:
        text = "\n".join(prose_lines(path.read_text(encoding="utf-8")))
        text = INLINE_CODE.sub("code", text)  # a link inside code is not a link
        found.extend((path, target) for target in LINK.findall(text) if not SCHEME.match(target))
    return found


def broken_links(paths: list[Path]) -> list[str]:
    """'FILE: TARGET (why)' for each relative link or #anchor that does not resolve."""
    broken = []
    for path, target in relative_links(paths):
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{path.name}: {target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{path.name}: {target} (no such heading in {linked.name})")
    return broken


# --- the checks --------------------------------------------------------------------------


def env_names(settings: type[BaseSettings]) -> list[str]:
    """The environment variables a pydantic-settings class reads, one per field (each
    choice of an AliasChoices)."""
    prefix = settings.model_config.get("env_prefix", "")
    names = []
    for name, field in settings.model_fields.items():
        alias = field.validation_alias or field.alias
        if isinstance(alias, AliasChoices):
            names.extend(choice for choice in alias.choices if isinstance(choice, str))
        elif isinstance(alias, str):
            names.append(alias)
        else:
            names.append(prefix + name)
    return [name.upper() for name in names]


def long_flags(parser: argparse.ArgumentParser) -> list[str]:
    return [
        flag
        for action in parser._actions
        for flag in action.option_strings
        if flag.startswith("--") and flag != "--help"
    ]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


@pytest.fixture(scope="module")
def spans() -> list[str]:
    return inline_code([path.read_text(encoding="utf-8") for path in doc_files()])


def test_every_setting_is_documented(spans: list[str]) -> None:
    names = env_names(settings_class())
    assert len(names) >= 30 and "MAX_LENGTH" in names and "DEVICE" in names
    assert undocumented(names, spans) == []


def test_every_flag_of_every_training_command_is_documented(spans: list[str]) -> None:
    commands = subcommands(training_parser())
    assert {"prepare", "train", "eval", "sample", "score"} <= set(commands)
    missing = [
        f"{name} {flag}"
        for name, parser in commands.items()
        for flag in undocumented(long_flags(parser), spans, flag=True)
    ]
    assert missing == []


def test_every_flag_of_the_service_is_documented(spans: list[str]) -> None:
    flags = long_flags(app_parser())
    assert "--port" in flags and "--checkpoint" in flags
    assert undocumented(flags, spans, flag=True) == []


def test_every_metric_is_in_the_metrics_reference() -> None:
    families = metric_families()
    assert "charrnn_http_requests_total" in families
    reference = inline_code([(ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")])
    assert undocumented(sorted(families), reference) == []


def test_the_metrics_reference_names_no_metric_the_service_lacks() -> None:
    """Its table and its example queries (a histogram's series end in _bucket, _sum, _count)."""
    families = metric_families()
    text = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    suffix = re.compile(r"_(bucket|sum|count|created)$")
    named = {
        suffix.sub("", name) if suffix.sub("", name) in families else name
        for name in re.findall(r"\bcharrnn_[a-z_]+", text)
    }
    assert len(named) >= 5
    assert named - families == set()


def test_every_relative_link_and_anchor_resolves() -> None:
    links = relative_links(doc_files())
    assert len(links) >= 30 and any("#" in target for _, target in links)
    assert broken_links(doc_files()) == []


# --- the checks can fail -----------------------------------------------------------------


def test_a_missing_or_partial_mention_is_reported() -> None:
    docs = [
        "| `MAX_LENGTH` | 2000 |\n`--seed N` and `--top-k`\n",
        "```sh\nDEVICE=cuda python -m app --port 1\n```\n",  # an example block is not docs
    ]
    spans = inline_code(docs)
    assert undocumented(["MAX_LENGTH", "DEVICE", "MAX"], spans) == ["DEVICE", "MAX"]
    assert undocumented(["--seed", "--top", "--port"], spans, flag=True) == ["--top", "--port"]


def test_settings_names_follow_aliases_and_prefixes() -> None:
    from pydantic import Field
    from pydantic_settings import SettingsConfigDict

    class Aliased(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="app_")
        plain: int = 1
        named: int = Field(2, alias="OTHER_NAME")
        either: int = Field(3, validation_alias=AliasChoices("ONE", "TWO"))

    assert env_names(Aliased) == ["APP_PLAIN", "OTHER_NAME", "ONE", "TWO"]


def test_broken_links_and_anchors_are_reported(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(
        "# A page\n\n## The step: `step.py`\n\n## Twice\n\n## Twice\n\n"
        "```sh\n# not a heading\n[not](a-link.md)\n```\n"
        "[ok](#the-step-steppy) [ok](#twice-1) [ok](../README.md#the-top) "
        "[web](https://example.com/x#y) `[code](nowhere.md)`\n"
        "[bad anchor](#not-a-heading) [bad file](missing.md) [bad](../README.md#nope)\n",
        encoding="utf-8",
    )
    (tmp_path / "README.md").write_text("# The top\n\n[a](docs/a.md#a-page)\n", encoding="utf-8")
    assert broken_links(doc_files(tmp_path)) == [
        "a.md: #not-a-heading (no such heading in a.md)",
        "a.md: missing.md (no such file)",
        "a.md: ../README.md#nope (no such heading in README.md)",
    ]


def test_slugs_are_githubs() -> None:
    assert slug("Hostile load: `hostile_load.py`") == "hostile-load-hostile_loadpy"
    assert slug("Where a step's time goes") == "where-a-steps-time-goes"
    assert slug("eval, sample and score") == "eval-sample-and-score"
    assert slug("[Linked](x.md) text") == "linked-text"
