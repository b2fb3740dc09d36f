"""Fixtures that hand every contract test each implementation in turn.

To add an implementation (PostgreSQL, S3, ...), add one entry to STORES or BLOBS: a function that takes the
test's private tmp_path and returns a factory of fresh, unopened instances over the same storage (so a test
can close one and open another to check what survives). Skip inside that function when the service is absent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from overnight.blobs.base import BlobStore
from overnight.blobs.local import LocalBlobStore
from overnight.store.base import MetadataStore
from overnight.store.sqlite import SqliteStore

StoreFactory = Callable[[], MetadataStore]
BlobFactory = Callable[[], BlobStore]


def _sqlite(tmp_path: Path) -> StoreFactory:
    path = tmp_path / "overnight.sqlite3"
    return lambda: SqliteStore(path)


def _local(tmp_path: Path) -> BlobFactory:
    root = tmp_path / "blobs"
    return lambda: LocalBlobStore(root)


STORES: dict[str, Callable[[Path], StoreFactory]] = {"sqlite": _sqlite}
BLOBS: dict[str, Callable[[Path], BlobFactory]] = {"local": _local}


@pytest.fixture(params=sorted(STORES))
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    return STORES[request.param](tmp_path)


@pytest.fixture
async def store(store_factory: StoreFactory) -> AsyncIterator[MetadataStore]:
    opened = store_factory()
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture(params=sorted(BLOBS))
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    return BLOBS[request.param](tmp_path)()
