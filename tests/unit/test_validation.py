"""The batch input validator and the engine's line parser."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overnight.domain import limits
from overnight.domain.models import BatchError
from overnight.domain.validation import (
    MAX_CUSTOM_ID_CHARS,
    BatchValidator,
    ParsedRequest,
    ValidationResult,
    is_blank,
    parse_request,
)

CHAT = "/v1/chat/completions"
MODEL = "gpt-4o-mini"


def line(
    custom_id: object = "r1",
    *,
    method: object = "POST",
    url: object = CHAT,
    body: object = None,
    drop: Iterable[str] = (),
) -> bytes:
    obj: dict[str, object] = {"custom_id": custom_id, "method": method, "url": url}
    obj["body"] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]} if body is None else body
    for key in drop:
        del obj[key]
    return json.dumps(obj).encode()


def validate(
    lines: Iterable[bytes],
    endpoint: str = CHAT,
    served: Callable[[str], bool] = lambda model: True,
    **limits_: int,
) -> ValidationResult:
    """The verdict on `lines`, checked to be the same with and without the validator's fast path."""
    lines = list(lines)
    verdicts = []
    for fast_path in (True, False):
        validator = BatchValidator(endpoint, served, fast_path=fast_path, **limits_)
        for line_no, raw in enumerate(lines, 1):
            validator.check_line(line_no, raw)
        verdicts.append(validator.finish())
    assert verdicts[0] == verdicts[1]
    return verdicts[0]


def codes(result: ValidationResult) -> list[tuple[str, str | None, int | None]]:
    return [(e.code, e.param, e.line) for e in result.errors]


def only_error(lines: Iterable[bytes], endpoint: str = CHAT) -> BatchError:
    result = validate(lines, endpoint)
    assert len(result.errors) == 1, result.errors
    return result.errors[0]


# --- the happy path, blank lines, CRLF --------------------------------------------------------------


def test_valid_file() -> None:
    result = validate([line("a"), line("b")])
    assert result == ValidationResult((), 2, MODEL)
    assert result.ok


def test_blank_lines_and_crlf_are_skipped_but_numbered() -> None:
    result = validate([line("a") + b"\r", b"", b"  \t\r", line("a") + b"\r", b"\r"])
    assert result.total == 2
    assert codes(result) == [("duplicate_custom_id", "custom_id", 4)]


@pytest.mark.parametrize(("raw", "blank"), [(b"", True), (b"\r", True), (b" \t \r", True), (b"{}", False)])
def test_is_blank(raw: bytes, blank: bool) -> None:
    assert is_blank(raw) is blank


def test_form_feed_is_not_json_whitespace() -> None:
    assert not is_blank(b"\x0c")
    assert only_error([b"\x0c"]).code == "invalid_json_line"


def test_empty_file() -> None:
    for lines in ([], [b"", b"\r"]):
        result = validate(lines)
        assert codes(result) == [("empty_file", None, None)]
        assert result.total == 0
        assert result.model is None


# --- the line envelope -------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"{", b"not json", b"[1, 2]", b'"text"', b"null", b'{"a": 1} x', b"\xff"])
def test_invalid_json_line(raw: bytes) -> None:
    error = only_error([line("a"), raw])
    assert error == BatchError("invalid_json_line", "This line is not parseable as valid JSON.", None, 2)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"custom_id": "\xff"}',
        line(body={"model": "X", "messages": []}).replace(b"X", b"\xed\xa0\x80"),  # a UTF-8 surrogate
        line(body={"model": MODEL, "messages": "X"}).replace(b"X", b"\xc3"),  # in a skipped value
        line().replace(b'"r1"', b'"r1", "other": "\xff"'),  # in an unknown key
    ],
)
def test_invalid_utf8_is_invalid_json(raw: bytes) -> None:
    assert codes(validate([raw])) == [("invalid_json_line", None, 1)]


