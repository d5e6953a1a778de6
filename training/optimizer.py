"""The optimizer of a training run, built from the config (and re-tuned on resume)."""

from __future__ import annotations

import torch

from model.network import CharRNN
from training.config import TrainConfig


def build_optimizer(model: CharRNN, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam(W) with weight decay on the matrices only: decaying biases only hurts."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": matrices}, {"params": vectors}]
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    optimizer = kind(groups, lr=config.lr)
    set_hyperparameters(optimizer, config)
    return optimizer


def set_hyperparameters(optimizer: torch.optim.Optimizer, config: TrainConfig) -> None:
    matrices, vectors = optimizer.param_groups
    for group in (matrices, vectors):
        group["betas"] = config.betas
    matrices["weight_decay"], vectors["weight_decay"] = config.weight_decay, 0.0
