"""Hostile checkpoints: every header field a file can lie about is refused by load_checkpoint
with a one-line CheckpointError, before tensors are read or a network is built."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, save_file

from model.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from model.checkpoint_header import (
    MAX_HEADER_BYTES,
    MAX_HIDDEN_SIZE,
    MAX_METADATA_DEPTH,
    MAX_NUM_LAYERS,
    MAX_PARAMETERS,
    MAX_VOCAB_SIZE,
    expected_weight_shapes,
)
from model.config import CELLS, ModelConfig
from model.network import CharRNN
from model.vocab import Vocabulary

ROOT = Path(__file__).resolve().parents[2]
VOCAB = Vocabulary.from_text("abc \n")
CONFIG = {"vocab_size": 5, "hidden_size": 8, "num_layers": 2, "dropout": 0.0, "cell": "lstm"}


def weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(**CONFIG))
    return {f"model.{k}": v.clone() for k, v in model.state_dict().items()}


def write(path: Path, tensors: dict[str, torch.Tensor] | None = None, **metadata: str) -> Path:
    """A checkpoint as save_checkpoint would write it, with any header entry replaced."""
    header = {
        "format": "charrnn-checkpoint",
        "version": "1",
        "model": json.dumps(CONFIG),
        "vocab": json.dumps(VOCAB.to_json()),
        "info": "{}",
        **metadata,
    }
    save_file(weights() if tensors is None else tensors, path, metadata=header)
    return path


def refused(path: Path, match: str) -> str:
    with pytest.raises(CheckpointError, match=match) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400 + len(str(path)), message
    return message


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def test_the_hand_made_file_loads(tmp_path):
    """The helper's file is a valid checkpoint: each refusal below is that one lie's."""
    loaded = load_checkpoint(write(tmp_path / "c.safetensors"))
    assert loaded.config == ModelConfig(**CONFIG) and loaded.vocab == VOCAB
    loaded.build_model()


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("num_layers", [1, 3])
def test_expected_shapes_are_the_networks_state_dict(cell, num_layers):
    config = ModelConfig(vocab_size=7, hidden_size=5, num_layers=num_layers, cell=cell)
    actual = {k: tuple(v.shape) for k, v in CharRNN(config).state_dict().items()}
    assert expected_weight_shapes(config) == actual


# --- size: the header alone must not decide how much is allocated ---------------------

PEAK_MEMORY = """
import resource, sys
from model.checkpoint import CheckpointError, load_checkpoint

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

load_checkpoint(sys.argv[1]).build_model()  # warm up: imports, allocator, a real load
before = peak_mb()
try:
    load_checkpoint(sys.argv[2]).build_model()
    outcome = "loaded"
except CheckpointError as error:
    outcome = str(error)
except Exception as error:
    outcome = f"{type(error).__name__} (not a CheckpointError)"
print(round(peak_mb() - before, 1))
print(outcome)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
@pytest.mark.parametrize(
    ("hidden_size", "reason"),
    [
        (2000, "do not fit"),  # within the caps (192 MB): the tensors' shapes give it away
        (4000, "parameters exceeds"),  # 740 MB as a network
    ],
)
def test_a_small_file_declaring_a_huge_network_allocates_nothing(tmp_path, hidden_size, reason):
    valid = write(tmp_path / "valid.safetensors")
    # A file of a few KB: the tiny network's tensors under a config of a huge one.
    lying = write(
        tmp_path / "lying.safetensors", model=json.dumps({**CONFIG, "hidden_size": hidden_size})
    )
    assert lying.stat().st_size < 8192
    result = subprocess.run(
        [sys.executable, "-c", PEAK_MEMORY, str(valid), str(lying)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    growth_mb, outcome = result.stdout.strip().split("\n")
    assert float(growth_mb) < 32, f"loading grew the peak RSS by {growth_mb} MB ({outcome})"
    assert reason in outcome


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("hidden_size", MAX_HIDDEN_SIZE + 1, "hidden_size .* exceeds"),
        ("hidden_size", 20000, "hidden_size .* exceeds"),
        ("num_layers", MAX_NUM_LAYERS + 1, "num_layers .* exceeds"),
        ("vocab_size", MAX_VOCAB_SIZE + 1, "vocab_size .* exceeds"),
    ],
)
def test_config_beyond_the_caps_is_refused(tmp_path, field, value, match):
    refused(write(tmp_path / "c.safetensors", model=json.dumps({**CONFIG, field: value})), match)


def test_parameter_cap_counts_the_whole_network(tmp_path):
    # Each dimension within its cap; together past the parameter cap.
    config = {**CONFIG, "hidden_size": MAX_HIDDEN_SIZE, "num_layers": MAX_NUM_LAYERS}
    shapes = expected_weight_shapes(ModelConfig(**config))
    assert sum(math.prod(shape) for shape in shapes.values()) > MAX_PARAMETERS
    refused(write(tmp_path / "c.safetensors", model=json.dumps(config)), "parameters exceeds")


def test_oversized_header_is_refused_before_it_is_parsed(tmp_path):
    path = write(tmp_path / "c.safetensors", info=json.dumps({"pad": "x" * MAX_HEADER_BYTES}))
    refused(path, "header of .* bytes exceeds")


