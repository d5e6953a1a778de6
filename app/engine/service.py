"""The service's models and the engine that runs them; nothing else in app/ touches a
network.

    ModelService    the served models by name (app/engine/registry.py: files, loading, reloads),
                    the limits, the engine: `submit(model, params)`, `score(model, ids)`
    ServedModel     one loaded checkpoint (app/engine/served_model.py)
"""

from __future__ import annotations

import time
from pathlib import Path

from app.engine.clients import ClientRules
from app.engine.config import MAX_LOADED_MODELS, STALL_SECONDS, EngineConfig, Limits
from app.engine.engine import DecodingEngine
from app.engine.jobs import Job, ScoreJob
from app.engine.registry import ModelRegistry, ModelUnavailable
from app.engine.served_model import ServedModel
from model.checkpoint import CheckpointError
from model.decoding.params import GenerationParams
from model.decoding.regex import RegexLimits
from model.device import resolve_device
from model.state import RecurrentState


class ModelService:
    """The served models (app/engine/registry.py), their limits and the engine that decodes for
    all of them."""

    def __init__(
        self,
        engine: DecodingEngine,
        registry: ModelRegistry,
        limits: Limits,
        stall_seconds: float = STALL_SECONDS,
    ):
        self.engine = engine
        self.registry = registry
        self.limits = limits
        self.stall_seconds = stall_seconds

    @classmethod
    def load(
        cls,
        checkpoint: Path | str | None,
        device: str,
        limits: Limits,
        engine: EngineConfig,
        clients: ClientRules,
        regex_limits: RegexLimits | None = None,
        stall_seconds: float = STALL_SECONDS,
        *,
        models_dir: Path | None = None,
        default_model: str | None = None,
        max_loaded_models: int = MAX_LOADED_MODELS,
    ) -> ModelService:
        """The service of CHECKPOINT and/or MODELS_DIR, its default model loaded now (the
        rest when first asked for), on an engine of `engine` that asks `clients` (the
        gate's per-client rules) before it spends anything on a client. Raises
        CheckpointError or ValueError in one line."""
        decoding = DecodingEngine(engine, clients)
        registry = ModelRegistry(
            decoding,
            device,
            checkpoint=Path(checkpoint) if checkpoint is not None else None,
            models_dir=models_dir,
            default=default_model,
            max_loaded=max_loaded_models,
            regex_limits=regex_limits,
        )
        resolve_device(device)  # an unknown or missing device fails here, not later
        service = cls(decoding, registry, limits, stall_seconds)
        try:
            registry.load_default()
        except ModelUnavailable as error:
            raise CheckpointError(str(error).split(": ", 1)[1]) from None
        return service

    def model(self, name: str | None = None) -> ServedModel:
        """The named model (the default for None), loaded; raises UnknownModel or
        ModelUnavailable."""
        return self.registry.get(name)

    def submit(
        self,
        served: ServedModel,
        params: GenerationParams,
        client: str | None = None,
        state: RecurrentState | None = None,
        return_state: bool = False,
    ) -> Job:
        """Queue a request of `client` (its address), continuing `state` (a decoded token
        of this model) if given; with `return_state` the job keeps its final state. Raises
        ClientBusy past the client's quota, EngineBusy when the waiting queue is full."""
        self.engine.start()
        return self.engine.submit(served.lane, params, client, state, return_state)

    def score(
        self,
        served: ServedModel,
        ids: list[int],
        top_n: int,
        client: str | None = None,
        state: RecurrentState | None = None,
    ) -> ScoreJob:
        """Queue a text to score (after `state`'s text, if given); raises as `submit`."""
        self.engine.start()
        return self.engine.submit_score(served.lane, ids, top_n, client, state)

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
