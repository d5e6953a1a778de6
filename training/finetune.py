"""Pipeline stage 4, training, from a trained model: fine-tuning (`train DATA --init-from
CHECKPOINT`). The run starts from the checkpoint's weights with a fresh optimizer, schedule
and run directory (unlike `--resume`, which continues a run exactly), and keeps the
checkpoint's architecture.

The vocabulary. The model keeps its own characters with their ids and appends the ones the
new data brings (`merge_vocabularies`): the data stays prepared with its own sorted
vocabulary, and the batches map its ids to the model's as they read them. Characters of the
model that the data lacks stay, so the checkpoint still knows them.

The new characters' weights: a new column of the first layer's input weights, zero, only
matters when that character is the input; a new row of the output layer, zero weights and a
bias of NEW_CHAR_BIAS, gives it a logit of -30 whatever the state. Its share of the softmax
is then e^-30 ≈ 1e-13 of the old characters' (their log-sum-exp is above 0.7 on the shipped
model), far below float32's precision: at step 0 the old characters' log-probabilities are
unchanged. Not -inf or -1e4: AdamW moves a bias by about lr a step (and weight decay spares
biases), so a new character is learnt through its zero-started weights, whose logit climbs
~0.2 a step at lr 3e-3; from -30 that takes a few hundred steps, from -1e4 never.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from model.checkpoint import Checkpoint, load_checkpoint
from model.network import CharRNN
from model.vocab import Vocabulary
from training.recipe import ARCHITECTURE, TrainConfig

NEW_CHAR_BIAS = -30.0  # the output bias of a character new to the model (see above)


def fine_tune_config(
    checkpoint: Checkpoint, path: Path, data_dir: Path, out_dir: Path, **settings: Any
) -> TrainConfig:
    """The config of a run that fine-tunes `checkpoint`, read from `path`: its architecture
    and, unless `settings` sets one, its dropout. Raises ValueError naming the settings that
    would change the architecture."""
    network = {name: getattr(checkpoint.config, name) for name in (*ARCHITECTURE, "dropout")}
    clashing = [n for n in ARCHITECTURE if n in settings and settings[n] != network[n]]
    if clashing:
        raise ValueError(
            f"{', '.join(clashing)}: a fine-tuned run keeps its checkpoint's network "
            f"({', '.join(f'{n} {network[n]!r}' for n in ARCHITECTURE)}); leave it out"
        )
    return TrainConfig(data_dir, out_dir, init_from=path, **(network | settings))


def load_init(config: TrainConfig) -> Checkpoint:
    """The checkpoint a fine-tuned run starts from, `config.init_from`. Raises
    CheckpointError for a missing or unreadable file, ValueError when its architecture is
    not the config's."""
    checkpoint = load_checkpoint(config.init_from)
    for name in ARCHITECTURE:
        have, want = getattr(checkpoint.config, name), getattr(config, name)
        if have != want:
            raise ValueError(
                f"{config.init_from.name} has {name} {have!r}, the run asks for {want!r}: "
                "a fine-tuned run keeps its checkpoint's network"
            )
    return checkpoint


def merge_vocabularies(model: Vocabulary, data: Vocabulary) -> tuple[Vocabulary, np.ndarray | None]:
    """The vocabulary a model of vocabulary `model` gets to train on `data`, and the table
    that maps the data's ids to it: (len(data),) int64, None when it is the data's own.

    It is `model`'s characters in their order, so every id the model knows keeps its
    meaning, then the characters of `data` that `model` lacks, in `data`'s order (by code
    point). Its unknown symbol and separator are `model`'s, else `data`'s. Raises
    ValueError when the two cannot be one vocabulary (one's separator is the other's
    unknown symbol)."""
    chars = model.chars + tuple(c for c in data.chars if c not in model)
    merged = Vocabulary(
        chars,
        unknown=model.unknown or data.unknown,
        separator=model.separator or data.separator,
    )
    if merged == data:
        return data, None
    return merged, np.array(merged.encode("".join(data.chars)), dtype=np.int64)


def fine_tune_weights(checkpoint: Checkpoint, vocab: Vocabulary) -> dict[str, Tensor]:
    """`checkpoint`'s weights for a network of `vocab`, the checkpoint's vocabulary with new
    characters appended (merge_vocabularies). Every tensor with a vocabulary-sized axis (the
    first layer's input weights (G·H, V), the output layer's (V, H) and bias (V,)) grows
    along it: new entries zero, the output bias's NEW_CHAR_BIAS. Raises ValueError when
    `vocab` does not start with the checkpoint's characters."""
    old, new = len(checkpoint.vocab), len(vocab)
    if vocab.chars[:old] != checkpoint.vocab.chars:
        raise ValueError("the vocabulary must start with the checkpoint's characters, in order")
    with torch.device("meta"):  # the shapes only: no memory, no draw from the generator
        shapes = CharRNN(replace(checkpoint.config, vocab_size=new)).state_dict()
    weights = {}
    for name, tensor in checkpoint.weights.items():
        shape = shapes[name].shape
        if tensor.shape == shape:
            weights[name] = tensor.clone()
            continue
        axis = next(i for i, (a, b) in enumerate(zip(tensor.shape, shape, strict=True)) if a != b)
        grown = tensor.new_zeros(shape)
        grown.narrow(axis, 0, old).copy_(tensor)
        if tensor.dim() == 1:  # the output layer's bias
            grown[old:] = NEW_CHAR_BIAS
        weights[name] = grown
    return weights
