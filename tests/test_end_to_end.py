"""End to end: text made here → prepare → train a few steps → checkpoint → the service."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import torch

from app.main import create_app
from app.settings import Settings
from model.checkpoint import load_checkpoint
from training.cli import main as training_main

pytestmark = pytest.mark.anyio

TEXT = "".join(
    f"SPEAKER {n % 3}:\nThe quick brown fox jumps over the lazy dog, line {n}.\n\n"
    for n in range(200)
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def trained_checkpoint(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    data, run = tmp_path / "data", tmp_path / "run"
    shape = ["--batch-size", "4", "--seq-len", "32"]
    assert training_main(["prepare", str(corpus), "--out", str(data), "--no-progress", *shape]) == 0
    threads = torch.get_num_threads()
    try:
        status = training_main(
            ["train", str(data), "--out", str(run), *shape, "--hidden-size", "24",
             "--max-steps", "12", "--eval-every", "6", "--threads", "1", "--no-progress",
             "--sample-length", "20"]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert status == 0
    return run / "best.safetensors"


async def test_a_trained_checkpoint_is_served(trained_checkpoint: Path) -> None:
    info = load_checkpoint(trained_checkpoint).info
    assert info["step"] in (6, 12) and info["val_loss"] > 0
    settings = Settings(checkpoint=trained_checkpoint, device="cpu", access_log=False)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://e2e") as http:
            model = (await http.get("/model")).json()
            assert model["training"]["val_loss"] == pytest.approx(info["val_loss"])
            assert model["config"]["hidden_size"] == 24

            body = {"prime": "SPEAKER 1:\n", "length": 50, "seed": 3}
            generated = (await http.post("/generate", json=body)).json()
            assert len(generated["text"]) == 50 and set(generated["text"]) <= set(TEXT)

            stream = await http.post("/generate/stream", json=body)
            chars = "".join(
                json.loads(line[5:])
                for event in stream.text.split("\n\n")
                if "event: chars" in event
                for line in event.splitlines()
                if line.startswith("data:")
            )
            assert chars == generated["text"]
