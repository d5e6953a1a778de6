"""The programs some tests run besides Python (nginx, chromium, curl): found, or the test
skips saying how to install it; under CI (`CI=true`) it fails instead, so a suite that CI
reports as passed ran every such test."""

from __future__ import annotations

import os
import shutil

import pytest


def under_ci() -> bool:
    """Whether CI runs the tests: CI services set `CI=true` (some `CI=1`)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


def find_tool(name: str, *also: str) -> str | None:
    """The path of program `name` on PATH, or of the first executable among `also` (e.g.
    /usr/sbin/nginx, which a user's PATH may lack); None when there is none."""
    return shutil.which(name) or next((path for path in also if os.access(path, os.X_OK)), None)


def require_tool(name: str, *also: str, install: str) -> str:
    """The path of program `name` (see `find_tool`). Missing, the calling test skips with
    a reason naming `install` (how to get it), or fails under CI."""
    path = find_tool(name, *also)
    if path is not None:
        return path
    reason = f"{name} is not installed ({install})"
    if under_ci():
        pytest.fail(f"{reason}; under CI=true the tests that need it must run", pytrace=False)
    pytest.skip(reason)
