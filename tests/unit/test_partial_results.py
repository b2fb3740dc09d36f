"""The pure parts of results while a batch runs, retries and Idempotency-Key: windows of lines, the ids
of result files, the retry filter, key checks and fingerprints."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overnight.blobs.local import LocalBlobStore
from overnight.domain.clock import ManualClock
from overnight.domain.errors import InvalidRequest
from overnight.domain.idempotency import UploadFingerprint, check_key, json_fingerprint
from overnight.domain.ids import (
    IdGenerator,
    error_file_id,
    output_file_id,
    request_line_id,
    request_line_no,
    result_file_batch,
)
from overnight.domain.models import Batch, BatchStatus, ResultKind, ResultRow
from overnight.domain.partial import LineWindow, ResultOrder, line_window
from overnight.domain.results import not_run_row, response_row
from overnight.domain.retries import ErrorLine, parse_selection, read_error_line
from overnight.services.files import FilesService
from overnight.services.partial import PartialResults, window_chunks
from overnight.store.sqlite import SqliteStore

BATCH = "batch_0194a2b3c4d5e6f708192a3b4c5d6e7f"
OTHER = "batch_0194a2b3c4d5e6f708192a3b4c5d6e80"


async def _chunks(data: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    start = 0
    for cut in sorted(set(cuts)):
        if start < cut < len(data):
            yield data[start:cut]
            start = cut
    yield data[start:]


async def _joined(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


@given(
    lines=st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")), max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
    skip=st.integers(min_value=0, max_value=35),
    limit=st.none() | st.integers(min_value=1, max_value=35),
)
async def test_a_window_is_the_same_lines_however_the_stream_is_cut(
    lines: list[bytes], cuts: list[int], skip: int, limit: int | None
) -> None:
    data = b"".join(line + b"\n" for line in lines)
    wanted = lines[skip:] if limit is None else lines[skip : skip + limit]
    got = await _joined(window_chunks(_chunks(data, cuts), LineWindow(skip, limit)))
    assert got == b"".join(line + b"\n" for line in wanted)


def test_the_window_reads_skip_or_offset_and_clamps_like_doubleword() -> None:
    assert line_window(None, None, None) == LineWindow(0, None)
    assert line_window("5", None, None) == LineWindow(5, None)
    assert line_window(None, "7", "3") == LineWindow(7, 3)
    assert line_window("2", "9", None) == LineWindow(2, None)  # Doubleword's own name wins
    assert line_window("-4", None, "0") == LineWindow(0, 1)
    with pytest.raises(InvalidRequest) as refused:
        line_window("x", None, None)
    assert refused.value.param == "skip"


def test_a_result_file_id_names_its_batch() -> None:
    assert result_file_batch(output_file_id(BATCH)) == (BATCH, True)
    assert result_file_batch(error_file_id(BATCH)) == (BATCH, False)
    for other in ("file-0194a2b3c4d5e6f708192a3b4c5d6e7f", "file-xyz", "batch_x", "file-" + "g" * 32 + "o"):
        assert result_file_batch(other) is None


@given(st.integers(min_value=1, max_value=2**40))
def test_a_request_id_names_its_line(line_no: int) -> None:
    assert request_line_no(BATCH, request_line_id(BATCH, line_no)) == line_no
    assert request_line_no("batch_" + "1" * 32, request_line_id(BATCH, line_no)) is None


def test_error_lines_say_code_and_status() -> None:
    failed = response_row(
        3, request_line_id(BATCH, 3), "c3", 429, "req_1", b'{"error":{"code":"rate_limit"}}'
    )
    typed = response_row(
        4, request_line_id(BATCH, 4), "c4", 500, "req_2", b'{"error":{"type":"server_error"}}'
    )
    expired = not_run_row(5, request_line_id(BATCH, 5), "c5", "batch_expired")
    assert read_error_line(failed.line) == ErrorLine(request_line_id(BATCH, 3), "rate_limit", 429)
    assert read_error_line(typed.line) == ErrorLine(request_line_id(BATCH, 4), "server_error", 500)
    assert read_error_line(expired.line) == ErrorLine(request_line_id(BATCH, 5), "batch_expired", None)
    assert read_error_line(b"not json") is None


def test_the_retry_filter_chooses_by_code_or_status() -> None:
    expired = ErrorLine("r1", "batch_expired", None)
    throttled = ErrorLine("r2", "rate_limit", 429)
    broken = ErrorLine("r3", "server_error", 503)
    refused = ErrorLine("r4", "invalid_request", 400)
    everything = parse_selection({})
    assert all(everything.chooses(line) for line in (expired, throttled, broken, refused))
    some = parse_selection({"error_codes": ["batch_expired"], "status_codes": [429, "5xx"]})
    assert [some.chooses(line) for line in (expired, throttled, broken, refused)] == [True, True, True, False]
    by_id = parse_selection({"request_ids": ["r2", "r4"], "status_codes": ["4xx"]})
    assert [by_id.chooses(line) for line in (expired, throttled, broken, refused)] == [
        False,
        True,
        False,
        True,
    ]
    for bad in (
        {"status_codes": [99]},
        {"status_codes": ["6xx"]},
        {"error_codes": "x"},
        {"error_codes": [""]},
    ):
        with pytest.raises(InvalidRequest):
            parse_selection(bad)
    with pytest.raises(InvalidRequest):
        parse_selection({}, need_request_ids=True)


def test_keys_are_printable_and_short() -> None:
    assert check_key("abc-123_XYZ") == "abc-123_XYZ"
    for bad in ("", "x" * 256, "caf\u00e9", "tab\there"):
        with pytest.raises(InvalidRequest):
            check_key(bad)


def test_fingerprints_see_the_request_not_its_spelling() -> None:
    one = json_fingerprint("POST /v1/batches", {"a": 1, "b": {"c": [1, 2]}})
    assert one == json_fingerprint("POST /v1/batches", {"b": {"c": [1, 2]}, "a": 1})
    assert one != json_fingerprint("POST /v1/batches", {"a": 2, "b": {"c": [1, 2]}})
    assert one != json_fingerprint("POST /v1/files", {"a": 1, "b": {"c": [1, 2]}})

    def upload(*chunks: bytes, purpose: str = "batch") -> str:
        fingerprint = UploadFingerprint("POST /v1/files")
        for chunk in chunks:
            fingerprint.content(chunk)
        fingerprint.field("purpose", purpose)
        return fingerprint.digest()

    assert upload(b"ab", b"cd") == upload(b"a", b"bcd")
    assert upload(b"abcd") != upload(b"abce")
    assert upload(b"abcd") != upload(b"abcd", purpose="user_data")


async def test_a_running_batch_is_read_from_its_results_unless_its_files_decide(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db.sqlite3")
    await store.open()
    blobs = LocalBlobStore(tmp_path / "blobs")
    await blobs.open()
    try:
        clock = ManualClock()
        reads = PartialResults(store, FilesService(store, blobs, IdGenerator(clock), clock))
        for batch_id, status in ((BATCH, BatchStatus.IN_PROGRESS), (OTHER, BatchStatus.FINALIZING)):
            await store.add_batch(
                Batch(batch_id, "p", "/v1/chat/completions", "file-in", "24h", status, 1, 9)
            )
            rows = [ResultRow(n, ResultKind.SUCCEEDED, b'{"n":%d}' % n) for n in (3, 1, 2)]
            await store.record_results(batch_id, rows)
        assert await store.claim_result_order(OTHER, ResultOrder.FILES) is ResultOrder.FILES
        first = await reads.read("p", output_file_id(BATCH), LineWindow(1, 1))
        assert (first.incomplete, first.last_line) == (True, 2)
        assert await _joined(first.chunks) == b'{"n":1}\n'
        assert await store.claim_result_order(BATCH, ResultOrder.FILES) is ResultOrder.RECORDED
        waiting = await reads.read("p", output_file_id(OTHER), LineWindow(1))
        assert (waiting.incomplete, waiting.last_line, await _joined(waiting.chunks)) == (True, 1, b"")
        assert await _joined((await reads.read("p", error_file_id(BATCH), LineWindow())).chunks) == b""
    finally:
        await blobs.close()
        await store.close()
