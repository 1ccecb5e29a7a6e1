"""The container tests' engine and local base image. Every test here skips with one line when this
machine has no container engine (docker with a running daemon, or podman)."""

from __future__ import annotations

import pytest

from tfcluster import containers


@pytest.fixture(scope="session")
def engine() -> containers.Engine:
    eng = containers.engine(required=False)
    if eng is None:
        pytest.skip("no container engine (docker with a running daemon, or podman): the container tests need one")
    return eng


@pytest.fixture(scope="session")
def debian_base(engine) -> str:
    """`localhost/debian:bookworm`, bootstrapped here: the stand-in for the public base image."""
    return containers.bootstrap_debian(eng=engine)
