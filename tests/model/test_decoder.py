import numpy as np
import pytest
import torch

from model.config import ModelConfig
from model.decoder import BatchDecoder, Request, UniformStream
from model.network import CharRNN
from model.sampling import SamplingConfig


@pytest.fixture
def model():
    torch.manual_seed(0)
    return CharRNN(ModelConfig(vocab_size=23, hidden_size=32, num_layers=2)).eval()


@pytest.fixture(params=["kernel", "torch"])
def backend(request):
    return request.param


def decode_alone(model, prime, config, seed, length, backend="auto"):
    decoder = BatchDecoder(model, capacity=1, backend=backend)
    decoder.add(prime, config, seed)
    out = []
    for _ in range(length):
        ids = decoder.sample()
        out.append(int(ids[0]))
        decoder.advance(ids)
    return out


def test_seeded_stream_is_identical_alone_and_among_30_others(model, backend):
    config = SamplingConfig(temperature=0.9, top_k=10, top_p=0.95)
    alone = decode_alone(model, [1, 2, 3], config, seed=42, length=120, backend=backend)

    rng = np.random.default_rng(0)
    decoder = BatchDecoder(model, capacity=40, backend=backend)
    # Others join before and after, with other settings, and some leave midway.
    others = [
        decoder.add(
            rng.integers(0, 23, size=int(rng.integers(1, 9))).tolist(),
            SamplingConfig(temperature=float(rng.uniform(0.3, 2.0))),
            seed=n,
        )
        for n in range(15)
    ]
    assert others == list(range(15))
    target = decoder.add([1, 2, 3], config, seed=42)
    owners = {row: ("other", row) for row in range(15)}
    owners[target] = ("target", 0)
    ours = []
    for step in range(120):
        if step == 5:
            for n in range(15):
                owners[decoder.add([n % 23], SamplingConfig(top_p=0.5), seed=100 + n)] = ("late", n)
        ids = decoder.sample()
        decoder.advance(ids)
        for row in range(decoder.size):
            if owners[row][0] == "target":
                ours.append(int(ids[row]))
        if step in (10, 40):  # some leave; the last row moves into the hole
            for row in (0, 3, 7):
                moved = decoder.remove(row)
                if moved is not None:
                    owners[row] = owners.pop(moved)
                else:
                    owners.pop(row)
    assert ours == alone


def test_different_seeds_give_different_text(model):
    config = SamplingConfig()
    assert decode_alone(model, [1], config, 1, 60) != decode_alone(model, [1], config, 2, 60)


def test_uniform_stream_blocks_continue_one_sequence():
    stream = UniformStream(7)
    blocks = np.concatenate([stream.block(64), stream.block(64)])
    direct = np.random.Generator(np.random.PCG64(7)).random(128)
    assert np.array_equal(blocks, direct)


def test_capacity_and_removal(model, backend):
    decoder = BatchDecoder(model, capacity=2, backend=backend)
    decoder.add([1], SamplingConfig(), 1)
    decoder.add([2], SamplingConfig(), 2)
    assert decoder.full
    with pytest.raises(RuntimeError):
        decoder.add([3], SamplingConfig(), 3)
    assert decoder.remove(0) == 1 and decoder.size == 1
    assert decoder.remove(0) is None and decoder.size == 0
    with pytest.raises(IndexError):
        decoder.remove(0)


def test_primes_batched_in_one_call_match_primes_added_one_by_one(model, backend):
    requests = [Request([1, 2, 3], SamplingConfig(), 1), Request([4], SamplingConfig(), 2)]
    together = BatchDecoder(model, capacity=2, backend=backend)
    assert together.add_many(requests) == [0, 1]
    apart = BatchDecoder(model, capacity=2, backend=backend)
    for request in requests:
        apart.add(request.prime, request.config, request.seed)
    for _ in range(30):
        ids = together.sample()
        assert np.array_equal(ids, apart.sample())
        together.advance(ids)
        apart.advance(ids)


def test_backend_choice(model):
    assert BatchDecoder(model, capacity=1).backend == "kernel"
    gru = CharRNN(ModelConfig(vocab_size=23, hidden_size=8, cell="gru"))
    assert BatchDecoder(gru, capacity=1).backend == "torch"
    with pytest.raises(ValueError, match="backend"):
        BatchDecoder(model, capacity=1, backend="fast")
    with pytest.raises(ValueError, match="float32 LSTM"):
        BatchDecoder(gru, capacity=1, backend="kernel")


@pytest.mark.parametrize("threads", [1, 2])
def test_step_is_sample_then_advance(model, backend, threads):
    configs = [SamplingConfig(top_k=3), SamplingConfig(temperature=0.7, top_p=0.8)]
    requests = [Request([n % 23, 2], configs[n % 2], seed=n) for n in range(20)]
    fused = BatchDecoder(model, capacity=20, backend=backend, threads=threads)
    apart = BatchDecoder(model, capacity=20, backend=backend)
    fused.add_many(requests)
    apart.add_many(requests)
    for _ in range(70):  # past a block of uniform numbers (64)
        ids = apart.sample()
        apart.advance(ids)
        assert np.array_equal(fused.step(), ids)
