"""loss.png: training and validation loss against the step."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path


def plot_losses(records: Sequence[Mapping], path: Path) -> None:
    """Draw the metrics records' train_loss and val_loss (nats/char) against step into a
    PNG at `path`, replaced atomically. matplotlib is imported here, not at module import
    (it is slow to load), and drawn through the Agg canvas without pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        if points:
            steps, losses = zip(*points, strict=True)
            axes.plot(steps, losses, marker="." if len(points) < 30 else None, label=label)
    axes.set_xlabel("step")
    axes.set_ylabel("loss (nats/char)")
    axes.grid(alpha=0.3)
    if records:
        axes.legend()
    figure.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    figure.savefig(tmp, format="png")
    os.replace(tmp, path)
