import io
import json
import sys

import numpy as np
import pytest

from model.checkpoint import load_checkpoint
from model.decoding.params import encode_stops
from model.text import NEWLINES_KEEP, NEWLINES_LF
from model.vocab import Vocabulary
from training import prepare as prepare_module
from training.dataset import load_prepared
from training.loop import Trainer
from training.prepare import SEPARATOR, PrepareConfig, line_documents, prepare, text_chunks
from training.recipe import TrainConfig
from training.sources import DataError, open_corpus

# Tiny corpora: no minimum length beyond one character per split, and chunks of a few
# characters so every test crosses chunk boundaries.
SMALL = PrepareConfig(min_chars=1, min_val_chars=1, chunk_chars=7)
DOC_SMALL = PrepareConfig(min_chars=1, min_val_chars=1, chunk_chars=3)  # chunks cut lines
SEP = SEPARATOR


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def _decoded(corpus):
    return corpus.vocab.decode(corpus.train.tolist()) + corpus.vocab.decode(corpus.val.tolist())


def test_round_trip_split_and_meta(tmp_path):
    text = "To be, or not to be: that is the question.\n" * 5  # 215 characters
    out = tmp_path / "prepared"
    meta = prepare([_write(tmp_path / "hamlet.txt", text)], out, SMALL, progress=False)

    corpus = load_prepared(out)
    assert _decoded(corpus) == text
    assert (meta.train_size, meta.val_size) == (193, 22)  # val: the last round(0.1 * 215)
    assert corpus.vocab.decode(corpus.val.tolist()) == text[-22:]
    assert isinstance(corpus.train, np.memmap) and not corpus.train.flags.writeable
    assert corpus.vocab == Vocabulary.from_text(text)
    assert corpus.meta == json.loads((out / "meta.json").read_text())
    assert corpus.meta == {
        "format": "charrnn-data",
        "version": 1,
        "vocab": corpus.vocab.to_json(),
        "dtype": "uint8",
        "train_size": 193,
        "val_size": 22,
        "corpus": "hamlet.txt",
        "source_chars": 215,
        "val_fraction": 0.1,
        "unknown_count": 0,
        "documents": None,
        "separator": None,
        "document_count": 0,
        "newlines": "lf",
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hamlet.txt", "prepared"]


def test_several_files_are_joined_with_newlines(tmp_path):
    inputs = [_write(tmp_path / "a.txt", "first"), _write(tmp_path / "b.txt", "second\n")]
    meta = prepare(inputs, tmp_path / "out", SMALL, progress=False)
    assert meta.corpus == "a.txt+b.txt"
    assert _decoded(load_prepared(tmp_path / "out")) == "first\nsecond\n"


@pytest.mark.parametrize("chunk_chars", [1, 2, 3, 7, 100])
def test_crlf_and_lone_cr_become_lf_across_chunk_boundaries(tmp_path, chunk_chars):
    text = "a\r\nb\rc\r\r\nd\n\re\r"
    with open_corpus([_write(tmp_path / "w.txt", text)], "utf-8", "*") as corpus:
        chunks = list(text_chunks(corpus, chunk_chars, None, NEWLINES_LF))
    assert "".join(t for t, _ in chunks) == "a\nb\nc\n\nd\n\ne\n"
    assert sum(n for _, n in chunks) == len(text.encode())  # every input byte reported


def test_a_windows_corpus_has_no_cr_in_its_vocabulary(tmp_path):
    lines = "".join(f"line {n} of a Windows file\r\n" for n in range(20))
    config = PrepareConfig(min_chars=1, min_val_chars=1, chunk_chars=5)
    meta = prepare([_write(tmp_path / "w.txt", lines)], tmp_path / "lf", config, progress=False)
    assert "\r" not in meta.vocab and meta.source_chars == len(lines) - 20
    assert _decoded(load_prepared(tmp_path / "lf")) == lines.replace("\r\n", "\n")
    assert json.loads((tmp_path / "lf" / "meta.json").read_text())["newlines"] == "lf"
    keep = PrepareConfig(min_chars=1, min_val_chars=1, chunk_chars=5, newlines=NEWLINES_KEEP)
    meta = prepare([str(tmp_path / "w.txt")], tmp_path / "kept", keep, progress=False)
    assert "\r" in meta.vocab and _decoded(load_prepared(tmp_path / "kept")) == lines
    assert load_prepared(tmp_path / "kept").meta["newlines"] == "keep"


def test_large_vocabulary_uses_uint16_little_endian(tmp_path):
    text = "".join(chr(0x400 + i) for i in range(300)) * 2
    prepare([_write(tmp_path / "wide.txt", text)], tmp_path / "out", SMALL, progress=False)
    corpus = load_prepared(tmp_path / "out")
    assert corpus.meta["dtype"] == "uint16" and corpus.train.dtype == np.dtype("<u2")
    assert np.frombuffer((tmp_path / "out" / "train.bin").read_bytes()[:4], "<u2").tolist() == [
        0,
        1,
    ]
    assert _decoded(corpus) == text


def test_stdin(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("piped ✓ text\n".encode())))
    meta = prepare(["-"], tmp_path / "out", SMALL, progress=False)
    assert meta.corpus == "stdin"
    assert _decoded(load_prepared(tmp_path / "out")) == "piped ✓ text\n"


