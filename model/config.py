"""The network's configuration: every default of the model in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

CellType = Literal["lstm", "gru", "rnn"]
CELLS: tuple[str, ...] = ("lstm", "gru", "rnn")


@dataclass(frozen=True)
class ModelConfig:
    """The default is the product's model: one-hot(V) → 2×256 LSTM, dropout 0.5 between the
    layers and after the last → Linear(256, V)."""

    vocab_size: int
    hidden_size: int = 256
    num_layers: int = 2
    dropout: float = 0.5
    cell: CellType = "lstm"

    def __post_init__(self) -> None:
        if self.vocab_size < 1:
            raise ValueError(f"vocab_size must be at least 1, got {self.vocab_size}")
        if self.hidden_size < 1:
            raise ValueError(f"hidden_size must be at least 1, got {self.hidden_size}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {self.num_layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {self.cell!r}")

    @property
    def gate_count(self) -> int:
        """Blocks of hidden_size rows in each input/recurrent weight (PyTorch's layout)."""
        return {"lstm": 4, "gru": 3, "rnn": 1}[self.cell]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ModelConfig:
        known = {
            k: data[k]
            for k in ("vocab_size", "hidden_size", "num_layers", "dropout", "cell")
            if k in data
        }
        return cls(**known)
