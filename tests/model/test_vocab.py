import numpy as np
import pytest

from model.vocab import OutOfVocabularyError, Vocabulary


def test_sorted_unique_and_round_trip():
    vocab = Vocabulary.from_text("hello, world\n")
    assert vocab.chars == tuple(sorted(set("hello, world\n")))
    assert vocab.decode(vocab.encode("world")) == "world"


def test_order_does_not_depend_on_the_corpus_order():
    assert Vocabulary.from_text("abc") == Vocabulary.from_text("cba")


def test_unknown_characters_are_listed():
    vocab = Vocabulary.from_text("abc")
    with pytest.raises(OutOfVocabularyError) as error:
        vocab.encode("abxyzx")
    assert error.value.missing == ["x", "y", "z"]
    assert "'x'" in str(error.value) and "'z'" in str(error.value)


def test_skip_unknown_drops_them():
    assert Vocabulary.from_text("abc").encode("axbyc", skip_unknown=True) == [0, 1, 2]


def test_unknown_symbol_absorbs_unknown_characters():
    vocab = Vocabulary(("a", "b", "\ufffd"), unknown="\ufffd")
    assert vocab.encode("azb") == [0, 2, 1]


def test_smallest_id_dtype():
    assert Vocabulary.from_text("ab").id_dtype == np.uint8
    assert Vocabulary(tuple(chr(0x100 + i) for i in range(300))).id_dtype == np.uint16


def test_json_round_trip():
    vocab = Vocabulary(("a", "\n", "\ufffd"), unknown="\ufffd")
    assert Vocabulary.from_json(vocab.to_json()) == vocab


@pytest.mark.parametrize("chars", [(), ("a", "a"), ("ab",)])
def test_invalid_vocabularies(chars):
    with pytest.raises(ValueError):
        Vocabulary(chars)


def test_separator_round_trip_and_checks():
    vocab = Vocabulary(("a", "\u241e", "\ufffd"), unknown="\ufffd", separator="\u241e")
    assert Vocabulary.from_json(vocab.to_json()) == vocab
    assert vocab.to_json()["separator"] == "\u241e"
    assert Vocabulary.from_json({"chars": ["a"]}).separator is None  # older files
    assert vocab != Vocabulary(vocab.chars, unknown="\ufffd")
    with pytest.raises(ValueError, match="separator must be one of"):
        Vocabulary(("a",), separator="\u241e")
    with pytest.raises(ValueError, match="cannot also be the unknown"):
        Vocabulary(("a", "\ufffd"), unknown="\ufffd", separator="\ufffd")
