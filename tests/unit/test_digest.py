"""The upstream-error log: true counts per interval, the request's fate, examples cut at a word."""

from __future__ import annotations

import json
import logging

import pytest

from overnight.backends.base import Attempt
from overnight.engine.digest import ErrorDigest, Fate, example_of


def failure(status: int = 502, message: str = "connection refused", answered: bool = False) -> Attempt:
    body = json.dumps({"error": {"message": message, "type": "upstream_error", "param": None, "code": None}})
    return Attempt(status, body.encode(), "r", answered=answered)


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if "upstream errors" in record.getMessage()]


def test_every_failure_is_counted_in_exactly_one_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="overnight.engine")
    digest = ErrorDigest("up", every_s=30.0)
    for second in range(68):  # a kill -9 of the upstream: 68 failures over 68 s
        digest.note(failure(), Fate.RETRYING, now=float(second))
        digest.flush(float(second))
    digest.flush(1000.0, everything=True)
    lines = logged(caplog)
    counts = [int(line.split("count=")[1].split()[0]) for line in lines]
    assert sum(counts) == 68
    assert counts[0] == 1  # the first of a pattern at once
    assert all("(retrying)" in line for line in lines)
    assert "in the last" in lines[1]


def test_fates_are_told_apart(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="overnight.engine")
    digest = ErrorDigest("up")
    digest.note(failure(), Fate.RETRYING, 0.0)
    digest.note(failure(), Fate.WAITING, 0.0)
    digest.note(failure(500, "boom", answered=True), Fate.FAILED, 0.0)
    lines = logged(caplog)
    assert any("no_answer status=502" in line and "(retrying)" in line for line in lines)
    assert any("(waiting for the backend)" in line for line in lines)
    assert any("status=500" in line and "(gave up)" in line and "boom" in line for line in lines)


def test_due_in_says_when_counted_failures_are_due() -> None:
    digest = ErrorDigest("up", every_s=30.0)
    assert digest.due_in(0.0) is None
    digest.note(failure(), Fate.RETRYING, 0.0)
    assert digest.due_in(1.0) is None  # logged at once, nothing waiting
    digest.note(failure(), Fate.RETRYING, 5.0)
    assert digest.due_in(10.0) == 20.0


def test_examples_are_the_message_cut_at_a_word() -> None:
    long = "word " * 100
    text = example_of(json.dumps({"error": {"message": long}}).encode(), limit=50)
    assert text.endswith(" …")
    assert len(text) <= 52
    assert "{" not in text
    assert example_of(b"Internal Server Error") == "Internal Server Error"
    assert example_of(b'{"error": "plain string"}') == "plain string"