def test_each_missing_key_is_reported_separately() -> None:
    result = validate([b"{}"])
    assert codes(result) == [
        ("missing_required_parameter", "custom_id", 1),
        ("missing_required_parameter", "method", 1),
        ("missing_required_parameter", "url", 1),
        ("missing_required_parameter", "body", 1),
    ]
    assert result.errors[0].message == "Missing required parameter: 'custom_id'."
    assert result.errors[3].message == "Missing required parameter: 'body'."


@pytest.mark.parametrize("key", ["custom_id", "method", "url", "body"])
def test_null_counts_as_missing(key: str) -> None:
    obj = json.loads(line())
    obj[key] = None
    error = only_error([json.dumps(obj).encode()])
    assert (error.code, error.param, error.line) == ("missing_required_parameter", key, 1)


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (line(7), "custom_id"),
        (line(""), "custom_id"),
        (line("x" * (MAX_CUSTOM_ID_CHARS + 1)), "custom_id"),
        (line(method=1), "method"),
        (line(url=["/v1/chat/completions"]), "url"),
        (line(body=[1]), "body"),
        (line(body="{}"), "body"),
    ],
)
def test_wrong_types_are_invalid_request(raw: bytes, param: str) -> None:
    error = only_error([raw])
    assert (error.code, error.param, error.line) == ("invalid_request", param, 1)


def test_custom_id_at_max_length_is_fine() -> None:
    assert validate([line("x" * MAX_CUSTOM_ID_CHARS)]).ok


def test_invalid_method() -> None:
    error = only_error([line(method="GET")])
    assert (error.code, error.param, error.line) == ("invalid_method", "method", 1)


def test_invalid_url() -> None:
    error = only_error([line("a"), line("b", url="/v1/embeddings")])
    expected = "The URL provided for this request does not match the batch endpoint."
    assert error == BatchError("invalid_url", expected, "url", 2)


def test_duplicate_custom_id() -> None:
    error = only_error([line("a"), line("b"), line("a")])
    expected = (
        "The custom_id 'a' for this request is a duplicate of another request. "
        "The custom_id parameter must be unique for each request in a batch."
    )
    assert error == BatchError("duplicate_custom_id", expected, "custom_id", 3)


# --- the body ----------------------------------------------------------------------------------------


def test_model_is_required() -> None:
    error = only_error([line(body={"messages": []})])
    assert error == BatchError("invalid_request", "Model parameter is required.", "body.model", 1)


def test_model_of_wrong_type() -> None:
    error = only_error([line(body={"model": 4, "messages": []})])
    assert (error.code, error.param) == ("invalid_request", "body.model")


def test_moderations_default_model() -> None:
    url = "/v1/moderations"
    result = validate([line("a", url=url, body={"input": "x"})], url)
    assert result == ValidationResult((), 1, limits.DEFAULT_MODERATION_MODEL)
    mixed = validate(
        [line("a", url=url, body={"input": "x"}), line("b", url=url, body={"model": "other", "input": "x"})],
        url,
    )
    assert codes(mixed) == [("mismatched_model", "body.model", 2)]


def test_mismatched_model() -> None:
    error = only_error([line("a"), line("b", body={"model": "gpt-4o", "messages": []})])
    expected = (
        "The model 'gpt-4o' for this request does not match the rest of the batch. "
        "Each batch must contain requests for a single model."
    )
    assert error == BatchError("mismatched_model", expected, "body.model", 2)


def test_model_not_found_asks_once() -> None:
    asked: list[str] = []

    def served(model: str) -> bool:
        asked.append(model)
        return False

    result = validate([line("a"), line("b")], served=served)
    message = f"The provided model '{MODEL}' is not supported by the Batch API."
    assert result.errors == (
        BatchError("model_not_found", message, "body.model", 1),
        BatchError("model_not_found", message, "body.model", 2),
    )
    assert asked == [MODEL, MODEL]  # once by each of the two validators `validate` runs
    assert result.model == MODEL


def test_streaming_unsupported() -> None:
    body = {"model": MODEL, "messages": [], "stream": True}
    error = only_error([line(body=body)])
    expected = "Chat Completions: Streaming is not supported in the Batch API."
    assert error == BatchError("streaming_unsupported", expected, "body.stream", 1)
    assert validate([line(body={**body, "stream": False})]).ok


