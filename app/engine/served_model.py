"""One loaded checkpoint, as the service serves it: its network, vocabulary, what training
recorded, its lane in the decoding engine, its compiled regexes and its state tokens' codec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.engine.clients import ClientRules
from app.engine.engine import DecodingEngine
from app.engine.lane import Lane
from app.engine.regex_compiler import RegexCompiler
from model.checkpoint import CheckpointError, load_checkpoint
from model.decoding.regex import RegexLimits
from model.device import resolve_device
from model.network import CharRNN
from model.state import StateCodec
from model.text import newline_mode
from model.vocab import Vocabulary


class UnknownModel(LookupError):
    """A request named a model this service does not serve."""

    def __init__(self, name: str, known: list[str]):
        super().__init__(f"no model named {name!r}; this server has: {', '.join(known)}")
        self.name = name
        self.known = known


class ServedModel:
    """One checkpoint, loaded, with its lane in the engine."""

    def __init__(
        self,
        name: str,
        model: CharRNN,
        vocab: Vocabulary,
        lane: Lane,
        *,
        checkpoint_path: Path | str = "",
        info: dict[str, Any] | None = None,
        regex_limits: RegexLimits | None = None,
        clients: ClientRules | None = None,
    ):
        self.name = name
        self.model = model.eval()
        self.vocab = vocab
        self.lane = lane
        self.device = model.head.weight.device
        self.checkpoint_path = Path(checkpoint_path)
        self.info = dict(info or {})
        # Compiled in worker processes, each compile charged to the client waiting for it.
        self.regexes = RegexCompiler(vocab, regex_limits or RegexLimits(), clients)
        self.newlines = newline_mode(self.info, vocab)
        # Reads and writes the state tokens of this model's texts (its fingerprint hashes
        # the weights once, here).
        self.state_codec = StateCodec.for_model(model, vocab)

    @classmethod
    def load(
        cls,
        path: Path | str,
        device: str,
        engine: DecodingEngine,
        regex_limits: RegexLimits | None = None,
        name: str | None = None,
    ) -> ServedModel:
        """Load a checkpoint onto `device` and give it a lane. Raises CheckpointError, or
        ValueError for a device that is unknown or unavailable, each with one line."""
        path = Path(path)
        resolved = resolve_device(device)
        checkpoint = load_checkpoint(path, resolved)
        try:
            model = checkpoint.build_model(resolved)
        except RuntimeError as error:  # load_state_dict: shapes or names disagree
            first_line = str(error).strip().splitlines()[0]
            raise CheckpointError(
                f"{path.name}: weights do not fit the model config: {first_line}"
            ) from None
        name = name or path.stem
        lane = engine.add_lane(name, model, checkpoint.vocab.chars)
        return cls(
            name,
            model,
            checkpoint.vocab,
            lane,
            checkpoint_path=path,
            info=checkpoint.info,
            regex_limits=regex_limits,
            clients=engine.clients,
        )