def test_directory_with_glob(tmp_path):
    (tmp_path / "src" / "deep").mkdir(parents=True)
    _write(tmp_path / "src" / "deep" / "b.txt", "bee\n")
    _write(tmp_path / "src" / "a.txt", "ay\n")
    _write(tmp_path / "src" / "c.log", "skipped\n")
    config = PrepareConfig(min_chars=1, min_val_chars=1, glob="*.txt")
    prepare([str(tmp_path / "src")], tmp_path / "out", config, progress=False)
    assert _decoded(load_prepared(tmp_path / "out")) == "ay\nbee\n"


def test_min_count_maps_rare_characters_to_unknown(tmp_path):
    text = "aaaa bbbb cccc xyz é\n" * 2  # x, y, z, é and the newline seen twice each
    config = PrepareConfig(min_chars=1, min_val_chars=1, min_count=3)
    meta = prepare([_write(tmp_path / "t.txt", text)], tmp_path / "out", config, progress=False)
    corpus = load_prepared(tmp_path / "out")
    assert corpus.vocab.unknown == "\ufffd"
    assert corpus.vocab.chars == (" ", "a", "b", "c", "\ufffd")
    assert meta.unknown_count == corpus.meta["unknown_count"] == 10
    assert _decoded(corpus) == "aaaa bbbb cccc \ufffd\ufffd\ufffd \ufffd\ufffd" * 2


def test_max_vocab_keeps_the_most_frequent(tmp_path):
    text = "aaaaa bbbb ccc dd e\n"  # space 4, then by count: a b c d; newline and e once
    config = PrepareConfig(min_chars=1, min_val_chars=1, max_vocab=4)
    meta = prepare([_write(tmp_path / "t.txt", text)], tmp_path / "out", config, progress=False)
    assert meta.vocab.chars == (" ", "a", "b", "\ufffd")
    assert meta.unknown_count == 3 + 2 + 1 + 1  # c, d, e, newline


def test_literal_replacement_character_is_not_counted_as_mapped(tmp_path):
    text = "aaa\ufffd b\n"
    config = PrepareConfig(min_chars=1, min_val_chars=1, min_count=2)
    meta = prepare([_write(tmp_path / "t.txt", text)], tmp_path / "out", config, progress=False)
    assert meta.vocab.chars == ("a", "\ufffd")
    assert meta.unknown_count == 3  # space, b, newline


