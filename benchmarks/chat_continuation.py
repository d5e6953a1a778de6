"""A long chat through POST /v1/chat/completions, each turn sent two ways against one server:
the whole conversation with the last reply's `state` (only what follows it is read), and
the whole conversation alone (read again from its start).

    python benchmarks/chat_continuation.py [--turns 40] [--length 100] [--root DIR]

The server is `python -m app` (the shipped checkpoint and its play template) from --root,
with MAX_PRIME_LENGTH raised to 1,000,000 so that the whole conversation can still be
read at the end. The user's lines are consecutive lines of tiny Shakespeare (or, without
it, a fixed sentence). Per turn and way: the characters the server read before the reply
(usage.prompt_tokens), the turn's wall time at the client (a reply of --length characters,
not streamed), and whether both ways gave the same reply (they must: the same seed, and a
state reads as the whole text). Prints every tenth turn and the medians of the last half.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from load_client import free_port, wait_healthy  # noqa: E402

TINY = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def user_lines(count: int) -> list[str]:
    if TINY.exists():
        lines = [line for line in TINY.read_text().splitlines() if len(line) > 20]
        return lines[:count]
    return ["What say you to this, good sir?"] * count


def turn(client: httpx.Client, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    response = client.post("/v1/chat/completions", json=body)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"a turn was refused ({response.status_code}): {response.text[:300]}")
    return response.json(), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--root", type=Path, default=ROOT, help="the code tree to serve")
    args = parser.parse_args()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(args.root), "ACCESS_LOG": "false"}
    env["MAX_PRIME_LENGTH"] = "1000000"
    checkpoint = args.root / "checkpoints" / "shakespeare.safetensors"
    command = [sys.executable, "-m", "app", "--checkpoint", str(checkpoint), "--port", str(port)]
    server = subprocess.Popen(command, env=env, cwd=args.root, stderr=subprocess.DEVNULL)
    rows: list[tuple[int, int, int, float, float, bool]] = []
    try:
        wait_healthy(port, server)
        messages: list[dict[str, str]] = []
        state = None
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
            for number, line in enumerate(user_lines(args.turns), start=1):
                messages.append({"role": "user", "content": line})
                body = {"model": "shakespeare", "messages": messages, "seed": number}
                body |= {"max_completion_tokens": args.length, "return_state": True}
                whole, whole_s = turn(client, body)
                ours, ours_s = (
                    (whole, whole_s) if state is None else turn(client, {**body, "state": state})
                )
                reply = ours["choices"][0]
                same = reply["message"]["content"] == whole["choices"][0]["message"]["content"]
                chars = sum(len(m["content"]) for m in messages)
                read = (ours["usage"]["prompt_tokens"], whole["usage"]["prompt_tokens"])
                rows.append((number, chars, *read, ours_s * 1e3, whole_s * 1e3, same))
                state = reply["state"]
                messages.append({"role": "assistant", "content": reply["message"]["content"]})
    finally:
        server.terminate()
        server.wait(timeout=30)
    columns = ["turn", "conversation chars", "read with state", "read whole"]
    columns += ["ms with state", "ms whole", "same reply"]
    print("| " + " | ".join(columns) + " |")
    print("|--:|--:|--:|--:|--:|--:|:-:|")
    for row in rows:
        if row[0] % 10 == 0 or row[0] == 1:
            number, chars, read_state, read_whole, ms_state, ms_whole, same = row
            print(
                f"| {number} | {chars} | {read_state} | {read_whole} | {ms_state:.0f} | "
                f"{ms_whole:.0f} | {'yes' if same else 'NO'} |"
            )
    half = rows[len(rows) // 2 :]
    ms_state = statistics.median(row[4] for row in half)
    ms_whole = statistics.median(row[5] for row in half)
    print(
        f"turns {half[0][0]}–{half[-1][0]}, medians: {ms_state:.0f} ms a turn with the state, "
        f"{ms_whole:.0f} ms whole ({ms_whole / ms_state:.1f}x); "
        f"same reply both ways in {sum(row[6] for row in rows)}/{len(rows)} turns"
    )


if __name__ == "__main__":
    main()