@pytest.mark.parametrize(
    ("endpoint", "field"),
    [
        ("/v1/chat/completions", "messages"),
        ("/v1/embeddings", "input"),
        ("/v1/completions", "prompt"),
        ("/v1/responses", "input"),
        ("/v1/moderations", "input"),
    ],
)
def test_endpoint_required_field(endpoint: str, field: str) -> None:
    ok_line = line("a", url=endpoint, body={"model": "m", field: "x"})
    for body in ({"model": "m"}, {"model": "m", field: None}):
        error = only_error([ok_line, line("b", url=endpoint, body=body)], endpoint)
        expected = f"{field.capitalize()} parameter is required."
        assert error == BatchError("invalid_request", expected, f"body.{field}", 2)


def test_messages_message_text() -> None:
    error = only_error([line(body={"model": MODEL})])
    assert error.message == "Messages parameter is required."


# --- limits ------------------------------------------------------------------------------------------


def embedding(custom_id: str, value: object) -> bytes:
    return line(custom_id, url="/v1/embeddings", body={"model": "e", "input": value})


@pytest.mark.parametrize(
    ("value", "count"),
    [("a", 1), (["a", "b", "c"], 3), ([1, 2, 3, 4], 1), ([[1, 2], [3], [4]], 3)],
)
def test_embedding_inputs_are_counted(value: object, count: int) -> None:
    at_limit = validate([embedding("a", value)], "/v1/embeddings", max_embedding_inputs=count)
    assert at_limit.ok
    over = validate([embedding("a", value)], "/v1/embeddings", max_embedding_inputs=count - 1)
    assert codes(over) == [("too_many_embedding_inputs", "body.input", 1)]


def test_too_many_embedding_inputs_reported_once_where_crossed() -> None:
    lines = [embedding(f"r{i}", ["a", "b"]) for i in range(5)]
    result = validate(lines, "/v1/embeddings", max_embedding_inputs=5)
    assert codes(result) == [("too_many_embedding_inputs", "body.input", 3)]


def test_too_many_tasks_reported_once_and_first() -> None:
    lines = [b"junk", *(line(f"r{i}") for i in range(5)), b"more junk", line("r0")]
    result = validate(lines, max_requests=4)
    assert codes(result) == [("too_many_tasks", None, None), ("invalid_json_line", None, 1)]
    assert result.total == 8


def test_errors_are_capped_but_file_errors_kept() -> None:
    lines = [b"x"] * 50
    capped = validate(lines, max_errors=10)
    assert codes(capped) == [("invalid_json_line", None, n) for n in range(1, 11)]
    over = validate(lines, max_errors=10, max_requests=40)
    assert len(over.errors) == 10
    assert over.errors[0].code == "too_many_tasks"
    assert [e.line for e in over.errors[1:]] == list(range(1, 10))


def test_max_errors_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_errors"):
        BatchValidator(CHAT, lambda model: True, max_errors=0)


def test_mixed_errors_in_line_order() -> None:
    lines = [
        line("a"),
        b"{oops",
        line("b", method="PUT", url="/v1/x"),
        b"",
        line("a", body={"model": MODEL, "messages": [], "stream": True}),
        line("c", body={"model": "other"}),
        line(drop=["custom_id", "body"]),
    ]
    assert codes(validate(lines)) == [
        ("invalid_json_line", None, 2),
        ("invalid_method", "method", 3),
        ("invalid_url", "url", 3),
        ("duplicate_custom_id", "custom_id", 5),
        ("streaming_unsupported", "body.stream", 5),
        ("mismatched_model", "body.model", 6),
        ("invalid_request", "body.messages", 6),
        ("missing_required_parameter", "custom_id", 7),
        ("missing_required_parameter", "body", 7),
    ]


# --- parse_request -----------------------------------------------------------------------------------