@pytest.mark.parametrize(
    ("text", "config", "message"),
    [
        ("", SMALL, r"e\.txt: empty input"),
        ("x" * 100, PrepareConfig(min_chars=200), r"e\.txt: too short: 100 characters leave 90"),
        ("x" * 100, PrepareConfig(min_chars=1, min_val_chars=11), "validation split"),
        ("abc\n", PrepareConfig(min_chars=1, min_val_chars=1, min_count=5), "leaves no char"),
    ],
)
def test_unusable_text_leaves_nothing_behind(tmp_path, text, config, message):
    with pytest.raises(DataError, match=message):
        prepare([_write(tmp_path / "e.txt", text)], tmp_path / "out", config, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["e.txt"]


def test_failure_while_writing_keeps_the_old_data(tmp_path, monkeypatch):
    out = tmp_path / "out"
    prepare([_write(tmp_path / "old.txt", "old text\n")], out, SMALL, progress=False)

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(prepare_module, "write_json", crash)
    with pytest.raises(OSError, match="disk full"):
        prepare([_write(tmp_path / "new.txt", "new text\n")], out, SMALL, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.txt", "old.txt", "out"]
    assert _decoded(load_prepared(out)) == "old text\n"


def test_replaces_prepared_data_but_nothing_else(tmp_path):
    out = tmp_path / "out"
    prepare([_write(tmp_path / "a.txt", "first\n")], out, SMALL, progress=False)
    prepare([_write(tmp_path / "b.txt", "second\n")], out, SMALL, progress=False)
    assert _decoded(load_prepared(out)) == "second\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt", "out"]

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="mine: exists and is not a prepared-data directory"):
        prepare([str(tmp_path / "a.txt")], tmp_path / "mine", SMALL, progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "changes",
    [
        {"val_fraction": 0.0},
        {"val_fraction": 1.0},
        {"encoding": "no-such-codec"},
        {"encoding": "utf-9"},
        {"encoding": "base64"},
        {"glob": ""},
        {"max_vocab": 1},
        {"min_count": 0},
        {"min_chars": 0},
        {"chunk_chars": 0},
        {"newlines": "crlf"},
        {"newlines": None},
    ],
)
def test_config_validation(changes):
    PrepareConfig(encoding="UTF-8")
    PrepareConfig(encoding="Latin-1")
    with pytest.raises(ValueError):
        PrepareConfig(**changes)


def _joined(paths, documents, chunk_chars=3, newlines=NEWLINES_LF):
    with open_corpus([str(p) for p in paths], "utf-8", "*") as corpus:
        return "".join(t for t, _ in text_chunks(corpus, chunk_chars, documents, newlines))


def _decoded_dir(out):
    corpus = load_prepared(out)
    return corpus.vocab.decode([*corpus.train.tolist(), *corpus.val.tolist()]), corpus


def test_each_file_is_a_document(tmp_path):
    (tmp_path / "a.txt").write_text("first\ndoc")
    (tmp_path / "b.txt").write_text("")  # no document
    (tmp_path / "c.txt").write_text("second\n")
    assert _joined([tmp_path], "file") == f"{SEP}first\ndoc{SEP}second\n"


@pytest.mark.parametrize("chunk_chars", [1, 2, 3, 100])
def test_each_nonempty_line_is_a_document(tmp_path, chunk_chars):
    (tmp_path / "a.txt").write_bytes(b"one\r\ntwo\n\n\r\nthree\rx\nlast")
    (tmp_path / "b.txt").write_bytes(b"next file\r")
    kept = _joined([tmp_path], "line", chunk_chars, NEWLINES_KEEP)
    assert kept == f"{SEP}one{SEP}two{SEP}three\rx{SEP}last{SEP}next file"
    joined = _joined([tmp_path], "line", chunk_chars)  # the lone "\r" ends a line too
    assert joined == f"{SEP}one{SEP}two{SEP}three{SEP}x{SEP}last{SEP}next file"


def test_separators_in_the_text_become_u_fffd(tmp_path):
    (tmp_path / "a.txt").write_text(f"a{SEP}b\nc")
    assert _joined([tmp_path / "a.txt"], "file") == f"{SEP}a\ufffdb\nc"
    assert _joined([tmp_path / "a.txt"], "line") == f"{SEP}a\ufffdb{SEP}c"


