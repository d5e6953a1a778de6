"""Fine-tuning the shipped model against training from scratch, for the same CPU minutes.

    python benchmarks/fine_tune.py [--minutes 2,5,10] [--chars N --name fine_tune_N]
    python benchmarks/fine_tune.py --sweep [--sweep-steps 550,1650]
    python benchmarks/fine_tune.py --stopping [--minutes 2,5 | --steps 960,2400]
                                   [--sizes 300000,1500000]

The corpus: the docstrings of the installed numpy package (numpy is BSD-3-Clause licensed
and a dependency, so the corpus is there offline wherever the tests run): modern technical
English with code examples, tables and formulas, nothing like Shakespeare's verse; about
1.6 MB and 120 distinct characters with numpy 2.x, some 50 of them new to the shipped
model. `docstring_corpus` writes it deterministically (files in sorted order) for one numpy
version, which the output names. `--chars N` keeps its first N characters: a smaller text,
as people's own often is.

For each budget, two runs start at the same time, one process and one thread each, so both
see the same machine: `train` with the default recipe from fresh weights, and `train
--init-from checkpoints/shakespeare.safetensors` (the fine-tune preset). Each stops at the
budget (max_minutes: wall-clock, its evaluations included); its last.safetensors is then
scored with `eval`'s function on the validation split (the corpus's last 10 %) as one
stream. Prints the table, writes benchmarks/results/<name>.md and <name>.png (the longest
budget's validation curves, and every budget's end point).

--sweep measures the fine-tune preset instead: fine-tune runs, two at a time, one per
learning rate, warm-up and dropout and per length in steps, on the Python standard library's
docstrings (a corpus of the same kind but not the benchmark's, so the preset is not tuned
on it). Every fine-tune run takes the same time per step, so lengths in steps rank the
settings as minutes would, and unlike minutes they do not depend on the machine's load.

--stopping measures when a fine-tuning run stops: the README's command (`train DATA --out
RUN --init-from checkpoints/shakespeare.safetensors --max-minutes M`, the fine-tune preset
and its early stopping, one thread) on the first N characters of numpy's docstrings, a
small text and a larger one, both at once for each budget. Both are scored on the same
held-out text, the corpus's last HELD_OUT_CHARS characters (after every text's end, so no
run trained or validated on it; scored in HELD_OUT_STREAMS streams for speed): the last
weights, the best ones, the minute the run stopped and its one-line summary. Writes
benchmarks/results/<name>_<date>.md. `--steps` limits the runs in steps instead (the
README's command with `--max-steps N` for `--max-minutes M`): on a machine shared with other
work a time limit buys far fewer steps than the same minutes of a free core, and a limit
in steps runs the schedule a free core would (about 480 steps a minute on one thread of
the machine below, `benchmarks/results/fine_tune.md`). The minute a run stopped is then
its CPU time, which is what its wall-clock time would be on a free core.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from time_to_loss import RESULTS, ROOT  # benchmarks/ is the script's own directory

from model.checkpoint import Checkpoint, load_checkpoint
from training.batches import ColumnBatches
from training.dataset import load_prepared
from training.evaluate import EVAL_SEQ_LEN, bits_per_char, evaluate_text, total_loss

CHECKPOINT = ROOT / "checkpoints" / "shakespeare.safetensors"
# Evaluations during a run: a cheap partial one for the curve (8 batches of 64 × 32).
EVAL_EVERY, EVAL_BATCHES = 200, 8
# --stopping: the held-out text, the end of the corpus, and the texts' default sizes. It
# is scored on one thread as 8 streams of ~19,000 characters, each from a zero state: 2.5×
# as fast as one stream (30,000 characters: 2.4 s against 6.1 s on a loaded core), within
# 0.002 bits/char of it.
HELD_OUT_CHARS, HELD_OUT_STREAMS = 150_000, 8
STOPPING_SIZES = "300000,1500000"
# (lr, warm-up steps, dropout); (1e-2, 100) is the default recipe's, dropout None the
# checkpoint's own (0.5).
SWEEP = [
    (3e-3, 20, None),
    (5e-3, 20, None),
    (1e-2, 20, None),
    (1e-2, 100, None),
    (2e-2, 20, None),
    (4e-2, 20, None),
    (1e-2, 20, 0.25),
    (2e-2, 20, 0.25),
    (2e-2, 20, 0.1),
    (2e-2, 20, 0.0),
]


def docstring_corpus(root: Path) -> str:
    """The docstrings (module, class, function) of every .py file under `root`, test
    folders left out, in sorted path order, one blank line between two."""
    texts = []
    for path in sorted(root.rglob("*.py")):
        if {"tests", "test", "site-packages", "idlelib"} & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            kinds = ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
            if isinstance(node, kinds) and (doc := ast.get_docstring(node)):
                texts.append(doc.strip())
    return "\n\n".join(texts) + "\n"


def prepared(text: str, workdir: Path, name: str) -> Path:
    (workdir / f"{name}.txt").write_text(text, encoding="utf-8")
    data = workdir / f"{name}-data"
    command = ["prepare", str(workdir / f"{name}.txt"), "--out", str(data), "--no-progress"]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "training", *command], check=True, cwd=ROOT, env=env)
    return data


def train_commands(data: Path, out: Path, limit: list[str], init: bool, extra: list[str]):
    command = [sys.executable, "-m", "training", "train", str(data), "--out", str(out)]
    command += [*limit, "--threads", "1", "--no-progress"]
    command += ["--eval-every", str(EVAL_EVERY), "--eval-batches", str(EVAL_BATCHES)]
    command += ["--sample-length", "0", *extra]
    return command + (["--init-from", str(CHECKPOINT)] if init else [])


def run_together(commands: list[list[str]], logs: Path) -> None:
    """Start the commands at once (one thread each) and wait for all; their output goes to
    numbered files in `logs`, shown when a run fails."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    processes = []
    for n, command in enumerate(commands):
        log = (logs / f"run-{n}.log").open("w")
        processes.append((subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log), n))
    for process, n in processes:
        if process.wait() != 0:
            raise SystemExit(f"a run failed: {commands[n]}\n{(logs / f'run-{n}.log').read_text()}")


