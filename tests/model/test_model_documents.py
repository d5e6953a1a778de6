from model.decoding.params import MAX_STOPS, encode_stops
from model.documents import document_prime
from model.vocab import Vocabulary

SEP = "\u241e"
DOCS = Vocabulary(("a", "b", " ", SEP), separator=SEP)
PLAIN = Vocabulary(("a", "b", " ", SEP))  # the same character, but no separator declared


def test_a_model_of_documents_stops_at_the_separator():
    sep_id = DOCS.encode(SEP)[0]
    assert encode_stops(DOCS, []) == ((sep_id,),)
    assert encode_stops(DOCS, ["ab"]) == (tuple(DOCS.encode("ab")), (sep_id,))
    assert encode_stops(DOCS, [SEP]) == ((sep_id,),)  # not twice
    assert len(encode_stops(DOCS, ["a"] * MAX_STOPS)) == MAX_STOPS  # no room: the request's


def test_no_separator_in_the_vocabulary_never_ends_a_document():
    assert encode_stops(PLAIN, []) == ()


def test_document_prime_starts_a_document():
    assert document_prime("ab", DOCS) == f"{SEP}ab"
    assert document_prime("", DOCS) == SEP
    assert document_prime(f"{SEP}ab", DOCS) == f"{SEP}ab"
    assert document_prime("ab", PLAIN) == "ab"
