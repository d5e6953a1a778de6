"""constraints/lowest.txt pins every dependency of pyproject.toml at its floor, so that
`make test-lowest` tests exactly the lowest versions the ranges allow."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
# Pinned above its floor (the file says why): the only PyTorch build every machine installs.
PINNED_ABOVE_FLOOR = {"torch"}


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    return [Requirement(line) for line in [*project["dependencies"], *extras]]


def floor(requirement: Requirement) -> Version:
    lows = [Version(s.version) for s in requirement.specifier if s.operator in {">=", "=="}]
    assert len(lows) == 1, f"{requirement}: give exactly one floor (>= or ==)"
    return lows[0]


def pins() -> dict[str, Version]:
    found: dict[str, Version] = {}
    for line in (ROOT / "constraints" / "lowest.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints/lowest.txt: {line!r} is not an exact pin"
            found[canonicalize_name(name)] = Version(version)
    return found


def test_every_dependency_is_pinned_at_its_floor():
    pinned = pins()
    for requirement in requirements():
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"constraints/lowest.txt lacks {name}"
        if name in PINNED_ABOVE_FLOOR:
            assert requirement.specifier.contains(pinned[name]), f"{name} pin out of range"
        else:
            assert pinned[name] == floor(requirement), f"{name}: floor {floor(requirement)}"


def test_constraints_name_only_dependencies():
    names = {canonicalize_name(r.name) for r in requirements()}
    assert set(pins()) <= names, set(pins()) - names


def test_streaming_floors():
    """The versions below these broke streams: FastAPI ran the generator dependency's
    cleanup before the stream was sent; uvicorn missed a client hanging up mid-stream."""
    by_name = {canonicalize_name(r.name): r for r in requirements()}
    assert floor(by_name["fastapi"]) >= Version("0.118")
    assert not by_name["fastapi"].specifier.contains("0.117.1")
    assert floor(by_name["uvicorn"]) >= Version("0.32.1")


def test_security_floors():
    """Starlette before 0.49.1 parses a Range header in quadratic time (CVE-2025-62727);
    h11 before 0.16 lets a chunked body smuggle a request (CVE-2025-43859); FastAPI
    before 0.120.1 caps Starlette below 0.49."""
    by_name = {canonicalize_name(r.name): r for r in requirements()}
    assert floor(by_name["starlette"]) >= Version("0.49.1")
    assert floor(by_name["h11"]) >= Version("0.16")
    assert floor(by_name["fastapi"]) >= Version("0.120.1")
