"""Documents in generated text: a model trained on data prepared with `--documents` or
`--doc-per-line` writes its vocabulary's separator character where a document ends (the
same character stands before every document in the training text).

    training text   ␞first document␞second document␞third ...
    a sample        "and so it ended.␞..."  →  "and so it ended." (finish_reason "stop": the
                    separator is one of the request's stop strings, model/decoding/params.py)
"""

from __future__ import annotations

from model.vocab import Vocabulary


def document_prime(prime: str, vocab: Vocabulary) -> str:
    """The prime that makes a document-trained model begin a new document with `prime`:
    the separator in front of it (what the model saw before every document). Unchanged
    for a vocabulary without a separator, or a prime that already starts with it."""
    if vocab.separator is None or prime.startswith(vocab.separator):
        return prime
    return vocab.separator + prime