def score(run: Path, val_text: str) -> dict:
    """The run's last weights on the validation text, one stream; the same for its best
    weights (best.safetensors: kept at the evaluation with the lowest validation loss,
    what a user samples from); and its curve."""
    checkpoint = load_checkpoint(run / "last.safetensors")
    bits = evaluate_text(checkpoint, val_text).bits_per_char
    best = evaluate_text(load_checkpoint(run / "best.safetensors"), val_text).bits_per_char
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["elapsed_seconds"] / 60, r["val_bits_per_char"]) for r in records]
    return {"bits": bits, "best": best, "steps": checkpoint.info["step"], "curve": curve}


def val_text(data: Path) -> str:
    corpus = load_prepared(data)
    return corpus.vocab.decode(np.asarray(corpus.val).tolist())


def machine() -> str:
    model = platform.processor() or "?"
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if "Model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores"


def benchmark(budgets: list[float], chars: int | None, name: str) -> None:
    rows, curves = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data = prepared(docstring_corpus(Path(np.__file__).parent)[:chars], workdir, "numpy")
        text = val_text(data)
        for minutes in budgets:
            runs = {kind: workdir / f"{kind}-{minutes:g}" for kind in ("scratch", "fine-tune")}
            limit = ["--max-minutes", str(minutes)]
            started = time.monotonic()
            run_together(
                [
                    train_commands(data, runs["scratch"], limit, False, []),
                    train_commands(data, runs["fine-tune"], limit, True, []),
                ],
                workdir,
            )
            results = {kind: score(path, text) for kind, path in runs.items()}
            curves[minutes] = {kind: r["curve"] for kind, r in results.items()}
            rows.append((minutes, results["scratch"], results["fine-tune"]))
            print(
                f"{minutes:g} min: scratch {results['scratch']['bits']:.4f} bits/char "
                f"({results['scratch']['steps']} steps; best {results['scratch']['best']:.4f}), "
                f"fine-tune {results['fine-tune']['bits']:.4f} "
                f"({results['fine-tune']['steps']} steps; best {results['fine-tune']['best']:.4f}) "
                f"[{time.monotonic() - started:.0f} s]",
                flush=True,
            )
        corpus_chars = len(load_prepared(data).train) + len(text)
    write_results(rows, curves, corpus_chars, len(text), chars, name)


