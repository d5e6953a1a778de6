"""Many models in one service (app/engine/registry.py): MODELS_DIR, names, lazy loading, LRU
eviction, hot reload (running streams keep their weights), broken files reported."""

from __future__ import annotations

import json
import logging
import string
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import torch
from pydantic import SecretStr

from app.engine.registry import (
    RETRY_FIRST_SECONDS,
    RETRY_MAX_SECONDS,
    ModelUnavailable,
    Poller,
    public_error,
)
from app.engine.served_model import ServedModel
from app.main import create_app, load_service
from app.settings import Settings
from model.checkpoint import Checkpoint, save_checkpoint
from model.config import ModelConfig
from model.network import CharRNN
from model.vocab import Vocabulary
from tests.app.support import serve_asgi

pytestmark = pytest.mark.anyio

Parse = Callable[[str], list[tuple[str, Any]]]
VOCAB = Vocabulary.from_text(string.ascii_lowercase + " .\n")


def write_model(path: Path, seed: int, hidden: int = 8, corpus: str = "c") -> None:
    torch.manual_seed(seed)
    model = CharRNN(ModelConfig(vocab_size=len(VOCAB), hidden_size=hidden))
    save_checkpoint(Checkpoint.from_model(model, VOCAB, info={"corpus": corpus}), path)


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    for index, name in enumerate(("alpha", "beta", "gamma")):
        write_model(folder / f"{name}.safetensors", seed=index, corpus=name)
    (folder / "notes.txt").write_text("not a model")
    return folder


def settings_for(models_dir: Path, **changes: Any) -> Settings:
    return Settings(
        checkpoint=None,
        models_dir=models_dir,
        device="cpu",
        access_log=False,
        models_poll_seconds=0,
        shutdown_grace_seconds=1,
        **changes,
    )


