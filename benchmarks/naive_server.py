"""The baseline for benchmarks/serve_load.py: the seed's plain approach to serving.

One sampling loop per request, one character at a time, exactly as the original char-rnn
scripts do it: a numpy one-hot vector, `nn.LSTM` on it, softmax, `topk`, and
`np.random.choice`; each character is written to the client as its own SSE event. FastAPI
runs each streaming request's generator in its thread pool.

    python benchmarks/naive_server.py --checkpoint checkpoints/shakespeare.safetensors --port 8100
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from torch import nn

from model.checkpoint import load_checkpoint


class SeedModel(nn.Module):
    """The seed's network written the plain way: one-hot → nn.LSTM → Dropout → Linear."""

    def __init__(self, vocab_size: int, hidden_size: int, num_layers: int, dropout: float):
        super().__init__()
        self.rnn = nn.LSTM(vocab_size, hidden_size, num_layers, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, x, hidden):
        out, hidden = self.rnn(x, hidden)
        out = self.dropout(out).contiguous().view(-1, self.rnn.hidden_size)
        return self.head(out), hidden


class Request(BaseModel):
    prime: str = "The "
    length: int = 500
    top_k: int = 5


def build_app(checkpoint_path: str) -> FastAPI:
    checkpoint = load_checkpoint(checkpoint_path)
    config = checkpoint.config
    model = SeedModel(config.vocab_size, config.hidden_size, config.num_layers, config.dropout)
    model.load_state_dict(checkpoint.weights)  # same parameter names: rnn.*, head.*
    model.eval()
    chars = checkpoint.vocab.chars
    char_to_id = {c: i for i, c in enumerate(chars)}

    def one_hot(char_id: int) -> torch.Tensor:
        vector = np.zeros((1, 1, len(chars)), dtype=np.float32)
        vector[0, 0, char_id] = 1.0
        return torch.from_numpy(vector)

    def predict(char_id: int, hidden, top_k: int):
        with torch.no_grad():
            logits, hidden = model(one_hot(char_id), hidden)
        probs = torch.softmax(logits, dim=1).numpy().squeeze()
        top_probs, top_ids = torch.topk(torch.from_numpy(probs), top_k)
        top_probs = top_probs.numpy() / top_probs.numpy().sum()
        return int(np.random.choice(top_ids.numpy(), p=top_probs)), hidden

    def sample(request: Request):
        hidden = None
        for char in request.prime[:-1]:
            _, hidden = predict(char_to_id[char], hidden, request.top_k)
        char_id = char_to_id[request.prime[-1]]
        for _ in range(request.length):
            char_id, hidden = predict(char_id, hidden, request.top_k)
            yield f"event: chars\ndata: {json.dumps(chars[char_id])}\n\n"
        yield "event: done\ndata: {}\n\n"

    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/generate/stream")
    def stream(request: Request):
        return StreamingResponse(sample(request), media_type="text/event-stream")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1, as our service: two spin against the event loop)",
    )
    parser.add_argument(
        "--onednn",
        action="store_true",
        help="let nn.LSTM use oneDNN: ~3 ms per one-character call here, against ~0.4 ms for "
        "PyTorch's own kernel, so the default (off) is the faster, fairer baseline",
    )
    parser.add_argument(
        "--http-stack",
        choices=["seed", "c"],
        default="seed",
        help="seed (default): uvicorn's pure-Python HTTP parser and event loop (h11, asyncio),"
        " as the seed was served; c: httptools and uvloop, as our service is",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.mkldnn.enabled = args.onednn
    # uvicorn would take httptools and uvloop wherever they are installed (ours installs
    # them), and a character per event leans on them: the seed had neither.
    stack = {"http": "h11", "loop": "asyncio"} if args.http_stack == "seed" else {}
    app = build_app(args.checkpoint)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", **stack)


if __name__ == "__main__":
    main()
