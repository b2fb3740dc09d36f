"""The batch input validator under generated hostile input: every line and every file gets a verdict.

Random bytes, near-valid JSON, wrong types, huge numbers, deep nesting, unicode edge cases (lone
surrogates, BOM, NUL, invalid UTF-8), CRLF, duplicate custom_ids, wrong endpoint, method or url. No input
may raise: each gets a verdict, valid or per-line errors with OpenAI's codes. Where a generated line
breaks exactly one rule, the verdict must be exactly that rule's code on that line (`expected_codes`).
A few examples with a fixed seed in `make test`; `make fuzz` tries many more (support/fuzzing.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overnight.domain import limits
from overnight.domain.lines import split_lines
from overnight.domain.validation import (
    MAX_CUSTOM_ID_CHARS,
    MAX_JSON_DEPTH,
    BatchValidator,
    ValidationResult,
    is_blank,
)
from support.fuzzing import count, fuzz_settings

pytestmark = pytest.mark.fuzz

OPENAI_CODES = {
    "empty_file",
    "too_many_tasks",
    "invalid_json_line",
    "missing_required_parameter",
    "invalid_request",
    "duplicate_custom_id",
    "invalid_method",
    "invalid_url",
    "streaming_unsupported",
    "mismatched_model",
    "model_not_found",
    "too_many_embedding_inputs",
}
REQUIRED_FIELD = {
    "/v1/chat/completions": "messages",
    "/v1/completions": "prompt",
    "/v1/embeddings": "input",
    "/v1/responses": "input",
    "/v1/moderations": "input",
    "/v1/images/generations": "prompt",
    "/v1/images/edits": "prompt",
    "/v1/videos": "prompt",
}
BOM = b"\xef\xbb\xbf"
endpoints = st.sampled_from(limits.BATCH_ENDPOINTS)


def model_of(endpoint: str) -> str:
    return limits.DEFAULT_MODERATION_MODEL if endpoint == "/v1/moderations" else "gpt-fuzz"


def verdict(
    lines: Iterable[bytes], endpoint: str, served: Callable[[str], bool] = lambda _: True, **caps: int
) -> ValidationResult:
    """The validator's verdict on `lines`, the same with and without its fast path; never an exception."""
    lines = list(lines)
    count("validator lines", len(lines))
    verdicts = []
    for fast_path in (True, False):
        validator = BatchValidator(endpoint, served, fast_path=fast_path, **caps)
        for line_no, raw in enumerate(lines, 1):
            validator.check_line(line_no, raw)
        verdicts.append(validator.finish())
    assert verdicts[0] == verdicts[1]
    check_shape(verdicts[0], len(lines))
    return verdicts[0]


def check_shape(result: ValidationResult, line_count: int) -> None:
    assert result.ok == (result.errors == ())
    assert len(result.errors) <= limits.MAX_VALIDATION_ERRORS
    for error in result.errors:
        assert error.code in OPENAI_CODES, error
        assert isinstance(error.message, str)
        assert error.message.strip()
        error.message.encode()  # no lone surrogate: the message is stored and sent as UTF-8
        assert error.param is None or isinstance(error.param, str)
        if error.code in ("empty_file", "too_many_tasks"):
            assert error.line is None
        else:
            assert error.line is not None
            assert 1 <= error.line <= line_count


# --- values ------------------------------------------------------------------------------------------

huge_numbers = st.integers(min_value=-(10**60), max_value=10**60) | st.sampled_from(
    [2**63, -(2**63) - 1, 2**64, 10**308, 1.7976931348623157e308, -0.0, 5e-324]
)
edge_chars = st.sampled_from(["\u0000", "\ufeff", "\u2028", "\U0001f600", "e\u0301", "\\", '"', "\x7f"])
edge_text = st.text(max_size=12) | st.builds(
    lambda *parts: "".join(parts), st.text(max_size=4), edge_chars, st.text(max_size=4)
)
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | huge_numbers | st.floats(allow_nan=False, allow_infinity=False) | edge_text,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=6,
)
wrong_types: st.SearchStrategy[Any] = (
    st.none() | st.booleans() | huge_numbers | st.lists(json_values, max_size=2) | st.just({})
)


def dumps(obj: Any, ascii_only: bool = True) -> bytes:
    return json.dumps(obj, ensure_ascii=ascii_only).encode()


