"""What a checkpoint's header may say, checked before any tensor is read or network built.

A safetensors header is JSON that declares every tensor's name, dtype and shape, plus our
metadata (model config, vocabulary, info, training-state skeleton). All of it is
attacker-controlled in a downloaded file, so model/checkpoint.py trusts none of it until
these checks pass: the metadata's JSON has the right types and bounded nesting, the config
lies within the size caps, and the declared tensors are exactly the weights that config
implies, with those shapes, in a floating-point dtype. A 1 KB file that declares a
20,000-wide network is refused here, without allocating it.
"""

from __future__ import annotations

import json
import math
import typing
from dataclasses import fields
from typing import Any

from model.config import ModelConfig
from model.vocab import Vocabulary

# Size caps. The shipped model (2 × 256 LSTM, 71 characters) has 0.9 M parameters and a
# 2 KB header; these leave room for far bigger char-RNNs while bounding what a file can make
# the loader allocate (MAX_PARAMETERS × 4 bytes as float32).
MAX_HEADER_BYTES = 16 * 2**20  # safetensors' JSON header, metadata included
MAX_HIDDEN_SIZE = 4096
MAX_NUM_LAYERS = 16
MAX_VOCAB_SIZE = 65536
MAX_PARAMETERS = 100_000_000  # 400 MB of float32 weights
MAX_METADATA_DEPTH = 64  # JSON nesting of one metadata entry; a training state needs ~10
# The network's weights must be floating point; training-state tensors may be of any dtype
# (the RNG state is uint8, counters int64).
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
TENSOR_KEY = "__tensor__"  # the training-state skeleton's stand-in for a tensor
_SHOWN_CHARS = 80  # of a hostile value quoted in a message


class HeaderError(ValueError):
    """A header that fails a check; the message is one line (the loader adds the path)."""


class TensorHeader(typing.Protocol):
    """What safetensors' `safe_open(...).get_slice(name)` offers without reading data."""

    def get_shape(self) -> list[int]: ...
    def get_dtype(self) -> str: ...


def expected_weight_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The network's state dict as {name: shape}, from the config alone (no allocation).

    PyTorch's nn.LSTM/GRU/RNN layout: G gate blocks of H rows (G = 4, 3, 1); layer 0 reads
    the one-hot input (V wide), each layer above it the one below (H wide); then the
    Linear(H, V) head."""
    gates = config.gate_count * config.hidden_size
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in range(config.num_layers):
        width = config.vocab_size if layer == 0 else config.hidden_size
        shapes[f"rnn.weight_ih_l{layer}"] = (gates, width)
        shapes[f"rnn.weight_hh_l{layer}"] = (gates, config.hidden_size)
        shapes[f"rnn.bias_ih_l{layer}"] = (gates,)
        shapes[f"rnn.bias_hh_l{layer}"] = (gates,)
    shapes["head.weight"] = (config.vocab_size, config.hidden_size)
    shapes["head.bias"] = (config.vocab_size,)
    return shapes


def parse_metadata(
    metadata: dict[str, str],
) -> tuple[ModelConfig, Vocabulary, dict[str, Any], Any]:
    """(config, vocabulary, info, training-state skeleton or None), each checked."""
    for key in ("model", "vocab"):
        if key not in metadata:
            raise HeaderError(f"damaged header: no '{key}' entry")
    config = model_config(metadata_json(metadata, "model"))
    vocab = vocabulary(metadata_json(metadata, "vocab"))
    if config.vocab_size != len(vocab):
        raise HeaderError(f"model vocab_size {config.vocab_size} != vocabulary size {len(vocab)}")
    info = metadata_json(metadata, "info") if "info" in metadata else {}
    if not isinstance(info, dict):
        raise HeaderError(f"'info' must be a JSON object, got {_json_type(info)}")
    skeleton = metadata_json(metadata, "state") if "state" in metadata else None
    return config, vocab, info, skeleton


def metadata_json(metadata: dict[str, str], key: str) -> Any:
    """One metadata entry's JSON, nested at most MAX_METADATA_DEPTH deep (deeper JSON would
    exhaust Python's stack in json.loads or in whatever walks it next)."""
    too_deep = HeaderError(f"metadata '{key}' is nested deeper than {MAX_METADATA_DEPTH} levels")
    try:
        value = json.loads(metadata[key])
    except RecursionError:
        raise too_deep from None
    except ValueError as error:
        raise HeaderError(f"metadata '{key}' is not valid JSON: {error}") from None
    stack = [(value, 1)]  # depth-first with an explicit stack: the check must not recurse
    while stack:
        node, depth = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            raise too_deep
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
    return value


