"""The MetadataStore's statistics (progress samples, error groups, backend reports) on every store."""

from __future__ import annotations

import asyncio
import dataclasses

from overnight.domain.models import (
    BackendStatus,
    Batch,
    BatchStatus,
    ErrorGroup,
    ResultKind,
    ResultRow,
    Usage,
)
from overnight.domain.progress import Sample
from overnight.domain.results import not_run_row, response_row
from overnight.store.base import MetadataStore

K = ResultKind
NOW = 1_700_000_000


def a_batch(batch_id: str) -> Batch:
    return Batch(
        batch_id, "proj", "/v1/chat/completions", "file-in", "24h", BatchStatus.IN_PROGRESS, NOW, NOW + 86400
    )


def ok_row(line_no: int) -> ResultRow:
    return ResultRow(line_no, K.SUCCEEDED, b'{"line":%d}' % line_no, Usage(3, 2))


def failed_row(line_no: int, code: str | None, status: int | None) -> ResultRow:
    return ResultRow(line_no, K.FAILED, b'{"failed":%d}' % line_no, error_code=code, upstream_status=status)


def a_report(backend: str, worker: str, at: int, **changes: object) -> BackendStatus:
    report = BackendStatus(backend, worker, at, 8, 16, 3, "closed", 100, 5)
    return dataclasses.replace(report, **changes)  # type: ignore[arg-type]


# -- progress samples ------------------------------------------------------------------------------


async def test_samples_come_back_oldest_first_per_batch(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_s1"))
    await store.add_batch(a_batch("batch_s2"))
    for sample in (Sample(NOW + 10, 40, 2), Sample(NOW, 0, 0), Sample(NOW + 5, 20, 1)):
        await store.record_progress("batch_s1", sample)
    await store.record_progress("batch_s2", Sample(NOW + 1, 7, 0))
    assert await store.progress_samples("batch_s1") == [
        Sample(NOW, 0, 0),
        Sample(NOW + 5, 20, 1),
        Sample(NOW + 10, 40, 2),
    ]
    assert await store.progress_samples("batch_s2") == [Sample(NOW + 1, 7, 0)]
    assert await store.progress_samples("batch_none") == []


async def test_a_second_sample_in_the_same_second_replaces_the_first(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_s1"))
    await store.record_progress("batch_s1", Sample(NOW, 1, 0))
    await store.record_progress("batch_s1", Sample(NOW, 3, 1))
    assert await store.progress_samples("batch_s1") == [Sample(NOW, 3, 1)]


# -- error groups ----------------------------------------------------------------------------------


async def test_errors_are_grouped_by_code_and_status_biggest_first(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_e1"))
    rows = [
        ok_row(1),
        failed_row(2, "rate_limit_exceeded", 429),
        failed_row(3, "server_error", 500),
        failed_row(4, "rate_limit_exceeded", 429),
        failed_row(5, "upstream_timeout", None),
        failed_row(6, "server_error", 503),
        ok_row(7),
        failed_row(8, "rate_limit_exceeded", 429),
    ]
    assert await store.record_results("batch_e1", rows) == 8
    groups = await store.error_groups("batch_e1")
    assert groups[0] == ErrorGroup("rate_limit_exceeded", 429, 3, b'{"failed":2}')
    assert sorted(groups[1:], key=lambda g: (g.code, g.status or 0)) == [
        ErrorGroup("server_error", 500, 1, b'{"failed":3}'),
        ErrorGroup("server_error", 503, 1, b'{"failed":6}'),
        ErrorGroup("upstream_timeout", None, 1, b'{"failed":5}'),
    ]
    assert await store.error_groups("batch_none") == []


async def test_errors_are_counted_once_when_rows_are_recorded_again(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_e1"))
    first = [failed_row(n, "server_error", 500) for n in (3, 4)] + [ok_row(5)]
    assert await store.record_results("batch_e1", first) == 3
    # A re-run after a crash records the same lines again, plus new ones (one of a lower line).
    again = [*first, failed_row(1, "server_error", 500), failed_row(6, "bad_request", 400), ok_row(7)]
    assert await store.record_results("batch_e1", again) == 3
    assert await store.record_results("batch_e1", again) == 0
    groups = await store.error_groups("batch_e1")
    assert groups == [
        ErrorGroup("server_error", 500, 3, b'{"failed":1}'),  # the lowest line is the example
        ErrorGroup("bad_request", 400, 1, b'{"failed":6}'),
    ]
    batch = await store.get_batch("batch_e1")
    assert batch is not None
    assert batch.request_counts.failed == 4


async def test_not_run_lines_are_grouped_under_their_code(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_e1"))
    rows = [not_run_row(n, f"batch_req_{n}", f"c{n}", "batch_expired") for n in (1, 2)]
    rows.append(response_row(3, "batch_req_3", "c3", 500, "req_3", b'{"error":{"code":null,"type":"x"}}'))
    await store.record_results("batch_e1", rows)
    groups = await store.error_groups("batch_e1")
    assert [(g.code, g.status, g.count) for g in groups] == [("batch_expired", None, 2), ("x", 500, 1)]
    assert groups[0].example == rows[0].line


async def test_error_groups_outlive_the_results(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_e1"))
    await store.record_results("batch_e1", [failed_row(1, "server_error", 500), ok_row(2)])
    await store.delete_results("batch_e1")
    assert await store.finished_lines("batch_e1") == set()
    assert await store.error_groups("batch_e1") == [ErrorGroup("server_error", 500, 1, b'{"failed":1}')]


async def test_concurrent_groups_of_one_batch_add_up(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_e1"))
    chunks = [
        [failed_row(n, f"code_{n % 3}", 500 + n % 2) for n in range(start, start + 50)]
        for start in (1, 51, 101)
    ]
    await asyncio.gather(*(store.record_results("batch_e1", chunk) for chunk in chunks))
    groups = await store.error_groups("batch_e1")
    assert sum(group.count for group in groups) == 150
    assert len(groups) == 6


# -- backend reports -------------------------------------------------------------------------------


async def test_backend_reports_keep_each_workers_latest(store: MetadataStore) -> None:
    await store.report_backends([a_report("gpu", "w1", NOW), a_report("cpu", "w1", NOW)])
    await store.report_backends([a_report("gpu", "w2", NOW + 1, breaker="open", in_flight=0)])
    await store.report_backends([a_report("gpu", "w1", NOW + 2, in_flight=7, attempts=200, failures=9)])
    reports = await store.backend_reports(since=0)
    assert reports == [
        a_report("cpu", "w1", NOW),
        a_report("gpu", "w1", NOW + 2, in_flight=7, attempts=200, failures=9),
        a_report("gpu", "w2", NOW + 1, breaker="open", in_flight=0),
    ]
    await store.report_backends([])  # nothing to say: harmless


async def test_stale_backend_reports_are_left_out(store: MetadataStore) -> None:
    await store.report_backends([a_report("gpu", "w1", NOW), a_report("gpu", "w2", NOW + 20)])
    assert [r.worker for r in await store.backend_reports(since=NOW + 5)] == ["w2"]
    assert await store.backend_reports(since=NOW + 21) == []
    # A day later the dead worker's report is forgotten altogether.
    await store.report_backends([a_report("gpu", "w2", NOW + 86400 + 10)])
    assert [r.worker for r in await store.backend_reports(since=0)] == ["w2"]