def good_body(endpoint: str, draw: st.DrawFn) -> dict[str, Any]:
    field = REQUIRED_FIELD[endpoint]
    content = draw(edge_text)
    value: Any = [{"role": "user", "content": content}] if field == "messages" else content or "x"
    extra = draw(st.dictionaries(st.sampled_from(["temperature", "metadata"]), json_values, max_size=2))
    return {"model": model_of(endpoint), field: value, **extra}


# --- near-valid lines, each breaking at most one rule --------------------------------------------------


Expected = tuple[str, str | None] | None  # the (code, param) a broken line must get; None: still valid
Mutation = Callable[[dict[str, Any], str, st.DrawFn], Expected]
not_a_string = wrong_types.filter(lambda v: v is not None and not isinstance(v, str))


def _drop_or_null(obj: dict[str, Any], key: str, draw: st.DrawFn) -> None:
    if draw(st.booleans()):
        del obj[key]
    else:
        obj[key] = None


def _missing(key: str) -> Mutation:
    def mutation(obj: dict[str, Any], endpoint: str, draw: st.DrawFn) -> Expected:
        _drop_or_null(obj, key, draw)
        return ("missing_required_parameter", key)

    return mutation


def _wrong_type(key: str) -> Mutation:
    def mutation(obj: dict[str, Any], endpoint: str, draw: st.DrawFn) -> Expected:
        obj[key] = draw(not_a_string)
        return ("invalid_request", key)

    return mutation


def _set(key: str, values: st.SearchStrategy[Any], expected: Expected) -> Mutation:
    def mutation(obj: dict[str, Any], endpoint: str, draw: st.DrawFn) -> Expected:
        obj[key] = draw(values)
        return expected

    return mutation


def _wrong_url(obj: dict[str, Any], endpoint: str, draw: st.DrawFn) -> Expected:
    others = [e for e in limits.BATCH_ENDPOINTS if e != endpoint]
    wrong = [endpoint + "?x=1", endpoint.upper(), endpoint + "/", "", "/v1/../" + endpoint[4:]]
    obj["url"] = draw(st.sampled_from(others + wrong))
    return ("invalid_url", "url")


def _no_model(obj: dict[str, Any], endpoint: str, draw: st.DrawFn) -> Expected:
    del obj["body"]["model"]
    if endpoint == "/v1/moderations":
        return None  # the moderation default, which is the file's model here
    return ("invalid_request", "body.model")


def _model_type(obj: dict[str, Any], endpoint: str, draw: st.DrawFn) -> Expected:
    obj["body"]["model"] = draw(not_a_string)
    return ("invalid_request", "body.model")


def _other_model(obj: dict[str, Any], endpoint: str, draw: st.DrawFn) -> Expected:
    obj["body"]["model"] = draw(edge_text.filter(lambda m: m not in ("", model_of(endpoint))))
    return ("mismatched_model", "body.model")


def _stream(obj: dict[str, Any], endpoint: str, draw: st.DrawFn) -> Expected:
    obj["body"]["stream"] = True
    return ("streaming_unsupported", "body.stream")


def _no_required(obj: dict[str, Any], endpoint: str, draw: st.DrawFn) -> Expected:
    field = REQUIRED_FIELD[endpoint]
    _drop_or_null(obj["body"], field, draw)
    return ("invalid_request", f"body.{field}")


MUTATIONS: dict[str, Mutation] = {
    "valid": lambda obj, endpoint, draw: None,
    **{f"no_{key}": _missing(key) for key in ("custom_id", "method", "url", "body")},
    **{f"{key}_type": _wrong_type(key) for key in ("custom_id", "method", "url")},
    "custom_id_empty": _set("custom_id", st.just(""), ("invalid_request", "custom_id")),
    "custom_id_long": _set(
        "custom_id",
        st.integers(MAX_CUSTOM_ID_CHARS + 1, 4 * MAX_CUSTOM_ID_CHARS).map(lambda n: "x" * n),
        ("invalid_request", "custom_id"),
    ),
    "duplicate": _set("custom_id", st.just("anchor"), ("duplicate_custom_id", "custom_id")),
    "method_wrong": _set(
        "method", st.sampled_from(["GET", "post", "", "PUT", "POST ", "DELETE"]), ("invalid_method", "method")
    ),
    "url_wrong": _wrong_url,
    "body_type": _set(
        "body",
        st.booleans() | huge_numbers | edge_text | st.lists(json_values, max_size=2),
        ("invalid_request", "body"),
    ),
    "no_model": _no_model,
    "model_type": _model_type,
    "other_model": _other_model,
    "stream": _stream,
    "no_required": _no_required,
}


