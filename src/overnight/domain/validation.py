"""Streaming validation of a batch input file, and the engine's hot-path line parser.

`BatchValidator` sees one JSONL line at a time and keeps only what the rules need: the count, the
custom_ids seen (at most `max_requests` of them), the file's model and a bounded list of errors.
Each line is decoded once into a typed msgspec Struct whose `body` stays raw; the body is then decoded
by a second small Struct that captures only the fields the rules read, so large `messages` or `input`
values are skipped by msgspec's C scanner rather than built as Python objects.

Choices where the spec is silent (see also docs/compatibility.md):
* custom_id: a non-empty string of at most `MAX_CUSTOM_ID_CHARS` (512) characters.
* A null value counts as missing, for the four line keys and for the body fields checked here.
* The first model seen (explicit, or the moderation default) is the file's model. Only that model is
  checked with `model_is_served` (once); a line naming another model gets `mismatched_model` alone.
* Every independent problem on a line is reported, in the order custom_id, method, url, body,
  body.model, body.stream, then the endpoint's required body field.
* File-level errors (`empty_file`, `too_many_tasks`, both with line null) come first and are always
  kept; line errors follow in line order up to `max_errors` entries in all.
* Besides the five endpoints with a named required field, the image and video endpoints require `prompt`.
* Values echoed into messages (custom_id, model) are cut at `_ECHO_MAX_CHARS` characters.
* A line nesting arrays and objects more than `MAX_JSON_DEPTH` (256) deep is `invalid_json_line`: msgspec,
  which also reads the lines to run them, would raise RecursionError at a depth that depends on the stack.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from overnight.domain import limits
from overnight.domain.models import BatchError

__all__ = [
    "MAX_CUSTOM_ID_CHARS",
    "BatchValidator",
    "ParsedRequest",
    "RequestLine",
    "ValidationResult",
    "count_embedding_inputs",
    "is_blank",
    "parse_request",
]

MAX_CUSTOM_ID_CHARS: Final = 512
MAX_JSON_DEPTH: Final = 256
_ECHO_MAX_CHARS: Final = 256
_JSON_WHITESPACE: Final = b" \t\r\n"
_WHITESPACE_BYTES: Final = frozenset(_JSON_WHITESPACE)
_ABSENT: Final = msgspec.Raw()
_NULL: Final = msgspec.Raw(b"null")

_INVALID_JSON: Final = "This line is not parseable as valid JSON."
_TOO_DEEP: Final = (
    "This line is not parseable as valid JSON: its arrays and objects are nested more than "
    f"{MAX_JSON_DEPTH} levels deep."
)
_NOT_BRACKETS: Final = bytes(byte for byte in range(256) if byte not in b"[]{}")
_ONE_KIND_OF_BRACKETS: Final = bytes.maketrans(b"{}", b"[]")
_OPEN: Final = ord("[")
_BRACKET_RUN: Final = re.compile(rb"\[+|\]+")
_PAIR_PASSES: Final = 8
_INVALID_URL: Final = "The URL provided for this request does not match the batch endpoint."
_INVALID_METHOD: Final = (
    "The method provided for this request is not supported. The Batch API only supports 'POST'."
)


class RequestLine(msgspec.Struct):
    """One line of an already validated input file; `body` holds the user's exact bytes."""

    custom_id: str
    method: str
    url: str
    body: msgspec.Raw


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    custom_id: str
    body: bytes  # the exact bytes of the line's "body" value, never re-encoded


_REQUEST_DECODER: Final = msgspec.json.Decoder(RequestLine)


def parse_request(raw: bytes) -> ParsedRequest:
    """Parse a line of an already validated file; a malformed one raises msgspec.DecodeError (ValueError)."""
    line = _REQUEST_DECODER.decode(raw)
    return ParsedRequest(line.custom_id, bytes(line.body))


def is_blank(raw: bytes) -> bool:
    """True for an empty or whitespace-only line (JSON whitespace, so a lone "\\r" too)."""
    return not raw or (raw[0] in _WHITESPACE_BYTES and not raw.strip(_JSON_WHITESPACE))