@pytest.fixture
async def client(models_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_for(models_dir, max_loaded_models=2)
    async with serve_asgi(create_app(settings, load_service(settings))) as http:
        yield http


async def text_of(client: httpx.AsyncClient, model: str | None, **fields: Any) -> str:
    body = {"prime": "ab", "length": 40, "seed": 3, **fields}
    if model is not None:
        body["model"] = model
    response = await client.post("/generate", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["stats"]["model"] == (model or "alpha")
    return response.json()["text"]


async def test_every_file_is_a_model_named_by_its_stem(client: httpx.AsyncClient) -> None:
    listing = (await client.get("/v1/models")).json()
    assert [card["id"] for card in listing["data"]] == ["alpha", "beta", "gamma"]
    assert (await client.get("/model")).json()["name"] == "alpha"  # the first: the default
    assert (await client.get("/model/beta")).json()["training"]["corpus"] == "beta"
    texts = {name: await text_of(client, name) for name in ("alpha", "beta", "gamma")}
    assert len(set(texts.values())) == 3
    assert await text_of(client, None) == texts["alpha"]
    openai = await client.post(
        "/v1/completions", json={"model": "gamma", "prompt": "ab", "max_tokens": 40, "seed": 3}
    )
    assert openai.json()["choices"][0]["text"] == texts["gamma"]


async def test_an_unknown_name_is_a_404_listing_the_known_ones(client: httpx.AsyncClient) -> None:
    for response in (
        await client.post("/generate", json={"model": "delta"}),
        await client.get("/model/delta"),
        await client.post("/score", json={"model": "delta", "text": "ab"}),
    ):
        assert response.status_code == 404
        assert "alpha, beta, gamma" in response.json()["detail"]
    openai = await client.post("/v1/completions", json={"model": "delta", "prompt": "a"})
    assert openai.status_code == 404 and openai.json()["error"]["code"] == "model_not_found"


async def test_models_load_lazily_and_the_least_recently_used_goes(
    models_dir: Path,
) -> None:
    service = load_service(settings_for(models_dir, max_loaded_models=2))
    registry = service.registry
    assert [served.name for served in registry.loaded()] == ["alpha"]  # the default only
    service.model("beta")
    assert sorted(s.name for s in registry.loaded()) == ["alpha", "beta"]
    service.model("gamma")  # over the limit: beta (idle, least recent but the default) goes
    assert sorted(s.name for s in registry.loaded()) == ["alpha", "gamma"]
    service.model("beta")
    assert sorted(s.name for s in registry.loaded()) == ["alpha", "beta"]
    service.stop()


async def test_a_replaced_file_serves_new_requests_while_running_streams_finish_on_the_old(
    models_dir: Path, sse: Parse, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(models_dir)
    service = load_service(settings)
    old = service.model("beta")
    step = old.lane.decoder.step
    reloaded = threading.Event()
    reloaded.set()  # open while `before` is read

    def held_step(*args: Any) -> Any:
        reloaded.wait(10)  # the stream below stays mid-way until the reload is done
        return step(*args)

    monkeypatch.setattr(old.lane.decoder, "step", held_step)
    async with serve_asgi(create_app(settings, service)) as client:
        before = await text_of(client, "beta", length=300)
        reloaded.clear()
        results: dict[str, Any] = {}

        async def long_stream() -> None:
            body = {"model": "beta", "prime": "ab", "length": 300, "seed": 3}
            response = await client.post("/generate/stream", json=body)
            events = sse(response.text)
            results["stream"] = "".join(data for name, data in events if name == "chars")

        async with anyio.create_task_group() as group:
            group.start_soon(long_stream)
            while not old.lane.decoder.size:
                await anyio.sleep(0.005)
            write_model(models_dir / "beta.safetensors", seed=99, corpus="beta-2")  # atomic
            report = (await client.post("/admin/reload")).json()
            assert report["reloaded"] == ["beta"] and report["problems"] == {}
            assert old.lane.decoder.size == 1  # still running on the old weights
            assert service.model("beta") is not old
            reloaded.set()
        assert results["stream"] == before  # finished on the weights it started with
        # The old version leaves once empty, after the step that ended its last stream.
        with anyio.fail_after(10):
            while old.lane in service.engine.lanes:
                await anyio.sleep(0.01)
        assert (await client.get("/model/beta")).json()["training"]["corpus"] == "beta-2"
        assert await text_of(client, "beta", length=300) != before


async def test_a_broken_file_is_reported_and_the_old_version_keeps_serving(
    client: httpx.AsyncClient, models_dir: Path
) -> None:
    before = await text_of(client, "alpha")
    (models_dir / "alpha.safetensors").write_bytes(b"\x00" * 100)
    report = (await client.post("/admin/reload")).json()
    assert report["reloaded"] == [] and "alpha" in report["problems"]
    health = await client.get("/health")
    assert health.status_code == 200 and "alpha" in health.json()["problems"]
    assert await text_of(client, "alpha") == before
    broken = await client.post("/generate", json={"model": "gamma"})  # never loaded: fine
    assert broken.status_code == 200
    (models_dir / "gamma.safetensors").write_bytes(b"junk")
    await client.post("/admin/reload")
    (models_dir / "delta.safetensors").write_bytes(b"junk")
    await client.post("/admin/reload")
    unloadable = await client.post("/generate", json={"model": "delta"})
    assert unloadable.status_code == 503 and "delta" in unloadable.json()["detail"]


async def test_new_and_removed_files_without_a_restart(models_dir: Path) -> None:
    settings = settings_for(models_dir)
    service = load_service(settings)
    poller = Poller(service.registry, 0.05)
    poller.start()
    try:
        write_model(models_dir / "delta.safetensors", seed=7)
        (models_dir / "gamma.safetensors").unlink()
        deadline = time.monotonic() + 5
        while service.registry.names != ["alpha", "beta", "delta"]:
            assert time.monotonic() < deadline, service.registry.names
            time.sleep(0.02)
        assert service.model("delta").name == "delta"
    finally:
        poller.stop()
        service.stop()


async def test_reload_needs_the_api_key_when_one_is_set(models_dir: Path) -> None:
    settings = settings_for(models_dir, api_key=SecretStr("k"))
    async with serve_asgi(create_app(settings, load_service(settings))) as client:
        assert (await client.post("/admin/reload")).status_code == 401
        ok = await client.post("/admin/reload", headers={"Authorization": "Bearer k"})
        assert ok.status_code == 200 and ok.json()["models"] == ["alpha", "beta", "gamma"]


async def test_streams_of_several_models_share_the_engine_with_exact_seeds(
    client: httpx.AsyncClient, sse: Parse
) -> None:
    alone = {name: await text_of(client, name, length=200) for name in ("alpha", "beta")}
    results: dict[tuple[str, int], str] = {}

    async def stream(name: str, seed: int) -> None:
        body = {"model": name, "prime": "ab", "length": 200, "seed": seed}
        response = await client.post("/generate/stream", json=body)
        results[name, seed] = "".join(data for n, data in sse(response.text) if n == "chars")

    async with anyio.create_task_group() as group:
        for seed in (3, 4, 5, 6, 7, 8):
            for name in ("alpha", "beta"):
                group.start_soon(stream, name, seed)
    assert results["alpha", 3] == alone["alpha"] and results["beta", 3] == alone["beta"]
    assert all(len(text) == 200 for text in results.values())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"checkpoint": None, "models_dir": None}, "nothing to serve"),
        ({"max_loaded_models": 0}, "max_loaded_models"),
        ({"models_poll_seconds": -1}, "models_poll_seconds"),
        ({"models_poll_seconds": float("nan")}, "models_poll_seconds"),
    ],
)
def test_bad_settings_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(**changes)


