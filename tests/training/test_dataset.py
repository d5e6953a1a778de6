import json

import numpy as np
import pytest

from model.checkpoint_header import MAX_VOCAB_SIZE
from model.vocab import Vocabulary
from training.dataset import PreparedMeta, choose_vocabulary, load_prepared
from training.prepare import PrepareConfig, prepare
from training.sources import DataError

SMALL = PrepareConfig(min_chars=1, min_val_chars=1, chunk_chars=7)


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture
def prepared(tmp_path):
    out = tmp_path / "out"
    prepare([_write(tmp_path / "t.txt", "some text to load\n")], out, SMALL, progress=False)
    return out


def _edit_meta(path, **changes):
    meta = json.loads((path / "meta.json").read_text())
    meta.update(changes)
    (path / "meta.json").write_text(json.dumps(meta))


def test_load_errors(prepared, tmp_path):
    with pytest.raises(DataError, match="nowhere: no prepared-data directory"):
        load_prepared(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"no meta\.json"):
        load_prepared(tmp_path)
    (prepared / "train.bin").write_bytes(b"\0" * 3)
    with pytest.raises(DataError, match=r"train\.bin: 3 bytes, but meta.json says 16 ids"):
        load_prepared(prepared)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format": "something-else"}, "not a charrnn-data file"),
        ({"version": 2}, "format version 2 is not supported"),
        ({"dtype": "uint16"}, "malformed.*does not fit"),
        ({"vocab": {"chars": "abc"}}, "malformed"),
        ({"train_size": None}, "malformed"),
        ({"source_chars": 1}, "malformed.*source_chars"),
        ({"newlines": "crlf"}, "malformed.*unknown newlines mode 'crlf'"),
    ],
)
def test_load_rejects_other_meta(prepared, changes, message):
    _edit_meta(prepared, **changes)
    with pytest.raises(DataError, match=message):
        load_prepared(prepared)


def test_load_rejects_garbled_meta(prepared):
    (prepared / "meta.json").write_text('{"format": "charrnn-data", ')
    with pytest.raises(DataError, match=r"meta\.json: not valid JSON"):
        load_prepared(prepared)


def test_meta_json_round_trip():
    meta = PreparedMeta(Vocabulary(("a", "\ufffd"), unknown="\ufffd"), 9, 1, "x", 0.1, 4)
    assert PreparedMeta.from_json(meta.to_json()) == meta


def test_data_prepared_before_newline_modes_kept_its_line_endings(prepared):
    meta = json.loads((prepared / "meta.json").read_text())
    del meta["newlines"]
    (prepared / "meta.json").write_text(json.dumps(meta))
    assert PreparedMeta.from_json(meta).newlines == "keep"
    assert load_prepared(prepared).meta.get("newlines") is None  # meta.json as written


def test_more_characters_than_a_checkpoint_holds_need_max_vocab():
    counts = np.zeros(0x110000, np.int64)
    counts[0x4E00 : 0x4E00 + MAX_VOCAB_SIZE + 10] = 1  # CJK and beyond: 65,546 characters
    with pytest.raises(DataError, match="--max-vocab"):
        choose_vocabulary(counts, "big.txt")
    vocab, mapped = choose_vocabulary(counts, "big.txt", max_vocab=1000)
    assert len(vocab) == 1000 and mapped == MAX_VOCAB_SIZE + 10 - 999 - 1  # and U+FFFD