# --- tensors: exactly the weights the config implies ------------------------------------


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda t: t.pop("model.head.bias"), "missing weight 'model.head.bias'"),
        (lambda t: t.update({"model.extra": torch.zeros(2)}), "unexpected tensor"),
        (lambda t: t.update({"optimizer.x": torch.zeros(2)}), "unexpected tensor"),
        (
            lambda t: t.update({"model.head.weight": t["model.head.weight"].t().contiguous()}),
            r"do not fit.*head\.weight has shape \(8, 5\)",
        ),
        (
            lambda t: t.update({"model.rnn.weight_hh_l1": torch.zeros(32, 9)}),
            "do not fit",
        ),
        (
            lambda t: t.update({"model.head.weight": torch.ones(5, 8, dtype=torch.int32)}),
            "dtype I32; weights must be floating point",
        ),
        (
            lambda t: t.update({"model.head.bias": torch.ones(5, dtype=torch.bool)}),
            "dtype BOOL",
        ),
    ],
    ids=["missing", "unexpected", "other-namespace", "transposed", "wrong-width", "int", "bool"],
)
def test_tensors_must_match_the_config(tmp_path, change, match):
    tensors = weights()
    change(tensors)
    refused(write(tmp_path / "c.safetensors", tensors), match)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_are_refused(tmp_path, bad):
    tensors = weights()
    tensors["model.rnn.weight_hh_l0"][3, 1] = bad
    refused(write(tmp_path / "c.safetensors", tensors), "rnn.weight_hh_l0 holds NaN or infinite")


def test_half_precision_weights_load(tmp_path):
    tensors = {k: v.half() for k, v in weights().items()}
    load_checkpoint(write(tmp_path / "c.safetensors", tensors)).build_model()


# --- metadata: types, nesting, vocabulary -----------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hidden_size", "8"),
        ("hidden_size", 8.0),
        ("hidden_size", 2.5),
        ("hidden_size", True),
        ("num_layers", True),
        ("vocab_size", [5]),
        ("dropout", "0.5"),
        ("dropout", False),
        ("cell", 5),
        ("cell", "transformer"),
    ],
)
def test_config_values_of_the_wrong_type_are_refused(tmp_path, field, value):
    path = write(tmp_path / "c.safetensors", model=json.dumps({**CONFIG, field: value}))
    refused(path, f"model {field} must be ")


@pytest.mark.parametrize("model", ["[5, 8]", '"lstm"', "null", "{"])
def test_config_that_is_not_an_object_is_refused(tmp_path, model):
    refused(write(tmp_path / "c.safetensors", model=model), "'model' must be a JSON object|JSON")


@pytest.mark.parametrize("info", ["[]", '"notes"', "5", "null"])
def test_info_must_be_an_object(tmp_path, info):
    refused(write(tmp_path / "c.safetensors", info=info), "'info' must be a JSON object")


@pytest.mark.parametrize("entry", ["model", "vocab", "info", "state"])
@pytest.mark.parametrize("depth", [MAX_METADATA_DEPTH + 1, 100_000])
def test_deeply_nested_metadata_is_refused(tmp_path, entry, depth):
    path = write(tmp_path / "c.safetensors", **{entry: nested(depth)})
    refused(path, f"metadata '{entry}' is nested deeper than {MAX_METADATA_DEPTH}")


def test_nesting_within_the_cap_is_kept(tmp_path):
    info = json.dumps({"notes": json.loads(nested(MAX_METADATA_DEPTH - 2))})
    loaded = load_checkpoint(write(tmp_path / "c.safetensors", info=info))
    assert json.dumps(loaded.info) == info


@pytest.mark.parametrize(
    ("chars", "match"),
    [
        (["a", "\ud800", "c", " ", "\n"], "lone surrogate"),
        (["a", "b", "\udfff", " ", "\n"], "lone surrogate"),
        (["a", "a", "c", " ", "\n"], "duplicate characters"),
        (["a", "b", "c", " ", 10], "every entry must be a string"),
        (["a", "bc", "d", " ", "\n"], "exactly one character"),
    ],
)
def test_vocabulary_must_be_unique_real_characters(tmp_path, chars, match):
    path = write(tmp_path / "c.safetensors", vocab=json.dumps({"chars": chars}))
    refused(path, match)


@pytest.mark.parametrize("vocab", ['["a"]', '{"chars": "abc \\n"}', "null"])
def test_vocabulary_of_the_wrong_shape_is_refused(tmp_path, vocab):
    refused(write(tmp_path / "c.safetensors", vocab=vocab), "damaged vocabulary")


# --- training state: the skeleton may only name the file's own state tensors -------------


def saved_with_state(path: Path) -> Path:
    model = CharRNN(ModelConfig(**CONFIG))
    state = {"step": 3, "rng": torch.get_rng_state(), "hidden": model.init_hidden(2)}
    save_checkpoint(Checkpoint.from_model(model, VOCAB, training_state=state), path)
    return path


@pytest.mark.parametrize(
    "skeleton",
    [
        {"__tensor__": "state.missing"},
        {"rng": {"__tensor__": "model.head.weight"}},  # would alias a weight
        [{"__tensor__": 5}],
    ],
)
def test_state_naming_a_tensor_the_file_lacks_is_refused(tmp_path, skeleton):
    path = saved_with_state(tmp_path / "c.safetensors")
    with open(path, "rb") as handle:
        original = handle.read()
    assert load_checkpoint(path).training_state["step"] == 3
    tensors = load(original)
    write(path, tensors, state=json.dumps(skeleton))
    refused(path, "training state refers to tensor .*, which is not a state tensor")


@pytest.mark.parametrize("skeleton", [{"__dict__": 5}, {"__dict__": [[{"__dict__": []}, 1]]}])
def test_state_of_the_wrong_shape_is_refused(tmp_path, skeleton):
    refused(write(tmp_path / "c.safetensors", state=json.dumps(skeleton)), "damaged training state")
