from model.documents import document_prime, truncate_at_separator
from model.vocab import Vocabulary

SEP = "\u241e"
DOCS = Vocabulary(("a", "b", " ", SEP), separator=SEP)
PLAIN = Vocabulary(("a", "b", " ", SEP))  # the same character, but no separator declared


def test_truncate_at_the_first_separator():
    assert truncate_at_separator(f"ab a{SEP}ba{SEP}b", DOCS) == ("ab a", True)
    assert truncate_at_separator(f"{SEP}ab", DOCS) == ("", True)
    assert truncate_at_separator("ab ab", DOCS) == ("ab ab", False)
    assert truncate_at_separator("", DOCS) == ("", False)


def test_no_separator_in_the_vocabulary_never_ends_a_document():
    assert truncate_at_separator(f"ab{SEP}ba", PLAIN) == (f"ab{SEP}ba", False)


def test_document_prime_starts_a_document():
    assert document_prime("ab", DOCS) == f"{SEP}ab"
    assert document_prime("", DOCS) == SEP
    assert document_prime(f"{SEP}ab", DOCS) == f"{SEP}ab"
    assert document_prime("ab", PLAIN) == "ab"
