"""One request decoded on its own, for the command line and the library: the service's
decoder with a single row, so a seed gives the same text here and from the service.

    stream = SingleStream(model, params)
    for ids in stream:            # the characters that can be shown, as they are made
        print(vocab.decode(ids), end="")
    stream.output.finish_reason   # "length", "stop" or "regex"
    stream.final_state()          # the whole text's state, to continue it (model/state.py)

A stream may start from a state: `SingleStream(model, params, state=state)`, its prime
then `state.prime(ids of the text after it)`.
"""

from __future__ import annotations

from collections.abc import Iterator

from model.decoding.decoder import BLOCK_STEPS, BatchDecoder
from model.decoding.output import RowOutput
from model.decoding.params import GenerationParams
from model.decoding.sampler import FAILURES, RUNNING
from model.network import CharRNN
from model.state import RecurrentState


class DecodingFailed(RuntimeError):
    """The network gave this request no usable distribution (see sampler.FAILURES)."""


class SingleStream:
    def __init__(
        self,
        model: CharRNN,
        params: GenerationParams,
        backend: str = "auto",
        block_steps: int = BLOCK_STEPS,
        state: RecurrentState | None = None,
    ):
        # block_steps: characters per step call, each step's released text one piece
        self.decoder = BatchDecoder(model, capacity=1, backend=backend, block_steps=block_steps)
        self.output = RowOutput()
        self.row = self.decoder.add(params, state=state)
        self._length = params.length

    def __iter__(self) -> Iterator[list[int]]:
        decoder, output, row = self.decoder, self.output, self.row
        while decoder.prefilling:
            _, positions, _ = decoder.prefill(1)
            decoder.record_prompt(row, int(positions[0]), output)
        if self._length == 0:
            decoder.finish_unsampled(row, output)
            return
        shown = 0
        while True:
            decoder.step()
            status = decoder.record(row, output)
            if status in FAILURES:
                raise DecodingFailed(FAILURES[status])
            if output.released > shown:
                yield output.ids[shown : output.released]
                shown = output.released
            if status != RUNNING:
                return

    def final_state(self) -> RecurrentState:
        """Once the stream has ended: the state of its whole text (the state it started
        from, its prime, everything it wrote, a stop string included)."""
        return self.decoder.final_state(self.row, self.output)
