"""Compiled maths shared by the training recurrence (model/lstm_gates.py) and the decoding
step (model/decoding/step.py): numba's options, a vectorisable tanh and sigmoid, and the
LSTM cell's gate maths. Each is written once here.

Why not libm: its tanhf/expf are scalar calls (~25 ns each here), which keep the gate
loops from vectorising; a rational approximation made of multiplies, adds and one divide
vectorises (8 or 16 floats per instruction).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

# error_model "numpy": a division by zero gives inf instead of a Python exception, which
# lets LLVM vectorise the loops that divide. fastmath "contract" only: multiply-adds may
# fuse, nothing is reassociated, so an expression's value does not depend on its context
# (what keeps the decoding step bit-identical for a row whatever shares its step).
JIT = {"nogil": True, "cache": True, "fastmath": {"contract"}, "error_model": "numpy"}

TANH_CLAMP = np.float32(9.0)  # tanh(±9) is ±1 in float32
# Eigen's rational approximation of tanh for float32 (odd 13th over even 6th degree):
# within 4e-7 of the exact tanh.
TANH_NUMERATOR = tuple(
    np.float32(value)
    for value in (
        -2.76076847742355e-16,
        2.00018790482477e-13,
        -8.60467152213735e-11,
        5.12229709037114e-08,
        1.48572235717979e-05,
        6.37261928875436e-04,
        4.89352455891786e-03,
    )
)
TANH_DENOMINATOR = tuple(
    np.float32(value)
    for value in (
        1.19825839466702e-06,
        1.18534705686654e-04,
        2.26843463243900e-03,
        4.89352518554385e-03,
    )
)
HALF = np.float32(0.5)


@njit(inline="always", **JIT)
def fast_tanh(x):
    x = min(max(x, -TANH_CLAMP), TANH_CLAMP)
    x2 = x * x
    numerator = TANH_NUMERATOR[0]
    for coefficient in TANH_NUMERATOR[1:]:
        numerator = numerator * x2 + coefficient
    denominator = TANH_DENOMINATOR[0]
    for coefficient in TANH_DENOMINATOR[1:]:
        denominator = denominator * x2 + coefficient
    return x * numerator / denominator


def gate_tanh(x: float) -> float:
    """tanh as the gate maths computes it: fast_tanh in float32, libm's exact tanh in
    float64 (so torch.autograd.gradcheck checks the very loops that train)."""
    return math.tanh(x)


@overload(gate_tanh, jit_options=JIT)
def _gate_tanh(x):
    if x == types.float64:
        return lambda x: math.tanh(x)
    return lambda x: fast_tanh(x)


@njit(inline="always", **JIT)
def gate_sigmoid(x):
    return HALF + HALF * gate_tanh(HALF * x)  # σ(x) = (1 + tanh(x/2)) / 2, exactly


@njit(inline="always", **JIT)
def lstm_cell(in_pre, forget_pre, candidate_pre, out_pre, cell):
    """One unit of an LSTM cell from its four gate pre-activations (PyTorch's order i, f,
    g, o) and the previous cell value: → (i, f, g, o, new cell, tanh(new cell)). The new
    hidden value is o · tanh(new cell)."""
    in_gate = gate_sigmoid(in_pre)
    forget = gate_sigmoid(forget_pre)
    candidate = gate_tanh(candidate_pre)
    out_gate = gate_sigmoid(out_pre)
    new_cell = forget * cell + in_gate * candidate
    return in_gate, forget, candidate, out_gate, new_cell, gate_tanh(new_cell)
