"""`overnight submit`'s on-disk index: the join of results to input lines by custom_id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overnight.client.index import LineIndex
from overnight.client.outcomes import not_run_line


def _ok(custom_id: str, tokens: int = 1) -> bytes:
    body = {"usage": {"prompt_tokens": tokens, "completion_tokens": 2 * tokens}}
    return json.dumps({"custom_id": custom_id, "response": {"status_code": 200, "body": body}}).encode()


def _status(custom_id: str, status: int) -> bytes:
    body = {"error": {"message": "no", "code": f"e{status}"}}
    return json.dumps({"custom_id": custom_id, "response": {"status_code": status, "body": body}}).encode()


def _index(tmp_path: Path, parts: dict[str, list[str]]) -> LineIndex:
    index = LineIndex(tmp_path / "index.sqlite")
    rows = []
    line_no = 0
    for part, custom_ids in parts.items():
        for custom_id in custom_ids:
            line_no += 1
            rows.append((line_no, custom_id, 100 * line_no, 10, part))
    index.begin()
    index.add_lines(sorted(rows))
    index.finish_loading()
    index.commit()
    return index


def test_results_are_joined_by_custom_id_and_come_out_in_input_order(tmp_path: Path) -> None:
    index = _index(tmp_path, {"p1": ["a", "b", "c"], "p2": ["d"]})

    recorded = index.record("p1", [_status("c", 400), _ok("a"), b"garbage", _ok("d")], keep_successes=True)

    assert (recorded.succeeded, recorded.failed, recorded.ignored) == (1, 1, 2)  # d belongs to p2
    assert recorded.new_successes == [_ok("a")]
    assert [(custom_id, ok) for custom_id, _, ok in index.in_order()] == [
        ("a", True),
        ("b", False),
        ("c", False),
        ("d", False),
    ]
    assert [line for _, line, _ in index.in_order()][1] is None  # b has none yet
    assert index.unanswered("p1") == [(2, "b")]
    assert index.counts().succeeded == 1
    assert index.counts().failed == 1


def test_a_success_is_never_replaced_and_a_retried_failure_is(tmp_path: Path) -> None:
    index = _index(tmp_path, {"p1": ["a", "b"]})
    index.record("p1", [_ok("a", 5), _status("b", 503)])
    assert [retry.line_no for retry in index.retryable()] == [2]
    index.assign("r1", [2])

    later = index.record("r1", [_ok("b", 7), _status("a", 500)])  # a is no line of r1

    assert (later.succeeded, later.failed, later.ignored) == (1, -1, 1)
    again = index.record("p1", [_status("a", 500)])  # nor is a failure recorded over a success
    assert (again.succeeded, again.failed) == (0, 0)
    assert index.counts().succeeded == 2
    assert index.counts().failed == 0
    assert index.usage() == (12, 24)
    assert index.results_of("p1") == (1, 0)
    assert index.results_of("r1") == (1, 0)
    assert list(index.retryable()) == []


def test_permanent_failures_are_not_offered_for_retry(tmp_path: Path) -> None:
    index = _index(tmp_path, {"p1": ["a", "b", "c"]})
    index.record("p1", [_status("a", 400), not_run_line("b", "batch_expired", "late"), _status("c", 429)])
    assert [(retry.line_no, retry.part) for retry in index.retryable()] == [(2, "p1"), (3, "p1")]
    assert index.failure_codes() == [("batch_expired", 1), ("e400", 1), ("e429", 1)]


def test_the_line_of_a_part_by_its_position(tmp_path: Path) -> None:
    index = _index(tmp_path, {"p1": ["a", "b"], "p2": ["c", "d"]})
    assert index.line_of_part("p2", 2) == 4
    assert index.line_of_part("p2", 3) is None


def test_duplicates_name_the_line_they_repeat(tmp_path: Path) -> None:
    index = _index(tmp_path, {"p1": ["a", "b", "a"], "p2": ["b", "a"]})
    assert index.duplicates(10) == [(3, "a", 1), (4, "b", 2), (5, "a", 1)]


def test_the_index_survives_reopening(tmp_path: Path) -> None:
    index = _index(tmp_path, {"p1": ["a"]})
    index.record("p1", [_ok("a")])
    index.close()
    again = LineIndex(tmp_path / "index.sqlite")
    assert [(custom_id, ok) for custom_id, _, ok in again.in_order()] == [("a", True)]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 19), st.sampled_from([200, 400, 500])), max_size=60))
def test_every_line_has_at_most_one_result_whatever_arrives(
    tmp_path_factory: pytest.TempPathFactory, arrivals: list[tuple[int, int]]
) -> None:
    folder = tmp_path_factory.mktemp("index")
    index = _index(folder, {"p": [f"c{i}" for i in range(20)]})
    succeeded = set()
    for number, status in arrivals:
        custom_id = f"c{number}"
        index.record("p", [_ok(custom_id) if status == 200 else _status(custom_id, status)])
        if status == 200:
            succeeded.add(custom_id)
    results = list(index.in_order())
    assert len(results) == 20
    assert {custom_id for custom_id, _, ok in results if ok} == succeeded
    counts = index.counts()
    assert counts.succeeded == len(succeeded)
    assert counts.succeeded + counts.failed == len({number for number, _ in arrivals})