@dataclass(frozen=True, slots=True)
class ValidationResult:
    errors: tuple[BatchError, ...]  # at most max_errors entries: file-level first, then line order
    total: int  # requests, i.e. non-blank lines
    model: str | None  # the one model of the file

    @property
    def ok(self) -> bool:
        return not self.errors


class _LooseLine(msgspec.Struct):
    """Any JSON object decodes into this; the rules then look at each key's type themselves."""

    custom_id: object = None
    method: object = None
    url: object = None
    body: msgspec.Raw = _ABSENT


class _Body(msgspec.Struct):
    model: object = None
    stream: object = None


class _MessagesBody(_Body):
    messages: msgspec.Raw = _ABSENT


class _InputBody(_Body):
    input: msgspec.Raw = _ABSENT


class _PromptBody(_Body):
    prompt: msgspec.Raw = _ABSENT


class _EmbeddingsBody(_Body):
    input: object = None  # decoded: the inputs are counted across the file


@dataclass(frozen=True, slots=True)
class _EndpointRules:
    name: str  # prefix of the streaming message, e.g. "Chat Completions"
    body_type: type[_Body]
    required: str | None = None  # body field the endpoint requires besides model
    default_model: str | None = None  # used when the body names no model


_ENDPOINT_RULES: Final = {
    "/v1/chat/completions": _EndpointRules("Chat Completions", _MessagesBody, "messages"),
    "/v1/completions": _EndpointRules("Completions", _PromptBody, "prompt"),
    "/v1/embeddings": _EndpointRules("Embeddings", _EmbeddingsBody, "input"),
    "/v1/responses": _EndpointRules("Responses", _InputBody, "input"),
    "/v1/moderations": _EndpointRules(
        "Moderations", _InputBody, "input", default_model=limits.DEFAULT_MODERATION_MODEL
    ),
    "/v1/images/generations": _EndpointRules("Images", _PromptBody, "prompt"),
    "/v1/images/edits": _EndpointRules("Image Edits", _PromptBody, "prompt"),
    "/v1/videos": _EndpointRules("Videos", _PromptBody, "prompt"),
}


def _fast_line_type(rules: _EndpointRules) -> type[msgspec.Struct] | None:
    """The strict shape of a well-formed line of this endpoint, or None where it has none (embeddings
    count their inputs; endpoints without a required field). See `BatchValidator._passes_fast`."""
    if rules.required is None or rules.body_type is _EmbeddingsBody:
        return None
    body = msgspec.defstruct(
        "_FastBody",
        [("model", str), ("stream", bool | None, None), ("required", msgspec.Raw, _ABSENT)],
        rename={"required": rules.required},
    )
    return msgspec.defstruct("_FastLine", [("custom_id", str), ("method", str), ("url", str), ("body", body)])


def _echo(text: str) -> str:
    return text if len(text) <= _ECHO_MAX_CHARS else text[:_ECHO_MAX_CHARS] + "..."


def _utf8_checked(raw: bytes) -> bytes:
    """`raw`, once known to be UTF-8 and nested at most MAX_JSON_DEPTH deep: msgspec does not check the
    strings inside values it skips, and past a depth that depends on the stack it raises RecursionError."""
    if not raw.isascii():
        raw.decode()  # raises UnicodeDecodeError
    if _too_deep(raw):
        raise ValueError(_TOO_DEEP)
    return raw


