"""The models the service serves and the engine that runs them; nothing else in app/
touches a network.

    ServedModel   one loaded checkpoint: network, vocabulary, what training recorded, its
                  lane in the engine, its compiled regexes
    ModelService  the served models by name, the limits, the engine: `submit(model, params)`
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from app.engine import DecodingEngine, EngineConfig, Lane
from app.jobs import Job, ScoreJob
from app.schemas import Limits, ModelInfo, NetworkConfig, TrainingInfo
from model.checkpoint import CheckpointError, load_checkpoint
from model.decoding.params import GenerationParams
from model.decoding.regex import RegexCache, RegexLimits
from model.device import resolve_device
from model.network import CharRNN
from model.text import NEWLINE_MODES, NEWLINES_KEEP, NEWLINES_LF
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
    ):
        self.name = name
        self.model = model.eval()
        self.vocab = vocab
        self.lane = lane
        self.device = model.head.weight.device
        self.checkpoint_path = Path(checkpoint_path)
        self.info = dict(info or {})
        self.regexes = RegexCache(vocab, regex_limits or RegexLimits())
        recorded = self.info.get("newlines")
        # A checkpoint that does not say: its vocabulary tells whether it ever saw "\r".
        self.newlines = (
            recorded
            if recorded in NEWLINE_MODES
            else (NEWLINES_KEEP if "\r" in vocab else NEWLINES_LF)
        )

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
        )

    def describe(self, limits: Limits) -> ModelInfo:
        config = self.model.config
        info = self.info
        return ModelInfo(
            name=self.name,
            checkpoint=self.checkpoint_path.name,
            device=str(self.device),
            parameters=sum(p.numel() for p in self.model.parameters()),
            config=NetworkConfig(
                cell=config.cell,
                hidden_size=config.hidden_size,
                num_layers=config.num_layers,
                dropout=config.dropout,
                vocab_size=config.vocab_size,
            ),
            vocabulary=list(self.vocab.chars),
            newlines=self.newlines,
            training=TrainingInfo(
                val_loss=_typed(info.get("val_loss"), float),
                val_bits_per_char=_typed(info.get("val_bits_per_char"), float),
                corpus=_typed(info.get("corpus"), str),
                corpus_chars=_typed(info.get("corpus_chars"), int),
                step=_typed(info.get("step"), int),
            ),
            limits=limits,
        )


class ModelService:
    """The served models, their limits and the engine that decodes for all of them."""

    def __init__(self, engine: DecodingEngine, limits: Limits, stall_seconds: float = 30.0):
        self.engine = engine
        self.limits = limits
        self.stall_seconds = stall_seconds
        self.models: dict[str, ServedModel] = {}
        self.default: str | None = None

    @classmethod
    def load(
        cls,
        checkpoint: Path | str,
        device: str,
        limits: Limits,
        engine: EngineConfig | None = None,
        regex_limits: RegexLimits | None = None,
        stall_seconds: float = 30.0,
    ) -> ModelService:
        """A service of one checkpoint (see ServedModel.load for the errors)."""
        service = cls(DecodingEngine(engine or EngineConfig()), limits, stall_seconds)
        service.add(ServedModel.load(checkpoint, device, service.engine, regex_limits))
        return service

    def add(self, served: ServedModel) -> None:
        self.models[served.name] = served
        if self.default is None:
            self.default = served.name

    def model(self, name: str | None = None) -> ServedModel:
        """The named model, or the default one; raises UnknownModel."""
        key = self.default if name is None else name
        if key not in self.models:
            raise UnknownModel(str(name), sorted(self.models))
        return self.models[key]

    def submit(self, served: ServedModel, params: GenerationParams) -> Job:
        """Queue a request; raises EngineBusy when the waiting queue is full."""
        self.engine.start()
        return self.engine.submit(served.lane, params)

    def score(self, served: ServedModel, ids: list[int], top_n: int) -> ScoreJob:
        """Queue a text to score; raises EngineBusy when the waiting queue is full."""
        self.engine.start()
        return self.engine.submit_score(served.lane, ids, top_n)

    def engine_problem(self) -> str | None:
        """Why the engine cannot serve (its thread has died, or it has made no progress
        for `stall_seconds` while requests wait on it), or None when it is healthy."""
        engine = self.engine
        if not engine.alive:
            return "the decoding engine is not running"
        stalled = time.monotonic() - engine.last_progress
        if self.active and stalled > self.stall_seconds:
            return f"the decoding engine has made no progress for {stalled:.0f} s"
        return None

    @property
    def active(self) -> int:
        """Requests being decoded or waiting for a row."""
        return self.engine.active + self.engine.queued

    def start(self) -> None:
        self.engine.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the engine; requests still running end with an error."""
        self.engine.stop(timeout)


def _typed(value: Any, kind: type) -> Any:
    """`value` if the trainer stored the expected type (ints count as floats), else None."""
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is not float and isinstance(value, kind) and not isinstance(value, bool):
        return value
    return None
