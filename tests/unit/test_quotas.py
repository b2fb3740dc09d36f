"""The pure parts of the per-project limits (domain/quotas.py, config_limits.py, services/upload_limits.py)
and the batch creation rate as BatchesService applies it, with a manual clock (docs/limits.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overnight.config import ConfigError, load_settings
from overnight.config_limits import storage_quotas, upload_sizes
from overnight.domain.clock import ManualClock
from overnight.domain.errors import InvalidRequest, PayloadTooLarge, TooManyRequests
from overnight.domain.ids import IdGenerator
from overnight.domain.models import FileObject
from overnight.domain.quotas import (
    RATE_WINDOW_S,
    StorageQuotas,
    UploadSizes,
    batch_rate_exceeded,
    retry_after_s,
    room_left,
)
from overnight.services.batches import BatchesService
from overnight.services.upload_limits import FORM_OVERHEAD, UploadLimits
from overnight.store.sqlite import SqliteStore


def test_upload_sizes_by_purpose() -> None:
    sizes = UploadSizes(max_file_bytes=500, max_batch_bytes=200)
    assert sizes.limit_for("batch") == 200
    assert sizes.limit_for("user_data") == 500
    assert sizes.limit_for(None) == 500  # not known yet: the larger
    assert UploadSizes(max_file_bytes=100, max_batch_bytes=200).limit_for(None) == 200


def test_too_large_is_a_413_naming_the_setting() -> None:
    sizes = UploadSizes()
    batch = sizes.too_large("batch")
    assert isinstance(batch, PayloadTooLarge)
    assert batch.status == 413
    assert batch.code == "file_too_large"
    assert batch.param == "file"
    assert "209715200 maximum" in batch.message
    assert "max_batch_upload_bytes" in batch.message
    assert "max_upload_bytes" in sizes.too_large("vision").message


def test_storage_quotas_per_project_then_default() -> None:
    quotas = StorageQuotas({"a": 10}, default=99)
    assert quotas.quota_of("a") == 10
    assert quotas.quota_of("b") == 99
    assert StorageQuotas().quota_of("a") is None
    assert not StorageQuotas().any
    assert quotas.any


@given(st.integers(1, 10**15), st.integers(0, 10**15))
def test_room_left_is_never_negative_and_fills_the_quota(quota: int, stored: int) -> None:
    room = room_left(quota, stored)
    assert room >= 0
    assert room == 0 or stored + room == quota


@given(st.integers(0, 10**10), st.integers(0, RATE_WINDOW_S - 1))
def test_retry_after_is_when_the_nth_batch_leaves_the_hour(created_at: int, age: int) -> None:
    now = created_at + age
    wait = retry_after_s(created_at, now)
    assert wait >= 1
    assert now + wait >= created_at + RATE_WINDOW_S


def test_rate_refusal_is_a_retryable_429() -> None:
    error = batch_rate_exceeded(2000, 42)
    assert isinstance(error, TooManyRequests)
    assert error.status == 429
    assert error.code == "rate_limit_exceeded"
    assert error.type == "rate_limit_error"
    assert dict(error.headers) == {"retry-after": "42", "x-should-retry": "true"}


def test_settings_parse_quotas_and_sizes(tmp_path: Path) -> None:
    config = tmp_path / "o.toml"
    config.write_text(
        'default_storage_quota_bytes = 1000\nmax_upload_bytes = 300\n[storage_quotas]\n"team-a" = 5000\n'
    )
    settings = load_settings({"config": str(config)}, environ={"OVERNIGHT_MAX_BATCH_UPLOAD_BYTES": "100"})
    assert storage_quotas(settings) == StorageQuotas({"team-a": 5000}, 1000)
    assert upload_sizes(settings) == UploadSizes(300, 100)
    assert load_settings({}, environ={}).batch_create_rate_per_hour is None


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[storage_quotas]\n"a" = 0\n', "storage_quotas.a"),
        ('[storage_quotas]\n"a" = "lots"\n', "storage_quotas.a"),
        ("storage_quotas = 5\n", "storage_quotas"),
        ("default_storage_quota_bytes = -1\n", "default_storage_quota_bytes"),
        ("batch_create_rate_per_hour = 0\n", "batch_create_rate_per_hour"),
        ("client_idle_timeout_s = 0\n", "client_idle_timeout_s"),
    ],
)
def test_bad_limit_settings_name_the_setting(tmp_path: Path, text: str, named: str) -> None:
    config = tmp_path / "o.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=f"setting '{named}'"):
        load_settings({"config": str(config)}, environ={})


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    opened = SqliteStore(tmp_path / "o.db")
    await opened.open()
    yield opened
    await opened.close()


async def test_upload_allowance_is_the_smaller_of_size_and_room(store: SqliteStore) -> None:
    clock = ManualClock(1_700_000_000)
    limits = UploadLimits(store, clock, UploadSizes(1000, 500), StorageQuotas({"q": 700}))
    assert (await limits.allowance("free", "batch")).max_bytes == 500
    await store.add_file(FileObject("file-1", "q", 600, 1_700_000_000, "a.jsonl", "batch", None))
    allowance = await limits.allowance("q", "user_data")
    assert (allowance.max_bytes, allowance.by_quota, allowance.stored) == (100, True, 600)
    refusal = limits.refusal(allowance)
    assert isinstance(refusal, InvalidRequest)
    assert refusal.code == "storage_quota_exceeded"
    limits.check_declared(allowance, 100 + FORM_OVERHEAD)  # may fit
    with pytest.raises(InvalidRequest):
        limits.check_declared(allowance, 101 + FORM_OVERHEAD)
    roomy = await limits.allowance("free", "user_data")
    with pytest.raises(PayloadTooLarge):
        limits.check_declared(roomy, 1001 + FORM_OVERHEAD)


async def test_a_used_up_quota_refuses_even_an_empty_file(store: SqliteStore) -> None:
    limits = UploadLimits(store, ManualClock(1_700_000_000), quotas=StorageQuotas(default=10))
    await store.add_file(FileObject("file-1", "p", 10, 1_700_000_000, "a.jsonl", "batch", None))
    with pytest.raises(InvalidRequest, match="storage quota of 10 bytes"):
        limits.check_declared(await limits.allowance("p", "batch"), None)


async def test_batch_creation_rate_counts_the_last_hour(store: SqliteStore) -> None:
    clock = ManualClock(1_700_000_000)
    await store.add_file(FileObject("file-in", "p", 10, 1_700_000_000, "in.jsonl", "batch", None))
    service = BatchesService(
        store, IdGenerator(clock), clock, ("24h",), on_change=lambda: None, creation_rate_per_hour=2
    )
    params = {"input_file_id": "file-in", "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    await service.create("p", params)
    clock.advance(100)
    await service.create("p", params)
    clock.advance(50)
    with pytest.raises(TooManyRequests) as refused:
        await service.create("p", params)
    assert dict(refused.value.headers)["retry-after"] == str(RATE_WINDOW_S - 150)
    clock.advance(RATE_WINDOW_S - 150 - 1)
    with pytest.raises(TooManyRequests) as still:
        await service.create("p", params)
    assert dict(still.value.headers)["retry-after"] == "1"
    clock.advance(1)  # the first batch has left the hour
    await service.create("p", params)
    await store.add_file(FileObject("file-in2", "other", 10, 1_700_000_000, "in.jsonl", "batch", None))
    await service.create("other", {**params, "input_file_id": "file-in2"})  # its own count