def write_results(
    rows: list, curves: dict, corpus_chars: int, val_chars: int, chars: int | None, name: str
) -> None:
    options = f" --chars {chars} --name {name}" if chars else ""
    lines = [
        "# Fine-tuning the shipped model against training from scratch",
        "",
        f"`python benchmarks/fine_tune.py --minutes {','.join(f'{r[0]:g}' for r in rows)}"
        f"{options}`, "
        f"{time.strftime('%Y-%m-%d')}, {machine()}; numpy {np.__version__}'s docstrings"
        f"{f', the first {chars:,} characters' if chars else ''} "
        f"({corpus_chars:,} chars, validation: the last {val_chars:,}); one thread per run, "
        "both runs of a budget at the same time.",
        "",
        "Validation bits/char of each run's last weights (steps), and of its best weights "
        "(best.safetensors, chosen by the run's own partial evaluations every "
        f"{EVAL_EVERY} steps).",
        "",
        "| CPU minutes | scratch: last (steps) | scratch: best | fine-tune: last (steps) "
        "| fine-tune: best |",
        "|--:|--:|--:|--:|--:|",
    ]
    for minutes, scratch, tuned in rows:
        lines.append(
            f"| {minutes:g} | {scratch['bits']:.4f} ({scratch['steps']}) | "
            f"{scratch['best']:.4f} | {tuned['bits']:.4f} ({tuned['steps']}) | "
            f"{tuned['best']:.4f} |"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    plot(rows, curves, RESULTS / f"{name}.png")


def plot(rows: list, curves: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    longest = max(curves)
    for kind, colour in (("scratch", "tab:blue"), ("fine-tune", "tab:orange")):
        minutes, bits = zip(*curves[longest][kind], strict=True)
        axes.plot(minutes, bits, color=colour, alpha=0.5, label=f"{kind}, during {longest:g} min")
        ends = [(r[0], r[1 if kind == "scratch" else 2]["bits"]) for r in rows]
        axes.plot(*zip(*ends, strict=True), "o", color=colour, label=f"{kind}, at the end")
    axes.set_xlabel("CPU minutes (one thread)")
    axes.set_ylabel("validation bits/char")
    axes.set_title("numpy docstrings: fine-tuning the Shakespeare model vs from scratch")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png")


def sweep(lengths: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        data = prepared(docstring_corpus(stdlib)[:1_600_000], workdir, "stdlib")
        text = val_text(data)
        print("sweep: fine-tune runs on the standard library's docstrings")
        # dropout None: the checkpoint's own, given outright (the preset sets another)
        own = load_checkpoint(CHECKPOINT).config.dropout
        runs = [
            (steps, lr, warmup, own if dropout is None else dropout)
            for steps in lengths
            for lr, warmup, dropout in SWEEP
        ]
        for pair in range(0, len(runs), 2):
            settings = runs[pair : pair + 2]
            outs = [workdir / "-".join(map(str, setting)) for setting in settings]
            commands = [
                train_commands(data, out, ["--max-steps", str(steps)], True, flags(*setting))
                for out, (steps, *setting) in zip(outs, settings, strict=True)
            ]
            run_together(commands, workdir)
            for (steps, lr, warmup, dropout), out in zip(settings, outs, strict=True):
                bits = score(out, text)["bits"]
                print(
                    f"{steps} steps, lr {lr:g}, warm-up {warmup}, dropout {dropout:g}: "
                    f"{bits:.4f} bits/char",
                    flush=True,
                )


def stopping(budgets: list[float], sizes: list[int], name: str, steps: bool) -> None:
    rows = []
    torch.set_num_threads(1)  # scoring beside the runs: more threads only contend
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        corpus = docstring_corpus(Path(np.__file__).parent)
        held_out = corpus[-HELD_OUT_CHARS:]
        if max(sizes) > len(corpus) - HELD_OUT_CHARS:
            raise SystemExit(f"--sizes: at most {len(corpus) - HELD_OUT_CHARS:,} characters")
        data = {size: prepared(corpus[:size], workdir, f"numpy-{size}") for size in sizes}
        for minutes in budgets:
            runs = {size: workdir / f"run-{size}-{minutes:g}" for size in sizes}
            limit = ["--max-steps", f"{minutes:g}"] if steps else ["--max-minutes", f"{minutes:g}"]
            readme = ["--init-from", str(CHECKPOINT), *limit]
            train = [sys.executable, "-m", "training", "train"]
            commands = [
                [*train, str(data[size]), "--out", str(run), *readme, "--threads", "1"]
                for size, run in runs.items()
            ]
            cpu_seconds = run_timed(commands, workdir)
            for n, (size, run) in enumerate(runs.items()):
                log = (workdir / f"run-{n}.log").read_text().splitlines()
                summary = next(line for line in reversed(log) if line.startswith("done ("))
                row = stopped_run(run, held_out) | {"summary": summary.replace(tmp, "…")}
                row["reason"] = summary.removeprefix("done (").split(")")[0]
                row["cpu_minutes"] = cpu_seconds[n] / 60
                rows.append((minutes, size, row))
                print(
                    f"{size:,} chars, {minutes:g} {'steps' if steps else 'min'}: {row['reason']} "
                    f"at {row['minutes']:.2f} min ({row['cpu_minutes']:.2f} CPU min), step "
                    f"{row['steps']} ({row['epochs']:.1f} passes); held-out bits/char last "
                    f"{row['last']:.4f}, best {row['best']:.4f} (step {row['best_step']})",
                    flush=True,
                )
    write_stopping(rows, budgets, sizes, name, steps)


def run_timed(commands: list[list[str]], logs: Path) -> list[float]:
    """run_together's, returning each run's CPU seconds (user and system)."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    processes = {}
    for n, command in enumerate(commands):
        log = (logs / f"run-{n}.log").open("w")
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        processes[process.pid] = n
    seconds = [0.0] * len(commands)
    while processes:
        pid, status, usage = os.wait4(-1, 0)
        if pid not in processes:
            continue
        n = processes.pop(pid)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"a run failed: {commands[n]}\n{(logs / f'run-{n}.log').read_text()}")
        seconds[n] = usage.ru_utime + usage.ru_stime
    return seconds


def stopped_run(run: Path, held_out: str) -> dict:
    """A finished run's last and best weights on the held-out text, and where it stopped."""
    last = load_checkpoint(run / "last.safetensors")
    best = load_checkpoint(run / "best.safetensors")
    return {
        "last": held_out_bits(last, held_out),
        "best": held_out_bits(best, held_out),
        "steps": last.info["step"],
        "epochs": last.info["epoch"],
        "minutes": last.info["elapsed_seconds"] / 60,
        "best_step": best.info["step"],
        "best_minutes": best.info["elapsed_seconds"] / 60,
    }


def held_out_bits(checkpoint: Checkpoint, text: str) -> float:
    """Bits/char of `text` in HELD_OUT_STREAMS streams; characters the model lacks are left
    out, as `eval` does."""
    vocab = checkpoint.vocab
    ids = np.asarray(vocab.encode("".join(c for c in text if c in vocab)), dtype=np.int64)
    batches = ColumnBatches(ids, HELD_OUT_STREAMS, EVAL_SEQ_LEN, drop_last=False)
    nats, count = total_loss(checkpoint.build_model(), batches)
    return bits_per_char(nats / count)


def write_stopping(
    rows: list, budgets: list[float], sizes: list[int], name: str, steps: bool
) -> None:
    date = time.strftime("%Y-%m-%d")
    limit, unit = ("--max-steps N", "steps") if steps else ("--max-minutes M", "min")
    budget = f"--{'steps' if steps else 'minutes'} {','.join(f'{b:g}' for b in budgets)}"
    lines = [
        "# When a fine-tuning run stops",
        "",
        f"`python benchmarks/fine_tune.py --stopping {budget}"
        f" --sizes {','.join(map(str, sizes))}`, {date}, {machine()} (shared with other work); "
        f"numpy {np.__version__}'s docstrings. Each run is the README's command, `train DATA "
        f"--out RUN --init-from checkpoints/shakespeare.safetensors {limit}` (the "
        "fine-tune preset: evaluations twice a pass, patience 4) with `--threads 1`, on the "
        "first N characters (validation during the run: their last 10 %); the runs of a "
        "budget start together. Held out: the corpus's last "
        f"{HELD_OUT_CHARS:,} characters, scored as {HELD_OUT_STREAMS} streams on each run's "
        "last weights "
        "(`last.safetensors`) and best ones (`best.safetensors`, what the run says to serve).",
        "",
        f"| text (chars) | budget ({unit}) | stopped by | at minute (CPU minutes) | steps "
        "(passes) | best at step (minute) | held-out bits/char: last | best |",
        "|--:|--:|---|--:|--:|--:|--:|--:|",
    ]
    for budget_value, size, r in rows:
        lines.append(
            f"| {size:,} | {budget_value:g} | {r['reason']} | {r['minutes']:.2f} "
            f"({r['cpu_minutes']:.2f}) | {r['steps']:,} ({r['epochs']:.1f}) | "
            f"{r['best_step']:,} ({r['best_minutes']:.2f}) | {r['last']:.4f} | {r['best']:.4f} |"
        )
    lines += ["", "Each run's last line:", "", "```"]
    lines += [r["summary"] for _, _, r in rows]
    lines += ["```"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}_{date}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def flags(lr: float, warmup: int, dropout: float) -> list[str]:
    # Every run to its length: the preset's early stopping would end some sooner.
    return [
        *("--lr", str(lr), "--warmup-steps", str(warmup), "--dropout", str(dropout)),
        *("--patience", "none"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", default="2,5,10", help="budgets, comma-separated")
    parser.add_argument("--chars", type=int, default=None, help="the corpus's first N chars")
    parser.add_argument("--name", default="fine_tune", help="result file name")
    parser.add_argument("--sweep", action="store_true", help="measure the fine-tune preset")
    parser.add_argument("--sweep-steps", default="550,1650", help="run lengths, comma-separated")
    parser.add_argument("--stopping", action="store_true", help="when a fine-tune run stops")
    parser.add_argument("--sizes", default=STOPPING_SIZES, help="--stopping's texts, in chars")
    parser.add_argument("--steps", default=None, help="--stopping: budgets in steps instead")
    args = parser.parse_args()
    if args.sweep:
        sweep([int(n) for n in args.sweep_steps.split(",")])
    elif args.stopping:
        name = "fine_tune_stopping" if args.name == "fine_tune" else args.name
        budgets = [float(m) for m in (args.steps or args.minutes).split(",")]
        sizes = [int(n) for n in args.sizes.split(",")]
        stopping(budgets, sizes, name, steps=args.steps is not None)
    else:
        benchmark([float(m) for m in args.minutes.split(",")], args.chars, args.name)


if __name__ == "__main__":
    main()
