"""tests/tools.py: a missing program skips a test locally and fails it under CI."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.tools import find_tool, require_tool, under_ci

MISSING = "charrnn-no-such-program"


def test_a_program_on_path_is_found(monkeypatch, tmp_path):
    program = tmp_path / "bin" / MISSING
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", str(program.parent))
    assert find_tool(MISSING) == str(program)
    assert require_tool(MISSING, install="nothing") == str(program)


def test_a_fallback_path_is_found_only_when_executable(tmp_path):
    program = tmp_path / MISSING
    program.write_text("#!/bin/sh\n")
    assert find_tool(MISSING, str(tmp_path / "absent"), str(program)) is None
    program.chmod(0o755)
    assert find_tool(MISSING, str(tmp_path / "absent"), str(program)) == str(program)


@pytest.mark.parametrize("value", [None, "", "false", "0", "no", "truthy"])
def test_outside_ci_a_missing_program_skips_saying_how_to_install_it(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert not under_ci()
    with pytest.raises(pytest.skip.Exception, match=f"{MISSING} is not installed .apt-get"):
        require_tool(MISSING, install="apt-get install it")


@pytest.mark.parametrize("value", ["true", "TRUE", "1", " true "])
def test_under_ci_a_missing_program_fails(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    assert under_ci()
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_tool(MISSING, str(Path(sys.executable).parent / MISSING), install="apt-get")
