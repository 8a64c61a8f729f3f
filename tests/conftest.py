"""Shared test helpers: where the repository and ../shared are."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture
def repo_root() -> Path:
    """The repository root."""
    return REPO


def shared_or_skip(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (shared data is optional)")
    return path


@pytest.fixture
def shared_data():  # noqa: ANN201
    """``shared_data("iot-sentinel", "captures")``: a path under ../shared/data, or skip."""
    return shared_or_skip
