"""Does a moving average of the weights score better than the weights themselves?

    python benchmarks/weight_average.py [--steps 3800] [--decays 0.99,0.995,0.998,0.999]

One run of the default model and recipe on tiny Shakespeare (first 90 % train, last 10 %
validation) with the raw weights evaluated (ema_decay 0), and next to it one moving
average per decay, each folded in after every step and evaluated at every evaluation of
the same run: a paired comparison, free of the machine's speed and of run-to-run noise.
Prints the table, writes benchmarks/results/weight_average_<steps>steps.md, and ends with
the gain of the best decay at the last step.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from time_to_loss import RESULTS, ROOT  # benchmarks/ is the script's own directory

from training.dataset import load_prepared
from training.evaluate import validation_loss
from training.loop import Trainer, TrainHooks
from training.prepare import PrepareConfig, prepare
from training.recipe import TrainConfig
from training.run import EvalRecord
from training.step import WeightAverage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--text", type=Path, default=ROOT.parent / "shared/data/tinyshakespeare.txt"
    )
    parser.add_argument("--steps", type=int, default=3800)
    parser.add_argument("--eval-every", type=int, default=950)
    parser.add_argument("--decays", default="0.99,0.995,0.998,0.999")
    args = parser.parse_args()
    decays = [float(d) for d in args.decays.split(",")]
    rows: list[tuple[int, float, list[float]]] = []
    with tempfile.TemporaryDirectory() as data_dir, tempfile.TemporaryDirectory() as out_dir:
        prepare([str(args.text)], Path(data_dir), PrepareConfig(), progress=False)
        config = TrainConfig(
            Path(data_dir),
            Path(out_dir),
            max_steps=args.steps,
            eval_every=args.eval_every,
            sample_length=0,
            ema_decay=0.0,  # the run itself evaluates its raw weights
        )
        trainer = Trainer(config, load_prepared(Path(data_dir)), progress=False)
        averages = [WeightAverage(trainer.model, decay) for decay in decays]
        seconds = [0.0]

        def fold_in() -> bool:  # polled after every step
            started = time.perf_counter()
            for average in averages:
                average.update(trainer.model)
            seconds[0] += time.perf_counter() - started
            return False

        def evaluate(record: EvalRecord) -> None:
            scores = [validation_loss(a.model, trainer.val_batches) for a in averages]
            rows.append((record.step, record.val_loss, scores))
            shown = " ".join(f"{d}: {s:.4f}" for d, s in zip(decays, scores, strict=True))
            print(f"step {record.step}: raw {record.val_loss:.4f} | {shown}", flush=True)

        trainer.hooks = TrainHooks(should_stop=fold_in, on_evaluation=evaluate)
        trainer.run()
    per_update = seconds[0] / args.steps / len(decays) * 1e3
    lines = [
        f"# Weight averaging: the raw weights and their moving averages, {args.steps} steps",
        "",
        "Default model and recipe, tiny Shakespeare; validation nats/char of one run's raw",
        "weights and, at the same steps, of its exponential moving averages (by decay).",
        "",
        "| step | raw | " + " | ".join(f"EMA {d}" for d in decays) + " |",
        "|--:|--:|" + "--:|" * len(decays),
    ]
    for step, raw, scores in rows:
        lines.append(f"| {step} | {raw:.4f} | " + " | ".join(f"{s:.4f}" for s in scores) + " |")
    lines += [
        "",
        "The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so a decay",
        f"above {1 - 9 / (10 + args.steps):.4f} follows that warm-up for the whole run.",
        f"One update costs {per_update:.2f} ms (one average).",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"weight_average_{args.steps}steps.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    step, raw, scores = rows[-1]
    best = min(range(len(decays)), key=lambda i: scores[i])
    print(
        f"weight average at step {step}: {scores[best]:.4f} (decay {decays[best]}) "
        f"against {raw:.4f} raw, {scores[best] - raw:+.4f} nats/char"
    )


if __name__ == "__main__":
    main()
