"""The model files a service serves, by name: found in MODELS_DIR (every *.safetensors,
named by its file stem) and CHECKPOINT; loaded when first asked for; the least recently
used dropped above MAX_LOADED_MODELS; reloaded when their file changes.

    scan()   finds new, replaced and removed files (a poll or POST /admin/reload)
    get()    the loaded model of a name (loading it now if need be)

A replaced file loads beside the old version: new requests go to the new one, streams
already running finish on the weights they started with (the old lane retires once
empty). A file that fails to load is reported (`problems`) and the old version, if any,
keeps serving.

A failed file is not read again for every request that names it: only once it changes
(its mtime, size or inode), or after a wait that doubles with each failure of the same
version (RETRY_FIRST_SECONDS, up to RETRY_MAX_SECONDS); a failure is logged once, and
logged again only if the error changes. What clients see of a failure (`problems`, the
503 of a request) names the model and the file, never the folder it lies in; the log
and the start-up error give the whole path, for the operator.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from app.engine.config import MAX_LOADED_MODELS
from app.engine.engine import DecodingEngine
from app.engine.served_model import ServedModel, UnknownModel
from model.decoding.regex import RegexLimits

logger = logging.getLogger("uvicorn.error")

Signature = tuple[int, int, int]  # (mtime_ns, size, inode): a rename-over changes it
# An unchanged file that failed is tried again after this long, then twice as long after
# each further failure, up to the most: a fix that leaves the file as it was (its
# permissions, a device that was busy) is noticed without a restart.
RETRY_FIRST_SECONDS = 10.0
RETRY_MAX_SECONDS = 600.0


class ModelUnavailable(RuntimeError):
    """A known model whose file cannot be loaded (the message says why, in one line)."""


def signature_of(path: Path) -> Signature | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


@dataclass
class ModelFile:
    name: str
    path: Path
    signature: Signature | None
    served: ServedModel | None = None
    loaded_signature: Signature | None = None
    error: str | None = None  # why the last load failed, as clients see it
    detail: str | None = None  # the same with the whole path, for the log
    failed_signature: Signature | None = None  # the version that failed
    failures: int = 0  # of that version, in a row
    retry_at: float = 0.0  # before this (the registry's clock), that version is not read
    last_used: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)  # one load at a time


class ModelRegistry:
    def __init__(
        self,
        engine: DecodingEngine,
        device: str,
        *,
        checkpoint: Path | None = None,
        models_dir: Path | None = None,
        default: str | None = None,
        max_loaded: int = MAX_LOADED_MODELS,
        regex_limits: RegexLimits | None = None,
    ):
        if checkpoint is None and models_dir is None:
            raise ValueError("give a checkpoint or a models directory")
        if models_dir is not None and not models_dir.is_dir():
            raise ValueError(f"models directory not found: {models_dir}")
        self.engine = engine
        self.device = device
        self.checkpoint = checkpoint
        self.models_dir = models_dir
        self.max_loaded = max_loaded
        self.regex_limits = regex_limits
        self.clock: Callable[[], float] = time.monotonic  # for the retry waits
        self.files: dict[str, ModelFile] = {}
        self._lock = threading.Lock()  # guards `files`
        self.scan()
        if not self.files:
            raise ValueError(f"no *.safetensors files in {models_dir}")
        if checkpoint is not None and default is None:
            default = checkpoint.stem
        self.default = default if default is not None else sorted(self.files)[0]
        if self.default not in self.files:
            raise ValueError(f"the default model {self.default!r} is not among: {self.names}")

    @property
    def names(self) -> list[str]:
        return sorted(self.files)

    def _paths(self) -> dict[str, Path]:
        paths: dict[str, Path] = {}
        if self.models_dir is not None:
            for path in sorted(self.models_dir.glob("*.safetensors")):
                if path.is_file() and not path.name.startswith("."):  # not a temp file
                    paths[path.stem] = path
        if self.checkpoint is not None:
            paths[self.checkpoint.stem] = self.checkpoint  # CHECKPOINT wins a name clash
        return paths

    def scan(self) -> list[str]:
        """Find new, replaced and removed files; reload the replaced ones that are loaded.
        → the names (re)loaded."""
        paths = self._paths()
        changed = []
        with self._lock:
            for name in list(self.files):
                if name not in paths and name != getattr(self, "default", None):
                    self._retire(self.files.pop(name))
            for name, path in paths.items():
                entry = self.files.get(name)
                signature = signature_of(path)
                if entry is None:
                    self.files[name] = ModelFile(name, path, signature)
                elif entry.signature != signature or entry.path != path:
                    entry.path, entry.signature = path, signature
                    if entry.served is not None:
                        changed.append(entry)
        reloaded = []
        for entry in changed:
            if self._load(entry):
                reloaded.append(entry.name)
        return reloaded

    def is_ready(self, name: str | None) -> bool:
        """Whether `get(name)` answers at once (loaded and current)."""
        entry = self.files.get(self.default if name is None else name)
        return entry is not None and entry.served is not None

    def get(self, name: str | None = None) -> ServedModel:
        """The model of that name (the default for None), loaded; raises UnknownModel or
        ModelUnavailable."""
        key = self.default if name is None else name
        entry = self.files.get(key)
        if entry is None:
            raise UnknownModel(str(name), self.names)
        entry.last_used = time.monotonic()
        if entry.served is None:
            self._load(entry)
        served = entry.served
        if served is None:
            raise ModelUnavailable(f"model {key!r} cannot be loaded: {entry.error}")
        return served

    def load_default(self) -> ServedModel:
        """Load the default model now (at start-up); raises ModelUnavailable, unlogged:
        the caller reports it."""
        entry = self.files[self.default]
        self._load(entry, log=False)
        if entry.served is None:
            raise ModelUnavailable(f"model {self.default!r} cannot be loaded: {entry.detail}")
        return entry.served

    def loaded(self) -> list[ServedModel]:
        return [entry.served for entry in self.files.values() if entry.served is not None]

    def problems(self) -> dict[str, str]:
        """Files that failed to load: name → why (the old version may still serve)."""
        return {name: entry.error for name, entry in self.files.items() if entry.error}

    def _load(self, entry: ModelFile, log: bool = True) -> bool:
        with entry.lock:
            signature = signature_of(entry.path)
            if entry.served is not None and entry.loaded_signature == signature:
                return False  # loaded meanwhile by another caller
            if signature == entry.failed_signature and self.clock() < entry.retry_at:
                return False  # this version failed, and is not due to be tried again
            try:
                served = ServedModel.load(
                    entry.path, self.device, self.engine, self.regex_limits, name=entry.name
                )
            except (ValueError, OSError) as error:  # CheckpointError included
                self._failed(entry, signature, error, log)
                return False
            old, entry.served = entry.served, served
            entry.loaded_signature, entry.error, entry.detail = signature, None, None
            entry.failed_signature, entry.failures = None, 0
            if old is not None:
                logger.info("model %s reloaded from %s", entry.name, entry.path.name)
                self.engine.retire_lane(old.lane)
        self._evict(keep=entry)
        return True

    def _failed(
        self, entry: ModelFile, signature: Signature | None, error: Exception, log: bool
    ) -> None:
        """Note a failed load: what clients are told, when to try this version again;
        logged unless it is the same failure of the same version as last time."""
        detail = " ".join(str(error).split())
        repeated = signature == entry.failed_signature and detail == entry.detail
        entry.failures = entry.failures + 1 if signature == entry.failed_signature else 1
        wait = min(RETRY_FIRST_SECONDS * 2 ** (entry.failures - 1), RETRY_MAX_SECONDS)
        entry.failed_signature, entry.retry_at = signature, self.clock() + wait
        entry.error, entry.detail = public_error(detail, entry.path), detail
        if log and not repeated:
            logger.error("cannot load model %s: %s", entry.name, detail)

    def _evict(self, keep: ModelFile) -> None:
        """Drop the least recently used idle models above max_loaded."""
        with self._lock:
            loaded = [e for e in self.files.values() if e.served is not None and e is not keep]
            excess = len(loaded) + 1 - self.max_loaded
            for entry in sorted(loaded, key=lambda e: e.last_used):
                if excess <= 0:
                    break
                if entry.name != self.default and self.engine.lane_idle(entry.served.lane):
                    self._retire(entry)
                    excess -= 1

    def _retire(self, entry: ModelFile) -> None:
        if entry.served is not None:
            self.engine.retire_lane(entry.served.lane)
            entry.served = None
            entry.loaded_signature = None


def public_error(message: str, path: Path) -> str:
    """`message` (a failure to load `path`) as a client may read it: every spelling of the
    path becomes the file's name, so the folders the server keeps models in stay private;
    prefixed with the name if the message does not give it."""
    spellings = {str(path), str(path.absolute())}
    with contextlib.suppress(OSError, RuntimeError):  # RuntimeError: a symlink loop
        spellings.add(str(path.resolve()))
    for spelling in sorted(spellings, key=len, reverse=True):
        message = message.replace(spelling, path.name)
    for folder in {path.parent, path.parent.absolute()}:
        if folder.parts:  # not "." or ""
            message = message.replace(str(folder) + os.sep, "")
    return message if path.name in message else f"{path.name}: {message}"


class Poller:
    """Calls registry.scan() every `seconds` on a daemon thread until stopped."""

    def __init__(self, registry: ModelRegistry, seconds: float):
        self.registry = registry
        self.seconds = seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.seconds):
            try:
                self.registry.scan()
            except Exception:  # keep polling: a scan failure is logged, not fatal
                logger.exception("scanning the models failed")
