"""Best validation loss per CPU-minute: our default model and recipe against the seed's.

    python benchmarks/time_to_loss.py [--text ../shared/data/tinyshakespeare.txt] [--minutes 10]

Trains on the text (first 90 % train, last 10 % validation, the split published results
use) for a fixed wall-clock budget each, evaluation time included: first our default
model with our default recipe (python -m training train), then the seed's plain
implementation and recipe (benchmarks/naive_seed.py: Adam 1e-3, batch 128 × 100, no
schedule). Both evaluate the whole validation split about every `--eval-seconds`.
Writes both validation curves as benchmarks/results/time_to_loss.png and a markdown table
as benchmarks/results/time_to_loss.md; the last line printed is the key figure.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from naive_seed import SeedTrainer, get_batches

from training.dataset import load_prepared
from training.loop import Trainer, TrainHooks
from training.prepare import PrepareConfig, prepare
from training.recipe import TrainConfig, preset
from training.run import EvalRecord

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
Curve = list[tuple[float, float]]  # (elapsed seconds, validation nats/char)


def train_ours(data_dir: Path, minutes: float | None, eval_every: int, **recipe) -> Curve:
    curve: Curve = []

    def record(evaluation: EvalRecord) -> None:
        curve.append((evaluation.elapsed_seconds, evaluation.val_loss))
        print(
            f"  ours     {evaluation.elapsed_seconds:6.0f}s step {evaluation.step:5d} "
            f"val {evaluation.val_loss:.4f}",
            flush=True,
        )

    with tempfile.TemporaryDirectory() as out_dir:
        config = TrainConfig(
            data_dir=data_dir,
            out_dir=Path(out_dir),
            max_minutes=minutes,
            eval_every=eval_every,
            sample_length=0,
            **recipe,
        )
        Trainer(
            config, load_prepared(data_dir), progress=False, hooks=TrainHooks(on_evaluation=record)
        ).run()
    return curve


def train_baseline(data_dir: Path, minutes: float, eval_every: int) -> Curve:
    corpus = load_prepared(data_dir)
    train, val = np.asarray(corpus.train, dtype=np.int64), np.asarray(corpus.val, dtype=np.int64)
    torch.manual_seed(0)
    trainer = SeedTrainer(len(corpus.vocab))
    curve: Curve = []
    started, step, budget = time.monotonic(), 0, minutes * 60
    while time.monotonic() - started < budget:
        trainer.hidden = trainer.net.init_hidden(trainer.batch_size)
        for x, y in get_batches(train, trainer.batch_size, trainer.seq_length):
            trainer.step(x, y)
            step += 1
            done = time.monotonic() - started >= budget
            if step % eval_every == 0 or done:
                curve.append((time.monotonic() - started, trainer.validation_loss(val)))
                print(
                    f"  baseline {curve[-1][0]:6.0f}s step {step:5d} val {curve[-1][1]:.4f}",
                    flush=True,
                )
            if done:
                break
    return curve


def write_results(curves: dict[str, Curve], minutes: float, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, curve in curves.items():
        axes.plot([t / 60 for t, _ in curve], [v for _, v in curve], marker="o", label=label)
    axes.set_xlabel("wall-clock minutes (2 CPU cores)")
    axes.set_ylabel("validation loss (nats/char)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(RESULTS / f"{name}.png", dpi=110)
    lines = [
        f"# Validation loss within {minutes:g} minutes",
        "",
        "| run | minutes | val nats/char |",
        "|---|--:|--:|",
    ]
    for label, curve in curves.items():
        lines += [f"| {label} | {t / 60:.1f} | {v:.4f} |" for t, v in curve]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--text", type=Path, default=ROOT.parent / "shared/data/tinyshakespeare.txt"
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--runs", default="ours,baseline")
    parser.add_argument("--ours-eval-every", type=int, default=500, help="steps")
    parser.add_argument("--baseline-eval-every", type=int, default=100, help="steps")
    parser.add_argument("--name", default="time_to_loss", help="result file name")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (both runs)")
    parser.add_argument(
        "--preset", default="default", help="our run's preset (training.recipe.PRESETS)"
    )
    args = parser.parse_args()
    curves: dict[str, Curve] = {}
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as data_dir:
        prepare([str(args.text)], Path(data_dir), PrepareConfig(), progress=False)
        for run in args.runs.split(","):
            print(f"{run}: {args.minutes:g} minutes", flush=True)
            if run == "ours":
                curves[f"ours ({args.preset} preset)"] = train_ours(
                    Path(data_dir),
                    args.minutes,
                    args.ours_eval_every,
                    threads=args.threads,
                    **preset(args.preset),
                )
            else:
                curves["seed baseline"] = train_baseline(
                    Path(data_dir), args.minutes, args.baseline_eval_every
                )
    write_results(curves, args.minutes, args.name)
    best = {label: min(v for _, v in curve) for label, curve in curves.items()}
    print(
        "time to loss: "
        + ", ".join(f"{k} best {v:.4f} nats/char" for k, v in best.items())
        + f" within {args.minutes:g} min"
    )


if __name__ == "__main__":
    main()
