"""Turning Ctrl-C (SIGINT) and SIGTERM into a polite request to stop between steps."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class StopRequest:
    """Callable as a `should_stop` hook: True once one of the signals has arrived."""

    def __init__(self) -> None:
        self.signal_number: int | None = None

    def __call__(self) -> bool:
        return self.signal_number is not None

    @property
    def exit_code(self) -> int:
        """The shell's convention for death by a signal: 128 + its number (130, 143)."""
        return 128 + (self.signal_number or 0)


@contextmanager
def stop_on_signals(
    signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
) -> Iterator[StopRequest]:
    """Inside the block the first of `signals` only sets the request, so training can
    finish its step and save; the previous handler then comes back for that signal, so a
    second Ctrl-C interrupts at once. All handlers are restored on leaving. Off the main
    thread (where Python cannot install handlers) the request simply never fires."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    # A signal the parent set to be ignored (nohup, a background job) stays ignored.
    previous = {sig: signal.getsignal(sig) for sig in signals}
    previous = {sig: handler for sig, handler in previous.items() if handler != signal.SIG_IGN}

    def handle(number: int, frame: FrameType | None) -> None:
        request.signal_number = request.signal_number or number
        signal.signal(number, previous[signal.Signals(number)])

    for sig in previous:
        signal.signal(sig, handle)
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
