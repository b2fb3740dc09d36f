"""Fixtures every tier may use: real services started once per test session, when first needed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.fuzzing import pytest_terminal_summary  # noqa: F401  (prints the fuzz tests' counts)
from support.seaweed import SeaweedS3


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A real S3 server (SeaweedFS), started once per test session when a test first needs it."""
    with SeaweedS3(tmp_path_factory.mktemp("seaweed")) as server:
        yield server
