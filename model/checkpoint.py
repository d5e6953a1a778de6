"""The checkpoint format: one safetensors file, tensors as tensors, everything else as JSON.

    tensors   "model.<name>"  the network's state dict
              "state.<path>"  tensors of the training state (optimizer moments, RNG, hidden)
    metadata  "format"   = "charrnn-checkpoint"
              "version"  = FORMAT_VERSION
              "model"    = ModelConfig as JSON
              "vocab"    = Vocabulary as JSON
              "info"     = JSON: training config, validation loss, corpus name and size, ...
              "state"    = JSON skeleton of the training state, tensors replaced by
                           {"__tensor__": "<path>"} (absent in inference-only checkpoints)

Loading never unpickles (safetensors is a JSON header plus raw buffers), so a downloaded
checkpoint cannot run code; nor is its header trusted: model/checkpoint_header.py checks it
(types, nesting, size caps, every tensor's name, shape and dtype) before any tensor is read
or network built. Saving is atomic: temp file in the same directory, fsync, rename.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from model.checkpoint_header import (
    MAX_HEADER_BYTES,
    TENSOR_KEY,
    HeaderError,
    check_state_references,
    check_tensors,
    parse_metadata,
)
from model.config import ModelConfig
from model.network import CharRNN
from model.vocab import Vocabulary

FORMAT_NAME = "charrnn-checkpoint"
FORMAT_VERSION = 1
_PICKLE_PROTOCOLS = {bytes([protocol]) for protocol in range(2, 6)}  # pickle's PROTO opcode


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded, with the reason in one line."""


@dataclass
class Checkpoint:
    config: ModelConfig
    vocab: Vocabulary
    weights: dict[str, Tensor]
    info: dict[str, Any] = field(default_factory=dict)
    # Anything needed to resume training exactly: nested dicts/lists of JSON values and
    # tensors. None in an inference-only checkpoint.
    training_state: dict[str, Any] | None = None

    @classmethod
    def from_model(
        cls,
        model: CharRNN,
        vocab: Vocabulary,
        info: dict[str, Any] | None = None,
        training_state: dict[str, Any] | None = None,
    ) -> Checkpoint:
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return cls(model.config, vocab, weights, dict(info or {}), training_state)

    def build_model(self, device: torch.device | str = "cpu") -> CharRNN:
        """The network with these weights, in eval mode, on `device`."""
        model = CharRNN(self.config)
        model.load_state_dict(self.weights)
        return model.to(device).eval()


