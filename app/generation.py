"""Runs the network for the service; nothing else in app/ touches the model.

    GenerateRequest ──validate──▶ Job (in-vocabulary prime + SamplingConfig, seed always set)
    Job ──stream──▶ Generation: `async for chunk in generation`, then `generation.stats`

Every Generation is a request inside the continuous-batching DecodingEngine (app/engine.py):
one thread advances all active requests together, one character per batched step, and
each Generation yields whatever characters its request has produced since the last read.
`Generation.close()` cancels the request, and the engine frees its row at the next step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.engine import DecodingEngine, EngineBusy, EngineConfig
from app.engine import Job as EngineJob
from app.schemas import (
    GenerateRequest,
    GenerationStats,
    Limits,
    ModelInfo,
    NetworkConfig,
    TrainingInfo,
)
from model.checkpoint import CheckpointError, load_checkpoint
from model.device import preferred_lstm_impl, resolve_device
from model.network import CharRNN
from model.sampling import SamplingConfig, prime_ids, resolve_seed
from model.vocab import OutOfVocabularyError, Vocabulary

__all__ = ["EngineBusy", "Generation", "InvalidRequest", "Job", "TextGenerator"]


class InvalidRequest(ValueError):
    """A request this model cannot serve; `field` names the culprit (routes answer 422)."""

    def __init__(
        self,
        field: str,
        message: str,
        kind: str,
        ctx: dict[str, Any] | None = None,
        value: Any = None,
    ):
        super().__init__(message)
        self.field = field
        self.message = message
        self.kind = kind  # a machine-readable error type, like pydantic's "less_than_equal"
        self.ctx = ctx or {}
        self.value = value  # the offending input, echoed in the 422


@dataclass(frozen=True)
class Job:
    """A validated request: what the network reads and how to sample after it."""

    prime: str  # only characters the vocabulary knows (unknown ones dropped or replaced)
    config: SamplingConfig  # seed always set, so the caller can repeat the run

    def __post_init__(self) -> None:
        if self.config.seed is None:
            raise ValueError("a Job needs a seed (see model.sampling.resolve_seed)")


class TextGenerator:
    """One loaded model (network, vocabulary, device) serving any number of generations."""

    def __init__(
        self,
        model: CharRNN,
        vocab: Vocabulary,
        limits: Limits,
        *,
        name: str,
        checkpoint_path: Path | str = "",
        info: dict[str, Any] | None = None,
        engine: EngineConfig | None = None,
    ):
        self.model = model.eval()
        self.vocab = vocab
        self.device = model.head.weight.device
        self.name = name
        self.checkpoint_path = Path(checkpoint_path)
        self.info = dict(info or {})
        self.limits = limits
        self.engine = DecodingEngine(self.model, vocab, engine or EngineConfig())

    @classmethod
    def load(
        cls, path: Path | str, device: str, limits: Limits, engine: EngineConfig | None = None
    ) -> TextGenerator:
        """Load a checkpoint onto `device`. Raises CheckpointError, or ValueError for a
        device that is unknown or unavailable, each with a one-line message."""
        path = Path(path)
        resolved = resolve_device(device)
        checkpoint = load_checkpoint(path, resolved)
        try:
            model = checkpoint.build_model(resolved)
        except RuntimeError as error:  # load_state_dict: shapes or names disagree
            first_line = str(error).strip().splitlines()[0]
            raise CheckpointError(
                f"{path}: weights do not fit the model config: {first_line}"
            ) from None
        model.impl = preferred_lstm_impl(resolved)
        info = checkpoint.info
        return cls(
            model,
            checkpoint.vocab,
            limits,
            name=path.stem,
            checkpoint_path=path,
            info=info,
            engine=engine,
        )

    def validate(self, request: GenerateRequest) -> Job:
        """Apply the limits and the vocabulary; raises InvalidRequest naming the field."""
        limits = self.limits
        length = limits.default_length if request.length is None else request.length
        if length > limits.max_length:
            raise InvalidRequest(
                "length",
                f"Input should be less than or equal to {limits.max_length}",
                "less_than_equal",
                {"le": limits.max_length},
                value=length,
            )
        if len(request.prime) > limits.max_prime_length:
            raise InvalidRequest(
                "prime",
                f"String should have at most {limits.max_prime_length} characters",
                "string_too_long",
                {"max_length": limits.max_prime_length, "length": len(request.prime)},
            )
        try:
            ids = self.vocab.encode(request.prime, skip_unknown=request.skip_unknown)
        except OutOfVocabularyError as error:
            raise InvalidRequest(
                "prime",
                f"{error} (set skip_unknown to drop them)",
                "prime_out_of_vocabulary",
                {"missing": error.missing},
            ) from None
        config = SamplingConfig(
            length=length,
            temperature=request.temperature,
            top_k=request.top_k,
            top_p=request.top_p,
            seed=resolve_seed(request.seed),
        )
        return Job(self.vocab.decode(ids), config)

    def stream(self, job: Job, keepalive: float | None = None) -> Generation:
        """Queue the job in the engine; its text as it is produced (with `keepalive`, an
        empty chunk after that many seconds without text). Raises EngineBusy when the
        waiting queue is full. Call `close()` when done (routes do it in a teardown)."""
        self.engine.start()
        prime = prime_ids(self.vocab, job.prime)  # an empty prime starts after a newline
        engine_job = self.engine.submit(prime, job.config, job.config.seed)
        return Generation(self, job, engine_job, keepalive)

    async def generate(self, job: Job) -> tuple[str, GenerationStats]:
        """The whole text at once, through the same path as `stream`."""
        generation = self.stream(job)
        try:
            text = "".join([chunk async for chunk in generation])
        finally:
            generation.close()
        assert generation.stats is not None  # set once the engine has finished the job
        return text, generation.stats

    def describe(self) -> ModelInfo:
        config = self.model.config
        info = self.info
        return ModelInfo(
            name=self.name,
            checkpoint=str(self.checkpoint_path),
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
            training=TrainingInfo(
                val_loss=_typed(info.get("val_loss"), float),
                val_bits_per_char=_typed(info.get("val_bits_per_char"), float),
                corpus=_typed(info.get("corpus"), str),
                corpus_chars=_typed(info.get("corpus_chars"), int),
                step=_typed(info.get("step"), int),
            ),
            limits=self.limits,
        )

    @property
    def active(self) -> int:
        """Requests being decoded or waiting for a row."""
        return self.engine.active + self.engine.queued

    def start(self) -> None:
        self.engine.start()

    def stop_all(self, timeout: float = 5.0) -> None:
        """Stop the engine; requests still running end with an error."""
        self.engine.stop(timeout)


class Generation:
    """One job's text, chunk by chunk: an async iterator of str; `stats` once it has ended."""

    def __init__(
        self,
        generator: TextGenerator,
        job: Job,
        engine_job: EngineJob,
        keepalive: float | None = None,
    ):
        self.job = job
        self._name = generator.name
        self._engine_job = engine_job
        self._chunks = engine_job.chunks(generator.engine.chunk_interval, keepalive)
        self._closed = False

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> str:
        if self._closed:
            raise StopAsyncIteration
        return await self._chunks.__anext__()

    def close(self) -> None:
        """Stop generating (idempotent, safe from any thread)."""
        self._closed = True
        self._engine_job.cancel()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the engine has finished (or dropped) the job; True if it has."""
        return self._engine_job.wait(timeout)

    @property
    def stats(self) -> GenerationStats | None:
        stats = self._engine_job.stats
        if stats.finished_at is None:
            return None
        seconds = stats.finished_at - stats.submitted_at
        first = stats.first_char_at
        return GenerationStats(
            chars=stats.chars,
            seconds=seconds,
            chars_per_second=stats.chars / seconds if seconds > 0 else 0.0,
            seed=stats.seed,
            prime_chars=stats.prime_chars,
            model=self._name,
            first_char_seconds=None if first is None else first - stats.submitted_at,
        )


def _typed(value: Any, kind: type) -> Any:
    """`value` if the trainer stored the expected type (ints count as floats), else None."""
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is not float and isinstance(value, kind) and not isinstance(value, bool):
        return value
    return None