def model_config(data: Any) -> ModelConfig:
    """ModelConfig from JSON whose values have their declared types (an integer field takes
    no bool, float or string), within the size caps."""
    if not isinstance(data, dict):
        raise HeaderError(f"'model' must be a JSON object, got {_json_type(data)}")
    hints = typing.get_type_hints(ModelConfig)
    for spec in fields(ModelConfig):
        if spec.name in data and not _has_type(data[spec.name], hints[spec.name]):
            raise HeaderError(
                f"model {spec.name} must be {_type_name(hints[spec.name])}, "
                f"got {_shown(data[spec.name])}"
            )
    try:
        config = ModelConfig.from_json(data)
    except (ValueError, TypeError) as error:
        raise HeaderError(f"damaged model config: {error}") from None
    for name, cap in (
        ("hidden_size", MAX_HIDDEN_SIZE),
        ("num_layers", MAX_NUM_LAYERS),
        ("vocab_size", MAX_VOCAB_SIZE),
    ):
        if getattr(config, name) > cap:
            raise HeaderError(f"model {name} {getattr(config, name)} exceeds the cap of {cap}")
    parameters = sum(math.prod(shape) for shape in expected_weight_shapes(config).values())
    if parameters > MAX_PARAMETERS:
        raise HeaderError(f"model of {parameters} parameters exceeds the cap of {MAX_PARAMETERS}")
    return config


def vocabulary(data: Any) -> Vocabulary:
    """The Vocabulary, its characters real (no lone surrogates), unique and within the cap."""
    chars = data.get("chars") if isinstance(data, dict) else None
    if not isinstance(chars, list):
        raise HeaderError("damaged vocabulary: it must be an object with a 'chars' list")
    if len(chars) > MAX_VOCAB_SIZE:
        raise HeaderError(f"vocabulary of {len(chars)} entries exceeds the cap of {MAX_VOCAB_SIZE}")
    strings = [c for c in chars if isinstance(c, str)]
    if len(strings) < len(chars):
        raise HeaderError("damaged vocabulary: every entry must be a string")
    if any(0xD800 <= ord(unit) <= 0xDFFF for c in strings for unit in c):
        raise HeaderError("vocabulary holds a lone surrogate, which is not a character")
    if len(set(strings)) != len(strings):
        raise HeaderError("vocabulary holds duplicate characters")
    try:
        return Vocabulary.from_json(data)
    except (ValueError, TypeError) as error:
        raise HeaderError(f"damaged vocabulary: {error}") from None


def check_tensors(
    names: set[str], get_slice: typing.Callable[[str], TensorHeader], config: ModelConfig
) -> None:
    """The file holds exactly the weights `config` implies (plus training-state tensors),
    each of that shape and a floating-point dtype. `get_slice` is safetensors' header view
    of one tensor: nothing is read."""
    expected = {f"model.{name}": shape for name, shape in expected_weight_shapes(config).items()}
    stray = sorted(n for n in names if n not in expected and not n.startswith("state."))
    if stray:
        raise HeaderError(f"unexpected tensor {_shown(stray[0])} ({len(stray)} in all)")
    missing = sorted(expected.keys() - names)
    if missing:
        raise HeaderError(f"missing weight {missing[0]!r} ({len(missing)} in all)")
    for name, shape in expected.items():
        tensor = get_slice(name)
        actual = tuple(tensor.get_shape())
        if actual != shape:
            # "do not fit": the same words as a load_state_dict mismatch, for callers' logs
            raise HeaderError(
                f"weights do not fit the model config: {name} has shape {actual}, "
                f"the config needs {shape}"
            )
        if tensor.get_dtype() not in FLOAT_DTYPES:
            raise HeaderError(
                f"weight {name} has dtype {tensor.get_dtype()}; weights must be floating "
                f"point ({', '.join(sorted(FLOAT_DTYPES))})"
            )


def check_state_references(skeleton: Any, names: set[str]) -> None:
    """Every {"__tensor__": name} of the training-state skeleton names a state tensor of the
    file (never a weight: the training state must not alias the model)."""
    stack = [skeleton]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if TENSOR_KEY in node:
                name = node[TENSOR_KEY]
                if not (isinstance(name, str) and name.startswith("state.") and name in names):
                    raise HeaderError(
                        f"training state refers to tensor {_shown(name)}, "
                        "which is not a state tensor of the file"
                    )
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _has_type(value: Any, hint: Any) -> bool:
    if typing.get_origin(hint) is typing.Literal:
        return isinstance(value, str) and value in typing.get_args(hint)
    if hint is float:
        return type(value) in (int, float) and math.isfinite(value)
    return type(value) is hint  # exact: bool is an int subclass, and no int field takes it


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    return {int: "an integer", float: "a finite number", str: "a string"}.get(hint, str(hint))


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    return names.get(type(value), "null" if value is None else "a number")


def _shown(value: Any) -> str:
    """A hostile value in a one-line message: its JSON, cut short."""
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."
