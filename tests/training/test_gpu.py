"""Training on a CUDA GPU: each precision, and the two recurrences agreeing there. Skipped
without CUDA (select them with `pytest -m gpu`)."""

import math

import pytest
import torch
import torch.nn.functional as F

from model.checkpoint import load_checkpoint
from model.config import ModelConfig
from model.network import CharRNN
from training.dataset import load_prepared
from training.loop import Trainer
from training.recipe import TrainConfig

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture
def exact_fp32():
    """No TF32 in cuDNN and matmuls, so fp32 results compare at fp32 precision."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_trains_on_cuda_in_each_precision(tmp_path, data_dir, precision):
    config = TrainConfig(
        data_dir,
        tmp_path / "run",
        hidden_size=32,
        batch_size=8,
        seq_len=32,
        lr=1e-2,
        warmup_steps=2,
        max_steps=8,
        eval_every=4,
        sample_length=10,
        device="cuda",
        precision=precision,
    )
    trainer = Trainer(config, load_prepared(data_dir), progress=False)
    assert trainer.device.type == "cuda" and trainer.impl == "torch"
    result = trainer.run()
    assert result.step == 8 and math.isfinite(result.last_val_loss)
    assert result.last_val_loss < math.log(len(load_prepared(data_dir).vocab))  # it learnt
    state = load_checkpoint(tmp_path / "run" / "last.safetensors").training_state
    assert ("grad_scaler" in state) == (precision != "fp32")
    assert all(h.dtype == torch.float32 for h in state["hidden"])  # carried in fp32


def test_the_cpu_kernel_and_cudnn_agree(exact_fp32):
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(30, 64, 2, 0.0, "lstm")).cuda().train()
    ids = torch.randint(0, 30, (8, 40), device="cuda")
    targets = torch.randint(0, 30, (8, 40), device="cuda")
    hidden = tuple(torch.randn(2, 8, 64, device="cuda") * 0.5 for _ in range(2))
    results = {}
    for impl in ("fused", "torch"):  # the fused kernel on the CPU, cuDNN on the GPU
        device = "cpu" if impl == "fused" else "cuda"
        model.to(device).zero_grad()
        logits, (h, c) = model(ids.to(device), tuple(x.to(device) for x in hidden), impl)
        logits, h, c = logits.cuda(), h.cuda(), c.cuda()
        F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
        grads = [p.grad.cuda() for p in model.parameters()]
        results[impl] = (logits.detach(), h.detach(), c.detach(), grads)
    fused, cudnn = results["fused"], results["torch"]
    for a, b in zip(fused[:3], cudnn[:3], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    for a, b in zip(fused[3], cudnn[3], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_batches_reach_the_gpu_from_pinned_memory(data_dir):
    corpus = load_prepared(data_dir)
    config = TrainConfig(data_dir, "unused", batch_size=4, seq_len=16, max_steps=1)
    trainer = Trainer(config.with_changes(device="cuda"), corpus, progress=False)
    inputs, _ = trainer.train_batches.window(0, pin_memory=True)
    assert inputs.is_pinned()
    moved = inputs.to("cuda", non_blocking=True)
    torch.cuda.synchronize()
    assert torch.equal(moved.cpu(), inputs)
