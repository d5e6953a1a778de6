import signal

import pytest

from training.signals import stop_on_signals


def test_the_first_signal_asks_to_stop_and_the_second_interrupts():
    before = signal.getsignal(signal.SIGINT)
    with stop_on_signals() as stop:
        assert not stop()
        signal.raise_signal(signal.SIGINT)
        assert stop() and stop.exit_code == 130
        with pytest.raises(KeyboardInterrupt):  # the previous handler is back
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_sigterm_exit_code_and_ignored_signals_stay_ignored():
    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with stop_on_signals() as stop:
            signal.raise_signal(signal.SIGTERM)
            assert not stop()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with stop_on_signals() as stop:
            signal.raise_signal(signal.SIGTERM)
            assert stop.exit_code == 143
    finally:
        signal.signal(signal.SIGTERM, before)