def test_bad_folders_and_defaults_are_one_line_errors(models_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        load_service(settings_for(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no \*\.safetensors"):
        load_service(settings_for(empty))
    with pytest.raises(ValueError, match="'zeta' is not among"):
        load_service(settings_for(models_dir, default_model="zeta"))


@pytest.fixture
def logged() -> Iterator[list[logging.LogRecord]]:
    """The service's log records, taken from its logger itself (uvicorn's logging set-up,
    once a test has run a server, stops them before the root logger and caplog)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


class LoadCounter:
    """Counts ServedModel.load calls by model name (each reads the file)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.calls: list[str] = []
        load = ServedModel.load.__func__  # type: ignore[attr-defined]

        def counted(cls: type, path: Any, *args: Any, **kwargs: Any) -> Any:
            self.calls.append(Path(path).stem)
            return load(cls, path, *args, **kwargs)

        monkeypatch.setattr(ServedModel, "load", classmethod(counted))

    def of(self, name: str) -> int:
        return self.calls.count(name)


async def test_a_broken_file_is_read_once_until_it_changes(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch, logged: list[logging.LogRecord]
) -> None:
    broken = models_dir / "delta.safetensors"
    broken.write_bytes(b"junk" * 10)
    settings = settings_for(models_dir)
    loads = LoadCounter(monkeypatch)
    async with serve_asgi(create_app(settings, load_service(settings))) as client:
        for _ in range(5):
            response = await client.post("/generate", json={"model": "delta"})
            assert response.status_code == 503, response.text
        openai = await client.post("/v1/completions", json={"model": "delta", "prompt": "a"})
        assert openai.status_code == 503
        assert loads.of("delta") == 1  # not once per request
        about_delta = [r for r in logged if "delta" in r.getMessage()]
        assert len(about_delta) == 1 and about_delta[0].levelno == logging.ERROR
        write_model(broken, seed=5)  # fixed: a new mtime, size and inode
        assert await text_of(client, "delta")  # tried at once, not after the wait
        assert loads.of("delta") == 2
        assert "delta" not in (await client.get("/health")).json()["problems"]


async def test_an_unchanged_failed_file_is_tried_again_after_a_growing_wait(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch, logged: list[logging.LogRecord]
) -> None:
    (models_dir / "delta.safetensors").write_bytes(b"junk" * 10)
    service = load_service(settings_for(models_dir))
    now = [1000.0]
    service.registry.clock = lambda: now[0]
    loads = LoadCounter(monkeypatch)

    def ask() -> None:
        with pytest.raises(ModelUnavailable):
            service.model("delta")

    ask()
    now[0] += RETRY_FIRST_SECONDS - 1
    ask()
    assert loads.of("delta") == 1
    now[0] += 1  # the first wait is over
    ask()
    assert loads.of("delta") == 2
    now[0] += RETRY_FIRST_SECONDS  # the second wait is twice as long
    ask()
    assert loads.of("delta") == 2
    now[0] += RETRY_FIRST_SECONDS
    ask()
    assert loads.of("delta") == 3
    now[0] += RETRY_MAX_SECONDS * 10  # the wait stops growing
    ask()
    ask()
    assert loads.of("delta") == 4
    # The same failure of the same file is logged once.
    assert len([r for r in logged if "delta" in r.getMessage()]) == 1
    service.stop()


def pickled(path: Path) -> None:
    path.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)  # a pickle's protocol-4 opening


def truncated(path: Path) -> None:
    write_model(path, seed=1)
    path.write_bytes(path.read_bytes()[:200])


def nan_weights(path: Path) -> None:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=len(VOCAB), hidden_size=8))
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    save_checkpoint(Checkpoint.from_model(model, VOCAB), path)


@pytest.mark.parametrize(
    "damage",
    [lambda p: p.write_bytes(b"junk"), pickled, truncated, nan_weights, Path.unlink],
    ids=["junk", "pickle", "truncated", "nan", "removed-after-scan"],
)
async def test_errors_name_the_model_and_file_never_the_folder(
    models_dir: Path, damage: Callable[[Path], Any]
) -> None:
    settings = settings_for(models_dir)
    service = load_service(settings)
    path = models_dir / "delta.safetensors"
    write_model(path, seed=4)
    service.registry.scan()  # known by name, never loaded
    damage(path)
    folder = str(models_dir.resolve())
    async with serve_asgi(create_app(settings, service)) as client:
        answers = [
            await client.post("/generate", json={"model": "delta"}),
            await client.post("/score", json={"model": "delta", "text": "ab"}),
            await client.post("/v1/completions", json={"model": "delta", "prompt": "a"}),
            await client.get("/model/delta"),
        ]
        for answer in answers:
            assert answer.status_code == 503, answer.text
        problems = (await client.get("/health")).json()["problems"]
        answers_text = [a.text for a in answers] + [json.dumps(problems)]
    assert set(problems) == {"delta"}
    assert "delta.safetensors" in problems["delta"]
    for text in answers_text:
        assert "delta" in text
        assert folder not in text and str(models_dir) not in text, text
        assert models_dir.parent.name not in text, text  # no part of the folder's path


def test_public_error_keeps_the_file_name_only(tmp_path: Path) -> None:
    path = tmp_path / "models" / "m.safetensors"
    assert public_error(f"checkpoint not found: {path}", path) == (
        "checkpoint not found: m.safetensors"
    )
    relative = Path("models/m.safetensors")
    assert public_error("[Errno 13] Permission denied: 'models/m.safetensors'", relative) == (
        "[Errno 13] Permission denied: 'm.safetensors'"
    )
    assert public_error("no CUDA device", path) == "m.safetensors: no CUDA device"
