"""Which training recipe gives the lowest validation loss per CPU-minute (default model)?

    python benchmarks/recipe_sweep.py [--minutes 2.5 | --steps N] [--recipes default,b32,...]

Trains the default model (2×256 LSTM, dropout 0.5) with each recipe for the same
wall-clock budget on tiny Shakespeare (first 90 % train, last 10 % validation) and prints
the best validation loss of each; writes benchmarks/results/<--name>.md. Run on a
quiet machine: every recipe gets the same minutes, so its speed counts as much as its
loss per step. `--steps N` gives every recipe N steps instead (the cosine's horizon is N):
on a shared machine whose speed drifts by ±15 % from one run to the next, that compares
recipes of the same step cost without the drift.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from time_to_loss import RESULTS, ROOT, train_ours

from training.prepare import PrepareConfig, prepare

RECIPES: dict[str, dict] = {
    "seed-recipe": dict(
        batch_size=128,
        seq_len=100,
        lr=1e-3,
        optimizer="adam",
        schedule="constant",
        warmup_steps=0,
        grad_clip=5.0,
        betas=(0.9, 0.999),
    ),
    "default": {},
    "b32": dict(batch_size=32),
    "t64": dict(seq_len=64),
    "lr5e-3": dict(lr=5e-3),
    "b128-lr4e-3": dict(batch_size=128, lr=4e-3),
    "lr2e-3": dict(lr=2e-3),
    "lr6e-3": dict(lr=6e-3),
    "b32-lr5e-3": dict(batch_size=32, lr=5e-3),
    "b32-lr6e-3": dict(batch_size=32, lr=6e-3),
    "b32-t64": dict(batch_size=32, seq_len=64),
    "lr1e-2": dict(lr=1e-2),
    "b32-lr8e-3": dict(batch_size=32, lr=8e-3),
    "t32": dict(seq_len=32),
    "b128-t32": dict(batch_size=128, seq_len=32),
    "floor0": dict(min_lr_ratio=0.0),
    "b32-floor0": dict(batch_size=32, min_lr_ratio=0.0),
    "lr8e-3": dict(lr=8e-3),
    "lr1.5e-2": dict(lr=1.5e-2),
    "lr2e-2": dict(lr=2e-2),
    "b32-lr1e-2": dict(batch_size=32, lr=1e-2),
    "t16": dict(seq_len=16),
    "warmup300": dict(warmup_steps=300),
    "clip5": dict(grad_clip=5.0),
    "beta2-0.95": dict(betas=(0.9, 0.95)),
    "wd0.2": dict(weight_decay=0.2),
    "fb1": dict(forget_bias=1.0),
    "wd0.1-fb1": dict(weight_decay=0.1, forget_bias=1.0),
    "nadam": dict(optimizer="nadam"),
    "wd0.05": dict(weight_decay=0.05),
    "wd0.1": dict(weight_decay=0.1),
    "no-ema": dict(ema_decay=0.0),
    "lr1.3e-2": dict(lr=1.3e-2),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--text", type=Path, default=ROOT.parent / "shared/data/tinyshakespeare.txt"
    )
    parser.add_argument("--minutes", type=float, default=2.5)
    parser.add_argument("--steps", type=int, default=None, help="a step budget instead")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run")
    parser.add_argument("--name", default="recipe_sweep", help="result file name")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as data_dir:
        prepare([str(args.text)], Path(data_dir), PrepareConfig(), progress=False)
        for name in args.recipes.split(","):
            print(f"{name}: {RECIPES[name] or 'the defaults'}", flush=True)
            recipe = {**RECIPES[name], "threads": args.threads, "max_steps": args.steps}
            minutes = None if args.steps else args.minutes
            curve = train_ours(Path(data_dir), minutes, args.eval_every, **recipe)
            rows.append((name, RECIPES[name], min(v for _, v in curve)))
    budget = f"{args.steps} steps" if args.steps else f"{args.minutes:g} minutes"
    lines = [
        f"# Recipe sweep: best validation loss within {budget}",
        "",
        f"Evaluated every {args.eval_every} steps and at the end, in the budget.",
        "",
        "| recipe | changes from the defaults | best val nats/char |",
        "|---|---|--:|",
    ]
    lines += [f"| {n} | {r or '—'} | {v:.4f} |" for n, r, v in rows]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    best = min(rows, key=lambda row: row[2])
    print(f"best recipe within {budget}: {best[0]} ({best[2]:.4f} nats/char)")


if __name__ == "__main__":
    main()
