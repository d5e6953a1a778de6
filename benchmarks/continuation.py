"""A long story told a turn at a time, two ways against one server: continuing from the
state each turn returns, and resending the history as prime (cut to MAX_PRIME_LENGTH, as a
client must).

    python benchmarks/continuation.py [--turns 100] [--user-chars 100] [--length 200]
                                      [--out FILE.md] [--root DIR]

The server is `python -m app` (the shipped checkpoint, default settings) from --root (this
tree by default) in its own process. Each turn adds --user-chars characters of the user's
text (consecutive passages of tiny Shakespeare) and asks for --length generated characters
(seed 1000 + turn, the same settings both ways), by POST /generate:

    state     {"state": <the last turn's state>, "prime": <the user's text>, "return_state": true}
    history   {"prime": (<the story so far> + <the user's text>)[-MAX_PRIME_LENGTH:]}

Per turn and way: the request's bytes (its JSON body) and the response's; the server's time
to the first character (stats.first_char_seconds: queue and prime included); and the bits
per character the model gives the next turn's user text after this turn's story, by POST
/score: with the state, or after the history as the next turn's prime would hold it (the
mean surprisal of the text's last --user-chars characters). Each way tells its own story:
the two are the same characters until the history outgrows MAX_PRIME_LENGTH.

Prints a table (every turn with --out, else every tenth) and one last line with turn N's
figures both ways.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from load_client import free_port, wait_healthy  # noqa: E402

TINY = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


@dataclass
class Turn:
    story_chars: int  # the story's characters after the turn
    sent: int  # bytes of the request body
    received: int  # bytes of the response body
    first_char_ms: float  # the server's time to the first character
    next_bits: float  # bits/char of the next turn's user text after this turn's story


def body_bytes(body: dict[str, Any]) -> int:
    return len(json.dumps(body, separators=(",", ":")).encode())


def post(client: httpx.Client, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    response = client.post(path, content=json.dumps(body, separators=(",", ":")))
    if response.status_code != 200:
        raise SystemExit(f"{path}: {response.status_code} {response.text[:300]}")
    return response.json(), len(response.content)


def with_state(
    client: httpx.Client, users: list[str], length: int, turns: int
) -> tuple[list[Turn], str]:
    story, state = "", None
    results = []
    for turn in range(turns):
        body: dict[str, Any] = {"prime": users[turn], "length": length, "seed": 1000 + turn}
        body |= {"return_state": True, "skip_unknown": True}
        if state is not None:
            body["state"] = state
        answer, received = post(client, "/generate", body)
        story += users[turn] + answer["text"]
        state = answer["state"]
        score = {"state": state, "text": users[turn + 1], "skip_unknown": True}
        scored, _ = post(client, "/score", score)
        first = answer["stats"]["first_char_seconds"] * 1000
        bits = scored["bits_per_char"]
        results.append(Turn(len(story), body_bytes(body), received, first, bits))
    return results, story


def with_history(
    client: httpx.Client, users: list[str], length: int, turns: int, max_prime: int
) -> tuple[list[Turn], str]:
    story = ""
    results = []
    for turn in range(turns):
        prime = (story + users[turn])[-max_prime:]
        body = {"prime": prime, "length": length, "seed": 1000 + turn, "skip_unknown": True}
        answer, received = post(client, "/generate", body)
        story += users[turn] + answer["text"]
        # The next turn's prime, scored: the surprisal of its user text at its end.
        context = (story + users[turn + 1])[-max_prime:]
        scored, _ = post(client, "/score", {"text": context, "skip_unknown": True})
        bits = statistics.fmean(scored["surprisal_bits"][-len(users[turn + 1]) :])
        first = answer["stats"]["first_char_seconds"] * 1000
        results.append(Turn(len(story), body_bytes(body), received, first, bits))
    return results, story


def table(state: list[Turn], history: list[Turn], every: int) -> list[str]:
    lines = [
        "| turn | story chars | sent B: state | history | received B: state | history "
        "| first char ms: state | history | next text bits/char: state | history |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for index, (ours, theirs) in enumerate(zip(state, history, strict=True)):
        turn = index + 1
        if turn != 1 and turn % every and turn != len(state):
            continue
        lines.append(
            f"| {turn} | {ours.story_chars:,} "
            f"| {ours.sent:,} | {theirs.sent:,} | {ours.received:,} | {theirs.received:,} "
            f"| {ours.first_char_ms:.1f} | {theirs.first_char_ms:.1f} "
            f"| {ours.next_bits:.3f} | {theirs.next_bits:.3f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--user-chars", type=int, default=100)
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--out", type=Path, help="also write the whole table here (markdown)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the code tree to serve")
    args = parser.parse_args()
    corpus = TINY.read_text()
    size = args.user_chars
    users = [corpus[n * size : (n + 1) * size] for n in range(args.turns + 1)]
    port = free_port()
    root = args.root.resolve()
    env = {**os.environ, "PYTHONPATH": str(root), "ACCESS_LOG": "false", "LOG_LEVEL": "warning"}
    server = subprocess.Popen([sys.executable, "-m", "app", "--port", str(port)], env=env, cwd=root)
    started = time.perf_counter()
    try:
        wait_healthy(port, server)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
            client.headers["content-type"] = "application/json"
            limits = client.get("/model").json()["limits"]
            max_prime = limits["max_prime_length"]
            post(client, "/generate", {"prime": "warm", "length": 50})  # loads the kernels
            state, story_a = with_state(client, users, args.length, args.turns)
            history, story_b = with_history(client, users, args.length, args.turns, max_prime)
    finally:
        server.terminate()
        server.wait(30)
    every = 1 if args.out else 10
    lines = table(state, history, every)
    pairs = zip(story_a, story_b, strict=False)  # the stories may differ in length too
    same = next((n for n, (a, b) in enumerate(pairs) if a != b), None)
    summary = [
        f"turns {args.turns} × ({size} user + {args.length} generated characters); "
        f"MAX_PRIME_LENGTH {max_prime}; {time.perf_counter() - started:.0f} s in all",
        "stories identical " + ("throughout" if same is None else f"for {same:,} characters"),
    ]
    last_a, last_b = state[-1], history[-1]
    key = (
        f"turn {args.turns}: state {last_a.sent:,} B sent, first char {last_a.first_char_ms:.1f} "
        f"ms, next text {last_a.next_bits:.3f} bits/char; history {last_b.sent:,} B, "
        f"{last_b.first_char_ms:.1f} ms, {last_b.next_bits:.3f} bits/char"
    )
    late = min(10, args.turns - 1)  # from turn 11 on, the history no longer fits a prime
    means = [
        f"mean over turns {late + 1}-{args.turns}: first char "
        f"{statistics.fmean(t.first_char_ms for t in state[late:]):.1f} ms (state) against "
        f"{statistics.fmean(t.first_char_ms for t in history[late:]):.1f} ms (history); "
        f"next text {statistics.fmean(t.next_bits for t in state[late:]):.4f} against "
        f"{statistics.fmean(t.next_bits for t in history[late:]):.4f} bits/char",
        "largest difference in next text bits/char, state against history: "
        f"{max(abs(a.next_bits - b.next_bits) for a, b in zip(state, history, strict=True)):.2e}",
    ]
    text = "\n".join([*lines, "", *summary, *means, key])
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