@st.composite
def near_valid_files(draw: st.DrawFn, endpoint: str) -> tuple[list[bytes], dict[int, list[tuple[str, Any]]]]:
    """A valid first line ("anchor"), then lines that each break at most one rule, with blank and
    CRLF lines between; and the (code, param) pairs that each line number must get."""
    anchor = {"custom_id": "anchor", "method": "POST", "url": endpoint, "body": good_body(endpoint, draw)}
    lines = [dumps(anchor)]
    expected: dict[int, list[tuple[str, Any]]] = {}
    for index in range(draw(st.integers(0, 12))):
        if draw(st.integers(0, 9)) == 0:
            lines.append(draw(st.sampled_from([b"", b"\r", b" \t ", b"  \r"])))
            continue
        custom_id = f"{draw(edge_text)}#{index}"
        obj = {"custom_id": custom_id, "method": "POST", "url": endpoint, "body": good_body(endpoint, draw)}
        name = draw(st.sampled_from(sorted(MUTATIONS)))
        code = MUTATIONS[name](obj, endpoint, draw)
        count(f"validator mutation {name}")
        raw = dumps(obj, ascii_only=draw(st.booleans()))
        lines.append(raw + (b"\r" if draw(st.booleans()) else b""))
        if code is not None:
            expected[len(lines)] = [code]
    return lines, expected


@fuzz_settings(30, share=0.5)
@given(endpoints.flatmap(lambda e: st.tuples(st.just(e), near_valid_files(e))))
def test_each_broken_rule_gives_its_code_on_its_line(case: tuple[str, Any]) -> None:
    endpoint, (lines, expected) = case
    result = verdict(lines, endpoint)
    got: dict[int, list[tuple[str, Any]]] = {}
    for error in result.errors:
        assert error.line is not None
        got.setdefault(error.line, []).append((error.code, error.param))
    assert got == expected
    assert result.total == sum(not is_blank(raw) for raw in lines)
    assert result.model == model_of(endpoint)


# --- anything at all ---------------------------------------------------------------------------------

hostile_pieces = st.sampled_from(
    [
        BOM, b"\x00", b"\r", b"\r\n", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b'"\\ud800"',
        b'"\\udc00\\ud800"', b"1e999", b"-", b"9" * 400, b"[" * 300, b"]" * 300, b"{" * 300, b'"', b"\\",
        b"null", b"true", b'{"custom_id":', b'"method":"POST"', b'"url":"/v1/chat/completions"',
        b'"body":{"model":"m","messages":[]}', b",", b":", b"}", b"\t", b"\x0c", "\u2028".encode(),
    ]
)  # fmt: skip


