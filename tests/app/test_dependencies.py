"""The installed web stack is past its security fixes, in `make test` and in `make
test-lowest` alike (pyproject.toml's floors, pinned by constraints/lowest.txt)."""

from __future__ import annotations

from importlib.metadata import version

import pytest
from packaging.version import Version


@pytest.mark.parametrize(
    ("package", "fixed_in"),
    [("starlette", "0.49.1"), ("h11", "0.16.0")],  # CVE-2025-62727, CVE-2025-43859
)
def test_the_installed_version_has_the_fix(package: str, fixed_in: str) -> None:
    assert Version(version(package)) >= Version(fixed_in)
