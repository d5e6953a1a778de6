"""app/stop.py: stop sequences found across chunk boundaries, nothing after them emitted."""

from __future__ import annotations

import pytest

from app.stop import StopScanner


def run(stops: list[str], chunks: list[str]) -> tuple[list[str], bool]:
    scanner = StopScanner(stops)
    emitted = [scanner.feed(chunk) for chunk in chunks]
    if not scanner.stopped:
        emitted.append(scanner.flush())
    return emitted, scanner.stopped


def test_no_stops_passes_everything_through() -> None:
    assert run([], ["ab", "cd"]) == (["ab", "cd", ""], False)


def test_a_stop_inside_one_chunk() -> None:
    assert run(["\n\n"], ["ab\n\ncd", "ef"]) == (["ab", ""], True)


def test_a_stop_across_chunks_is_held_then_cut() -> None:
    assert run(["ROMEO"], ["Enter RO", "M", "EO: hi"]) == (["Enter ", "", ""], True)


def test_a_partial_that_does_not_complete_is_released() -> None:
    assert run(["\n\n"], ["ab\n", "c"]) == (["ab", "\nc", ""], False)
    assert run(["xyz"], ["axy"]) == (["a", "xy"], False)  # flushed at the end


def test_the_earliest_of_several_stops_wins() -> None:
    assert run(["c", "ab"], ["xxabc"]) == (["xx"], True)


def test_a_stop_at_the_very_start_emits_nothing() -> None:
    emitted, stopped = run(["x"], ["xyz"])
    assert emitted == [""] and stopped


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_any_chunking_gives_the_same_text(size: int) -> None:
    text = "the end is near. THE END\nmore"
    chunks = [text[i : i + size] for i in range(0, len(text), size)]
    emitted, stopped = run(["THE END", "nothing"], chunks)
    assert "".join(emitted) == "the end is near. " and stopped


def test_feeding_after_a_stop_gives_nothing() -> None:
    scanner = StopScanner(["b"])
    assert scanner.feed("abc") == "a"
    assert scanner.feed("more") == "" and scanner.flush() == ""