@st.composite
def hostile_lines(draw: st.DrawFn, endpoint: str) -> bytes:
    """Random bytes, valid lines with hostile bytes spliced in, or hostile pieces end to end."""
    kind = draw(st.sampled_from(["bytes", "spliced", "pieces", "json"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "pieces":
        return b"".join(draw(st.lists(hostile_pieces | st.binary(max_size=4), max_size=12)))
    obj = {"custom_id": draw(edge_text), "method": "POST", "url": endpoint, "body": good_body(endpoint, draw)}
    if kind == "json":
        keys = st.sampled_from(["custom_id", "method", "url", "body", "model", "stream", "input", "messages"])
        obj = {**obj, **draw(st.dictionaries(keys, json_values, max_size=4))}
        return dumps(obj, ascii_only=draw(st.booleans()))
    raw = bytearray(dumps(obj, ascii_only=draw(st.booleans())))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(raw)))
        raw[at : at + draw(st.integers(0, 3))] = draw(hostile_pieces | st.binary(max_size=3))
    return bytes(raw)


@fuzz_settings(40)
@given(endpoints.flatmap(lambda e: st.tuples(st.just(e), st.lists(hostile_lines(e), max_size=12))))
def test_any_line_gets_a_verdict(case: tuple[str, list[bytes]]) -> None:
    endpoint, lines = case
    result = verdict(lines, endpoint, max_requests=15, max_embedding_inputs=20)
    non_blank = sum(not is_blank(raw) for raw in lines)
    assert result.total == non_blank
    if non_blank == 0:
        assert [e.code for e in result.errors] == ["empty_file"]


@fuzz_settings(20)
@given(
    st.sampled_from(["/v1/unknown", "", "v1/chat/completions", "/v1/chat/completions/"]),
    st.lists(hostile_lines("/v1/chat/completions"), max_size=8),
    st.booleans(),
)
def test_an_unknown_endpoint_or_unserved_model_still_gets_a_verdict(
    endpoint: str, lines: list[bytes], served: bool
) -> None:
    verdict(lines, endpoint, lambda _: served)


# --- nesting ----------------------------------------------------------------------------------------


def nested(depth: int, inner: Any) -> Any:
    for level in range(depth):
        inner = [inner] if level % 2 else {"k": inner}
    return inner


@fuzz_settings(30)
@given(endpoints, st.integers(1, MAX_JSON_DEPTH + 300), st.sampled_from(['"[{["', "1", "[]", '"]]}"']))
def test_a_line_nested_deeper_than_the_limit_is_invalid_json(endpoint: str, depth: int, leaf: str) -> None:
    """The line itself is 1 level, its body 2, then `depth` more (brackets in strings do not count)."""
    body = good_body_plain(endpoint)
    body["metadata"] = nested(depth, json.loads(leaf))
    line = dumps({"custom_id": "deep", "method": "POST", "url": endpoint, "body": body})
    result = verdict([line], endpoint)
    line_depth = 2 + depth + (leaf == "[]")
    if line_depth <= MAX_JSON_DEPTH:
        assert result.ok, result.errors
    else:
        [error] = result.errors
        assert (error.code, error.line) == ("invalid_json_line", 1)
        assert str(MAX_JSON_DEPTH) in error.message


def good_body_plain(endpoint: str) -> dict[str, Any]:
    field = REQUIRED_FIELD[endpoint]
    value: Any = [{"role": "user", "content": "hi"}] if field == "messages" else "hi"
    return {"model": model_of(endpoint), field: value}


@pytest.mark.parametrize("depth", [1_000, 100_000, 300_000])
def test_absurd_nesting_is_invalid_json_not_a_recursion_error(depth: int) -> None:
    """msgspec raises RecursionError (not a ValueError) past a depth that depends on the stack."""
    for line in (
        b"[" * depth + b"]" * depth,
        b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": '
        + b"[" * depth
        + b"]" * depth
        + b"}}",
        b'{"custom_id": ' + b"{" * depth,
    ):
        [error] = verdict([line], "/v1/embeddings").errors
        assert error.code == "invalid_json_line"


# --- whole files, split into chunks anywhere -----------------------------------------------------------


async def _chunks(data: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    start = 0
    for cut in sorted(cuts):
        yield data[start:cut]
        start = cut
    yield data[start:]


async def _lines_of(data: bytes, cuts: list[int]) -> list[bytes]:
    return [raw async for _, raw in split_lines(_chunks(data, cuts))]


@st.composite
def hostile_files(draw: st.DrawFn, endpoint: str) -> bytes:
    lines = draw(st.lists(hostile_lines(endpoint), max_size=12))
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    data = ending.join(lines) + draw(st.sampled_from([b"", ending]))
    return (BOM if draw(st.booleans()) else b"") + data


@fuzz_settings(25, share=0.5)
@given(
    endpoints.flatmap(lambda e: st.tuples(st.just(e), hostile_files(e))),
    st.lists(st.integers(0, 10_000), max_size=8),
)
def test_any_file_gets_the_same_verdict_however_it_is_cut(case: tuple[str, bytes], cuts: list[int]) -> None:
    endpoint, data = case
    count("validator files")
    cuts = [cut % (len(data) + 1) for cut in cuts]
    lines = asyncio.run(_lines_of(data, cuts))
    whole = data.split(b"\n")
    if whole[-1] == b"":
        whole.pop()
    assert lines == whole
    result = verdict(lines, endpoint)
    if data.startswith(BOM) and not is_blank(lines[0]):
        assert ("invalid_json_line", 1) in [(e.code, e.line) for e in result.errors]