def _too_deep(raw: bytes) -> bool:
    """True if `raw` nests arrays and objects more than MAX_JSON_DEPTH deep. Costs two byte counts for
    a line with fewer brackets than that. Otherwise strings are cut out (once escaped backslashes and
    quotes are gone, every quote opens or closes a string), the brackets kept as one kind, the innermost
    pairs removed a few times (each time the depth goes down by one) and the runs that are left walked."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return False
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(unescaped.split(b'"')[::2]).translate(_ONE_KIND_OF_BRACKETS, _NOT_BRACKETS)
    for _ in range(_PAIR_PASSES):
        brackets = brackets.replace(b"[]", b"")
    depth, room = 0, MAX_JSON_DEPTH - _PAIR_PASSES
    for run in _BRACKET_RUN.findall(brackets):
        depth += len(run) if run[0] == _OPEN else -len(run)
        if depth > room:
            return True
    return False


def _is_absent(value: object) -> bool:
    if isinstance(value, msgspec.Raw):
        return not value or value == _NULL
    return value is None


def count_embedding_inputs(value: object) -> int:
    """A string or one token array is one input; a list of strings or of token arrays is len(list)."""
    if not isinstance(value, list):
        return 1
    if value and all(type(item) is int for item in value):
        return 1
    return len(value)


class BatchValidator:
    """Validates one batch input file fed line by line; memory stays bounded whatever the input."""

    def __init__(
        self,
        endpoint: str,
        model_is_served: Callable[[str], bool],
        *,
        max_requests: int = limits.MAX_REQUESTS_PER_BATCH,
        max_embedding_inputs: int = limits.MAX_EMBEDDING_INPUTS_PER_BATCH,
        max_errors: int = limits.MAX_VALIDATION_ERRORS,
        fast_path: bool = True,
    ) -> None:
        if max_errors < 1:
            raise ValueError("max_errors must be at least 1")
        self._endpoint = endpoint
        self._rules = _ENDPOINT_RULES.get(endpoint, _EndpointRules(endpoint, _Body))
        self._model_is_served = model_is_served
        self._max_requests = max_requests
        self._max_embedding_inputs = max_embedding_inputs
        self._max_errors = max_errors
        self._line_decoder = msgspec.json.Decoder(_LooseLine)
        self._body_decoder = msgspec.json.Decoder(self._rules.body_type)
        fast_type = _fast_line_type(self._rules) if fast_path else None
        self._fast_decoder = msgspec.json.Decoder(fast_type) if fast_type is not None else None
        self._total = 0
        self._custom_ids: set[str] = set()
        self._model: str | None = None
        self._model_served = False
        self._embedding_inputs = 0
        self._errors: list[BatchError] = []

    def check_line(self, line_no: int, raw: bytes) -> None:
        """Check one physical line (1-based `line_no`, no trailing newline). Blank lines are skipped."""
        if self._passes_fast(raw):
            return
        if is_blank(raw):
            return
        self._total += 1
        if self._total > self._max_requests:
            return  # reported once by finish(); nothing past the limit is kept
        try:
            line = self._line_decoder.decode(_utf8_checked(raw))
        except ValueError:  # msgspec.DecodeError, UnicodeDecodeError, too deep
            self._error(line_no, "invalid_json_line", _TOO_DEEP if _too_deep(raw) else _INVALID_JSON, None)
            return
        self._check_custom_id(line_no, line.custom_id)
        self._check_method(line_no, line.method)
        self._check_url(line_no, line.url)
        self._check_body(line_no, line.body)

    def _passes_fast(self, raw: bytes) -> bool:
        """Count a line that breaks no rule, decoding it once into its strict shape; False (nothing
        counted) for any line it is not sure of, which then takes the rule-by-rule path. Most lines of
        most files take only this path, at about half the cost."""
        decoder = self._fast_decoder
        if decoder is None or self._total >= self._max_requests or not self._model_served:
            return False
        try:
            line: Any = decoder.decode(_utf8_checked(raw))
        except ValueError:
            return False
        custom_id, body = line.custom_id, line.body
        if (
            line.method != "POST"
            or line.url != self._endpoint
            or body.model != self._model
            or body.stream is True
            or _is_absent(body.required)
            or not 0 < len(custom_id) <= MAX_CUSTOM_ID_CHARS
            or custom_id in self._custom_ids
        ):
            return False
        self._custom_ids.add(custom_id)
        self._total += 1
        return True

    def finish(self) -> ValidationResult:
        file_errors: list[BatchError] = []
        if self._total == 0:
            file_errors.append(BatchError("empty_file", "The batch input file contains no requests."))
        elif self._total > self._max_requests:
            message = (
                f"The batch input file contains {self._total} requests, more than the limit of "
                f"{self._max_requests} requests per batch."
            )
            file_errors.append(BatchError("too_many_tasks", message))
        room = self._max_errors - len(file_errors)
        errors = (*file_errors, *self._errors[:room])
        return ValidationResult(errors, self._total, self._model)

    def _error(self, line_no: int, code: str, message: str, param: str | None) -> None:
        if len(self._errors) < self._max_errors:
            self._errors.append(BatchError(code, message, param, line_no))

    def _missing(self, line_no: int, param: str) -> None:
        self._error(line_no, "missing_required_parameter", f"Missing required parameter: '{param}'.", param)

    def _bad_type(self, line_no: int, param: str, expected: str) -> None:
        self._error(line_no, "invalid_request", f"Invalid type for '{param}': expected {expected}.", param)

    def _check_custom_id(self, line_no: int, custom_id: object) -> None:
        if custom_id is None:
            self._missing(line_no, "custom_id")
        elif not isinstance(custom_id, str):
            self._bad_type(line_no, "custom_id", "a string")
        elif not custom_id:
            message = "Invalid 'custom_id': empty string. Expected a non-empty string."
            self._error(line_no, "invalid_request", message, "custom_id")
        elif len(custom_id) > MAX_CUSTOM_ID_CHARS:
            message = (
                f"Invalid 'custom_id': string too long. Expected a string with maximum length "
                f"{MAX_CUSTOM_ID_CHARS}, but got a string with length {len(custom_id)} instead."
            )
            self._error(line_no, "invalid_request", message, "custom_id")
        elif custom_id in self._custom_ids:
            message = (
                f"The custom_id '{custom_id}' for this request is a duplicate of another request. "
                "The custom_id parameter must be unique for each request in a batch."
            )
            self._error(line_no, "duplicate_custom_id", message, "custom_id")
        else:
            self._custom_ids.add(custom_id)

    def _check_method(self, line_no: int, method: object) -> None:
        if method is None:
            self._missing(line_no, "method")
        elif not isinstance(method, str):
            self._bad_type(line_no, "method", "a string")
        elif method != "POST":
            self._error(line_no, "invalid_method", _INVALID_METHOD, "method")

    def _check_url(self, line_no: int, url: object) -> None:
        if url is None:
            self._missing(line_no, "url")
        elif not isinstance(url, str):
            self._bad_type(line_no, "url", "a string")
        elif url != self._endpoint:
            self._error(line_no, "invalid_url", _INVALID_URL, "url")

    def _check_body(self, line_no: int, raw_body: msgspec.Raw) -> None:
        if _is_absent(raw_body):
            self._missing(line_no, "body")
            return
        try:
            body = self._body_decoder.decode(raw_body)
        except ValueError:
            self._bad_type(line_no, "body", "an object")
            return
        self._check_model(line_no, body.model)
        if body.stream is True:
            message = f"{self._rules.name}: Streaming is not supported in the Batch API."
            self._error(line_no, "streaming_unsupported", message, "body.stream")
        self._check_required_field(line_no, body)
        if isinstance(body, _EmbeddingsBody) and body.input is not None:
            self._count_embeddings(line_no, body.input)

    def _check_model(self, line_no: int, model: object) -> None:
        if model is None or model == "":
            model = self._rules.default_model
            if model is None:
                self._error(line_no, "invalid_request", "Model parameter is required.", "body.model")
                return
        if not isinstance(model, str):
            self._bad_type(line_no, "body.model", "a string")
            return
        if self._model is None:
            self._model = model
            self._model_served = self._model_is_served(model)
        elif model != self._model:
            message = (
                f"The model '{_echo(model)}' for this request does not match the rest of the batch. "
                "Each batch must contain requests for a single model."
            )
            self._error(line_no, "mismatched_model", message, "body.model")
            return
        if not self._model_served:
            message = f"The provided model '{_echo(model)}' is not supported by the Batch API."
            self._error(line_no, "model_not_found", message, "body.model")

    def _check_required_field(self, line_no: int, body: _Body) -> None:
        field = self._rules.required
        if field is not None and _is_absent(getattr(body, field)):
            param = f"body.{field}"
            self._error(line_no, "invalid_request", f"{field.capitalize()} parameter is required.", param)

    def _count_embeddings(self, line_no: int, value: object) -> None:
        before = self._embedding_inputs
        self._embedding_inputs += count_embedding_inputs(value)
        limit = self._max_embedding_inputs
        if before <= limit < self._embedding_inputs:
            message = (
                f"The batch contains more than {limit} embedding inputs in total. "
                f"A {self._endpoint} batch can contain at most {limit} inputs across all its requests."
            )
            self._error(line_no, "too_many_embedding_inputs", message, "body.input")