def test_parse_request_keeps_body_bytes() -> None:
    raw = b'{"body" : { "model":"m" ,"messages": [ ] } , "custom_id":"\\u00e9", "method":"POST","url":"/v"}\r'
    assert parse_request(raw) == ParsedRequest("\u00e9", b'{ "model":"m" ,"messages": [ ] }')


def test_parse_request_rejects_malformed() -> None:
    for raw in (b"{", b"[]", b'{"custom_id": 1, "method": "POST", "url": "/v", "body": {}}'):
        with pytest.raises(msgspec.DecodeError):
            parse_request(raw)


# --- properties --------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
envelope_keys = st.sampled_from(["custom_id", "method", "url", "body", "model", "stream", "messages"])
plausible_objects = st.dictionaries(envelope_keys, json_values, max_size=5)
plausible_lines = plausible_objects.map(lambda obj: json.dumps(obj).encode())

any_lines = st.lists(st.binary(max_size=40) | plausible_lines, max_size=20)


@settings(max_examples=300, deadline=None)
@given(any_lines, st.sampled_from(limits.BATCH_ENDPOINTS))
def test_any_bytes_get_a_verdict(lines: list[bytes], endpoint: str) -> None:
    result = validate(lines, endpoint, max_errors=5, max_requests=15)
    assert len(result.errors) <= 5
    assert result.total == sum(not is_blank(raw) for raw in lines)
    assert result.ok == (result.errors == ())
    for error in result.errors:
        assert error.line is None or 1 <= error.line <= len(lines)


tricky_bytes = st.sampled_from(
    [b'"', b"\\", b"\xff", b"\xc3", b"\xed\xa0", b"{", b"]", b"\r", b"\x00", b"\\ud800"]
)


@st.composite
def mutated_lines(draw: st.DrawFn) -> bytes:
    """A valid line with a few bytes replaced, inserted or cut off."""
    raw = bytearray(line(draw(st.text(max_size=5)), body={"model": MODEL, "messages": draw(json_values)}))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(raw)))
        raw[at : at + draw(st.integers(0, 2))] = draw(st.binary(max_size=2) | tricky_bytes)
    return bytes(raw)


@settings(max_examples=300, deadline=None)
@given(st.lists(mutated_lines(), max_size=10), st.sampled_from(limits.BATCH_ENDPOINTS))
def test_mutated_lines_get_a_verdict(lines: list[bytes], endpoint: str) -> None:
    result = validate(lines, endpoint)
    assert result.total == sum(not is_blank(raw) for raw in lines)


separators = st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : ")])


@st.composite
def valid_files(draw: st.DrawFn) -> list[tuple[str, bytes, bytes]]:
    """(custom_id, body bytes, line) triples of a valid chat file."""
    ids = draw(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=10, unique=True))
    rows = []
    for custom_id in ids:
        extra = draw(st.dictionaries(st.sampled_from(["n", "temperature", "é"]), json_values))
        body_obj = {"model": MODEL, "messages": [{"role": "user", "content": draw(st.text())}], **extra}
        ascii_only = draw(st.booleans())
        sep = draw(separators)
        body = json.dumps(body_obj, ensure_ascii=ascii_only, separators=sep).encode()
        parts = [
            b'"custom_id"' + sep[1].encode() + json.dumps(custom_id, ensure_ascii=ascii_only).encode(),
            b'"method":"POST"',
            b'"url":"' + CHAT.encode() + b'"',
            b'"body"' + sep[1].encode() + body,
        ]
        order = draw(st.permutations(parts))
        ending = draw(st.sampled_from([b"", b"\r", b" "]))
        rows.append((custom_id, body, b"{" + sep[0].encode().join(order) + b"}" + ending))
    return rows


@settings(max_examples=100, deadline=None)
@given(valid_files())
def test_valid_files_validate_and_round_trip(rows: list[tuple[str, bytes, bytes]]) -> None:
    result = validate(raw for _, _, raw in rows)
    assert result == ValidationResult((), len(rows), MODEL)
    for custom_id, body, raw in rows:
        assert parse_request(raw) == ParsedRequest(custom_id, body)
