"""An atomic counter for compiled code: numba offers no atomic operations on the CPU, so
`take` is written as the one LLVM instruction it needs.

Threads running the same compiled loop share work by taking it in pieces from a counter
(model/decoding/network_rows.py): `take(counter, n)` adds n to counter[0] and returns what
it held before, as one indivisible step, so no two threads get the same piece.
"""

from __future__ import annotations

from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def take(typingctx, counter, amount):
    """counter[0] += amount, atomically; → counter[0] before (counter: int64 array)."""
    signature = types.int64(counter, amount)

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        array = context.make_array(array_type)(context, builder, args[0])
        first = context.get_constant(types.intp, 0)
        pointer = cgutils.get_item_pointer(context, builder, array_type, array, [first])
        return builder.atomic_rmw("add", pointer, args[1], "seq_cst")

    return signature, codegen
