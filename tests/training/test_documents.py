import pytest

from model.checkpoint import load_checkpoint
from model.documents import truncate_at_separator
from training.config import TrainConfig
from training.data import PrepareConfig, load_prepared, prepare
from training.documents import SEPARATOR, line_documents, text_chunks
from training.errors import DataError
from training.loop import Trainer
from training.sources import open_corpus

SEP = SEPARATOR
SMALL = PrepareConfig(min_chars=1, min_val_chars=1, chunk_chars=3)  # chunks cut lines


def _joined(paths, documents, chunk_chars=3):
    with open_corpus([str(p) for p in paths], "utf-8", "*") as corpus:
        return "".join(t for t, _ in text_chunks(corpus, chunk_chars, documents))


def _decoded(out):
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
    joined = _joined([tmp_path], "line", chunk_chars)
    assert joined == f"{SEP}one{SEP}two{SEP}three\rx{SEP}last{SEP}next file"


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
        text_chunks(corpus, 3, "page")
    with pytest.raises(ValueError, match="documents must be one of"):
        PrepareConfig(documents="page")


def test_prepare_records_the_separator(tmp_path):
    for name, text in [("a.txt", "ab\n"), ("b.txt", "ba\n"), ("c.txt", "abba\n")]:
        (tmp_path / name).write_text(text)
    config = PrepareConfig(min_chars=1, min_val_chars=1, chunk_chars=3, documents="file")
    meta = prepare([str(tmp_path / n) for n in ("a.txt", "b.txt", "c.txt")], tmp_path / "o", config)
    text, corpus = _decoded(tmp_path / "o")
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
    text, corpus = _decoded(tmp_path / "o")
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
        assert sum(n for _, n in line_documents(corpus, 4)) == 6


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
    text, ended = truncate_at_separator(f"on the{SEP}cat", checkpoint.vocab)
    assert (text, ended) == ("on the", True)