def test_unknown_mode_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    with (
        open_corpus([str(tmp_path / "a.txt")], "utf-8", "*") as corpus,
        pytest.raises(ValueError, match="documents must be one of"),
    ):
        text_chunks(corpus, 3, "page", NEWLINES_LF)
    with pytest.raises(ValueError, match="documents must be one of"):
        PrepareConfig(documents="page")


def test_prepare_records_the_separator(tmp_path):
    for name, text in [("a.txt", "ab\n"), ("b.txt", "ba\n"), ("c.txt", "abba\n")]:
        (tmp_path / name).write_text(text)
    config = PrepareConfig(min_chars=1, min_val_chars=1, chunk_chars=3, documents="file")
    meta = prepare([str(tmp_path / n) for n in ("a.txt", "b.txt", "c.txt")], tmp_path / "o", config)
    text, corpus = _decoded_dir(tmp_path / "o")
    assert text == f"{SEP}ab\n{SEP}ba\n{SEP}abba\n"
    assert corpus.vocab.separator == SEP and corpus.vocab.unknown is None
    assert (meta.documents, meta.document_count) == ("file", 3)
    assert corpus.meta["separator"] == SEP and corpus.meta["document_count"] == 3
    assert corpus.meta["vocab"]["separator"] == SEP


def test_a_vocabulary_cut_keeps_the_separator(tmp_path):
    # Two documents: the separator is the rarest character, yet survives both limits.
    (tmp_path / "a.txt").write_text("aaaaabbbbbcc\n")
    (tmp_path / "b.txt").write_text("aaaaabbbbbz\n")
    config = PrepareConfig(min_chars=1, min_val_chars=1, documents="file", min_count=3)
    prepare([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], tmp_path / "o", config)
    text, corpus = _decoded_dir(tmp_path / "o")
    assert corpus.vocab.chars == ("a", "b", SEP, "\ufffd")
    assert text == f"{SEP}aaaaabbbbb\ufffd\ufffd\ufffd{SEP}aaaaabbbbb\ufffd\ufffd"
    assert corpus.meta["unknown_count"] == 5
    config = PrepareConfig(min_chars=1, min_val_chars=1, documents="file", max_vocab=3)
    prepare([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], tmp_path / "o", config)
    assert load_prepared(tmp_path / "o").vocab.chars == ("a", SEP, "\ufffd")
    with pytest.raises(DataError, match="leaves no character"):
        config = PrepareConfig(min_chars=1, min_val_chars=1, documents="file", max_vocab=2)
        prepare([str(tmp_path / "a.txt")], tmp_path / "o", config)


def test_line_documents_report_input_bytes(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"ab\ncd\n")
    with open_corpus([str(tmp_path / "a.txt")], "utf-8", "*") as corpus:
        assert sum(n for _, n in line_documents(corpus, 4, NEWLINES_LF)) == 6


def test_the_separator_travels_into_checkpoints(tmp_path):
    (tmp_path / "lines.txt").write_text("the cat sat\non the mat\n" * 30)
    config = PrepareConfig(min_chars=1, min_val_chars=1, documents="line")
    prepare([str(tmp_path / "lines.txt")], tmp_path / "data", config)
    corpus = load_prepared(tmp_path / "data")
    train = TrainConfig(
        tmp_path / "data",
        tmp_path / "run",
        hidden_size=16,
        batch_size=2,
        seq_len=8,
        max_steps=2,
        threads=1,
        sample_length=5,
    )
    Trainer(train, corpus, progress=False).run()
    checkpoint = load_checkpoint(tmp_path / "run" / "best.safetensors")
    assert checkpoint.vocab.separator == SEP and checkpoint.vocab == corpus.vocab
    assert encode_stops(checkpoint.vocab, []) == ((checkpoint.vocab.encode(SEP)[0],),)