def save_checkpoint(checkpoint: Checkpoint, path: Path | str) -> None:
    path = Path(path)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in checkpoint.weights.items()}
    metadata = {
        "format": FORMAT_NAME,
        "version": str(FORMAT_VERSION),
        "model": json.dumps(checkpoint.config.to_json()),
        "vocab": json.dumps(checkpoint.vocab.to_json()),
        "info": json.dumps(checkpoint.info),
    }
    if checkpoint.training_state is not None:
        skeleton, state_tensors = flatten_tensors(checkpoint.training_state, "state")
        tensors.update(state_tensors)
        metadata["state"] = json.dumps(skeleton)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp_name, metadata=metadata)
        os.chmod(tmp_name, _default_file_mode())  # mkstemp's 0600 would hide it from a container
        with open(tmp_name, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def load_checkpoint(path: Path | str, device: torch.device | str = "cpu") -> Checkpoint:
    """Read a checkpoint onto `device`. Raises CheckpointError with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if _looks_like_pickle(path):
        raise CheckpointError(
            f"{path} is a pickle/torch.save file; only safetensors checkpoints are loaded, "
            "because unpickling can run arbitrary code"
        )
    header_bytes = int.from_bytes(_first_bytes(path, 8), "little")  # safetensors' u64 LE
    if header_bytes > path.stat().st_size - 8:
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated?): its first 8 bytes "
            "give a header length beyond the end of the file"
        )
    if header_bytes > MAX_HEADER_BYTES:
        raise CheckpointError(
            f"{path}: header of {header_bytes} bytes exceeds the cap of {MAX_HEADER_BYTES}"
        )
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as reader:
            metadata = reader.metadata() or {}
            _check_format(path, metadata)
            config, vocab, info, skeleton = parse_metadata(metadata)
            names = set(reader.keys())
            check_tensors(names, reader.get_slice, config)
            check_state_references(skeleton, names)
            # Only now is tensor data read: the header has bounded its size.
            tensors = {name: reader.get_tensor(name) for name in sorted(names)}
    except CheckpointError:
        raise
    except HeaderError as error:
        raise CheckpointError(f"{path}: {error}") from None
    except Exception as error:  # safetensors raises several types for damaged files
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated?): {_first_line(error)}"
        ) from error
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    for name, tensor in weights.items():
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: weight {name} holds NaN or infinite values")
    try:
        state = None if skeleton is None else unflatten_tensors(skeleton, tensors)
    except (TypeError, ValueError) as error:  # e.g. {"__dict__": 5}, or a dict as a key
        raise CheckpointError(f"{path}: damaged training state: {_first_line(error)}") from None
    return Checkpoint(config, vocab, weights, info, state)


def _check_format(path: Path, metadata: dict[str, str]) -> None:
    if metadata.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not a char-rnn checkpoint (no '{FORMAT_NAME}' header)")
    version = metadata.get("version")
    if version != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{path} has checkpoint format version {version}; this build reads version "
            f"{FORMAT_VERSION}"
        )


def _first_bytes(path: Path, count: int) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(count)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _looks_like_pickle(path: Path) -> bool:
    """True for torch.save zips and raw pickles, judged from the first bytes only.

    A safetensors file starts with its header's length (u64, little-endian) and then the
    JSON header's "{"; that length's low byte can be 0x80 or its first two bytes "PK", so
    the safetensors layout is recognised first and the pickle/zip magic is checked after.
    """
    head = _first_bytes(path, 9)
    if head[8:9] == b"{":
        # Safetensors' layout. Anything else that gets past here is still only parsed as
        # safetensors (and refused as unreadable), never unpickled: this check only words
        # the message.
        return False
    return head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in _PICKLE_PROTOCOLS)


def flatten_tensors(value: Any, prefix: str) -> tuple[Any, dict[str, Tensor]]:
    """Split a nested structure into a JSON skeleton and a flat {path: tensor} dict."""
    tensors: dict[str, Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, Tensor):
            tensors[path] = node.detach().cpu().contiguous()
            return {TENSOR_KEY: path}
        if isinstance(node, dict):
            return {
                "__dict__": [
                    [walk(k, f"{path}.k{n}"), walk(v, f"{path}.{n}")]
                    for n, (k, v) in enumerate(node.items())
                ]
            }
        if isinstance(node, list | tuple):
            items = [walk(v, f"{path}.{n}") for n, v in enumerate(node)]
            return {"__tuple__": items} if isinstance(node, tuple) else items
        return node

    return walk(value, prefix), tensors


def unflatten_tensors(skeleton: Any, tensors: dict[str, Tensor]) -> Any:
    """The inverse of flatten_tensors (dict keys keep their types: int stays int)."""
    if isinstance(skeleton, dict):
        if TENSOR_KEY in skeleton:
            return tensors[skeleton[TENSOR_KEY]]
        if "__dict__" in skeleton:
            return {
                unflatten_tensors(k, tensors): unflatten_tensors(v, tensors)
                for k, v in skeleton["__dict__"]
            }
        if "__tuple__" in skeleton:
            return tuple(unflatten_tensors(v, tensors) for v in skeleton["__tuple__"])
    if isinstance(skeleton, list):
        return [unflatten_tensors(v, tensors) for v in skeleton]
    return skeleton


def _default_file_mode() -> int:
    """The mode open() would give a new file: 0666 less the process umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); harmless where directories can't be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
