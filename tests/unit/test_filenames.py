"""The name an upload is kept under (domain/filenames.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overnight.domain.errors import InvalidRequest
from overnight.domain.filenames import MAX_FILENAME_CHARS, clean_filename
from support.fuzzing import count, fuzz_settings


@pytest.mark.parametrize(
    ("given_name", "kept"),
    [
        ("input.jsonl", "input.jsonl"),
        ("../../etc/passwd", "passwd"),
        ("/etc/passwd", "passwd"),
        ("..\\..\\windows\\win.ini", "win.ini"),
        ("a\x00b.jsonl", "ab.jsonl"),
        ("\x1b[31mred\x07\x7f.jsonl", "[31mred.jsonl"),
        ("line\r\nX-Injected: 1", "lineX-Injected: 1"),
        ("\udcff\udcfe.jsonl", ".jsonl"),  # undecodable bytes, as aiohttp hands them over
        ("caf\u00e9 \U0001f600.jsonl", "caf\u00e9 \U0001f600.jsonl"),
        ("  spaced.jsonl  ", "spaced.jsonl"),
        ("x" * MAX_FILENAME_CHARS, "x" * MAX_FILENAME_CHARS),
    ],
)
def test_names_are_cleaned(given_name: str, kept: str) -> None:
    assert clean_filename(given_name) == kept


@pytest.mark.parametrize("refused", ["", ".", "..", "...", "a/..", "dir/", "\x00\x01", "x" * 10_000])
def test_names_that_leave_nothing_or_too_much_are_refused(refused: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        clean_filename(refused)
    assert caught.value.param == "file"


@pytest.mark.fuzz
@fuzz_settings(200)
@given(st.text(st.characters(codec=None, categories=None), max_size=300))
def test_any_name_is_kept_clean_or_refused(name: str) -> None:
    count("file names")
    refused: InvalidRequest | None = None
    try:
        kept = clean_filename(name)
    except InvalidRequest as error:
        refused = error
    if refused is not None:
        assert refused.param == "file"
        return
    kept.encode()  # stored and sent as UTF-8
    assert "/" not in kept
    assert "\\" not in kept
    assert kept.strip(".")
    assert kept == kept.strip()
    assert 0 < len(kept) <= MAX_FILENAME_CHARS
    assert clean_filename(kept) == kept
