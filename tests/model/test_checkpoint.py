import os
import pickle

import pytest
import torch

from model.checkpoint import (
    Checkpoint,
    CheckpointError,
    flatten_tensors,
    load_checkpoint,
    save_checkpoint,
    unflatten_tensors,
)
from model.config import ModelConfig
from model.network import CharRNN
from model.vocab import Vocabulary


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    vocab = Vocabulary.from_text("abc \n")
    return CharRNN(ModelConfig(vocab_size=len(vocab), hidden_size=8)), vocab


def test_round_trip_weights_config_vocab_info(tmp_path, tiny):
    model, vocab = tiny
    path = tmp_path / "c.safetensors"
    save_checkpoint(Checkpoint.from_model(model, vocab, {"val_loss": 1.25, "corpus": "x"}), path)
    loaded = load_checkpoint(path)
    assert loaded.config == model.config and loaded.vocab == vocab
    assert loaded.info == {"val_loss": 1.25, "corpus": "x"}
    assert loaded.training_state is None
    rebuilt = loaded.build_model()
    for name, tensor in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], tensor)


def test_training_state_round_trip(tmp_path, tiny):
    model, vocab = tiny
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.tensor([[0, 1, 2]]))[0].sum().backward()
    optimizer.step()
    state = {
        "optimizer": optimizer.state_dict(),
        "rng": torch.get_rng_state(),
        "step": 7,
        "hidden": model.init_hidden(2),
        "position": [1, 2],
    }
    path = tmp_path / "c.safetensors"
    save_checkpoint(Checkpoint.from_model(model, vocab, training_state=state), path)
    restored = load_checkpoint(path).training_state
    assert restored["step"] == 7 and restored["position"] == [1, 2]
    assert torch.equal(restored["rng"], state["rng"])
    assert isinstance(restored["hidden"], tuple)
    fresh = torch.optim.AdamW(model.parameters())
    fresh.load_state_dict(restored["optimizer"])
    for key, value in optimizer.state_dict()["state"][0].items():
        assert torch.equal(fresh.state_dict()["state"][0][key], value)


def test_flatten_keeps_key_types():
    skeleton, tensors = flatten_tensors({0: {"a": torch.ones(2)}, "b": (1, "x")}, "s")
    back = unflatten_tensors(skeleton, tensors)
    assert list(back) == [0, "b"] and back["b"] == (1, "x")
    assert torch.equal(back[0]["a"], torch.ones(2))


def test_pickle_files_are_refused_without_unpickling(tmp_path):
    torch_file = tmp_path / "model.pt"
    torch.save({"x": torch.ones(1)}, torch_file)
    raw_pickle = tmp_path / "model.pkl"
    raw_pickle.write_bytes(pickle.dumps({"x": 1}))
    for path in (torch_file, raw_pickle):
        with pytest.raises(CheckpointError, match="pickle"):
            load_checkpoint(path)


def test_truncated_file_is_a_clear_error(tmp_path, tiny):
    model, vocab = tiny
    path = tmp_path / "c.safetensors"
    save_checkpoint(Checkpoint.from_model(model, vocab), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


def test_unknown_version_is_a_clear_error(tmp_path, tiny, monkeypatch):
    model, vocab = tiny
    path = tmp_path / "c.safetensors"
    monkeypatch.setattr("model.checkpoint.FORMAT_VERSION", 99)
    save_checkpoint(Checkpoint.from_model(model, vocab), path)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_save_is_atomic_on_failure(tmp_path, tiny, monkeypatch):
    model, vocab = tiny
    path = tmp_path / "c.safetensors"
    save_checkpoint(Checkpoint.from_model(model, vocab, {"v": 1}), path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("model.checkpoint.save_file", crash)
    with pytest.raises(OSError):
        save_checkpoint(Checkpoint.from_model(model, vocab, {"v": 2}), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temp file left


def test_loads_onto_requested_device(tmp_path, tiny):
    model, vocab = tiny
    path = tmp_path / "c.safetensors"
    save_checkpoint(Checkpoint.from_model(model, vocab), path)
    assert load_checkpoint(path, device="cpu").build_model("cpu").head.weight.device.type == "cpu"


def test_saved_file_is_readable_like_any_new_file(tmp_path, tiny):
    model, vocab = tiny
    path = tmp_path / "c.safetensors"
    save_checkpoint(Checkpoint.from_model(model, vocab), path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("first_bytes", [b"\x80", b"PK"])
def test_safetensors_whose_header_length_looks_like_pickle_magic_loads(tmp_path, tiny, first_bytes):
    # The header's length leads the file (u64 LE); pad the info until its low bytes spell
    # pickle's PROTO opcode or the zip magic, which once made a valid checkpoint refused.
    model, vocab = tiny
    path = tmp_path / "c.safetensors"

    def save_padded(padding: int) -> int:
        save_checkpoint(Checkpoint.from_model(model, vocab, {"pad": "x" * padding}), path)
        return int.from_bytes(path.read_bytes()[:8], "little")

    target = int.from_bytes(first_bytes, "little")
    modulus = 256 ** len(first_bytes)
    base = save_padded(0)
    estimate = (target - base) % modulus  # each pad char adds one header byte (then aligned)
    for padding in range(max(0, estimate - 8), estimate + 9):
        if save_padded(padding) % modulus == target:
            break
    else:
        pytest.fail(f"no padding made the file start with {first_bytes!r}")
    assert path.read_bytes()[: len(first_bytes)] == first_bytes
    assert load_checkpoint(path).info["pad"] == "x" * padding
