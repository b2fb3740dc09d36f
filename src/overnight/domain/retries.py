"""Retrying what failed: which lines of an ended batch's error file go into the new batch (pure).

A line is chosen when its error code is one of `error_codes` or its HTTP status is one of
`status_codes` (either list may be given; neither: every line), and, when `request_ids` is given, its
`id` is one of them. The code is the line's `error.code` (`batch_expired`, `batch_cancelled`), else
the code in the upstream's answer (else its error `type`, else `upstream_error`): the same code the
progress extension groups errors by. The status is the line's `response.status_code`; lines that never
ran have none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from overnight.domain.errors import InvalidRequest
from overnight.domain.results import UPSTREAM_ERROR, error_code_of

MAX_FILTER_ITEMS = 1000


@dataclass(frozen=True, slots=True)
class ErrorLine:
    """What the retry filter looks at in one error-file line."""

    request_id: str
    code: str
    status: int | None


class _Error(msgspec.Struct):
    code: Any = None


class _Response(msgspec.Struct):
    status_code: int | None = None
    body: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))


class _Line(msgspec.Struct):
    id: str = ""
    response: _Response | None = None
    error: _Error | None = None


_decoder = msgspec.json.Decoder(_Line)


def read_error_line(raw: bytes) -> ErrorLine | None:
    """The line's id, code and status; None when it is not an error-file line Overnight wrote."""
    try:
        line = _decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if not line.id:
        return None
    if line.error is not None and isinstance(line.error.code, str) and line.error.code:
        code = line.error.code
    elif line.response is not None:
        code = error_code_of(bytes(line.response.body))
    else:
        code = UPSTREAM_ERROR
    status = line.response.status_code if line.response is not None else None
    return ErrorLine(line.id, code, status)


@dataclass(frozen=True, slots=True)
class StatusPattern:
    """One entry of `status_codes`: an exact status (429) or a class ("5xx": first digit 5)."""

    value: int
    whole_class: bool = False

    def matches(self, status: int) -> bool:
        return status // 100 == self.value if self.whole_class else status == self.value


@dataclass(frozen=True, slots=True)
class RetrySelection:
    error_codes: frozenset[str] = frozenset()
    status_codes: tuple[StatusPattern, ...] = ()
    request_ids: frozenset[str] | None = None

    def chooses(self, line: ErrorLine) -> bool:
        if self.request_ids is not None and line.request_id not in self.request_ids:
            return False
        if not self.error_codes and not self.status_codes:
            return True
        if line.code in self.error_codes:
            return True
        return line.status is not None and any(p.matches(line.status) for p in self.status_codes)


def _list(body: Mapping[str, Any], name: str) -> list[Any] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidRequest(
            f"Invalid type for '{name}': expected an array.", param=name, code="invalid_type"
        )
    if len(value) > MAX_FILTER_ITEMS:
        raise InvalidRequest(
            f"Invalid '{name}': at most {MAX_FILTER_ITEMS} items.", param=name, code="array_above_max_length"
        )
    return value


def _status(item: Any) -> StatusPattern:
    if isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599:
        return StatusPattern(item)
    if isinstance(item, str) and len(item) == 3 and item[0] in "12345" and item[1:].lower() == "xx":
        return StatusPattern(int(item[0]), whole_class=True)
    raise InvalidRequest(
        f"Invalid value in 'status_codes': {item!r}; expected an HTTP status (429) or a class ('5xx').",
        param="status_codes",
        code="invalid_value",
    )


def _strings(items: list[Any], name: str) -> frozenset[str]:
    if not all(isinstance(item, str) and item for item in items):
        raise InvalidRequest(
            f"Invalid value in '{name}': expected non-empty strings.", param=name, code="invalid_value"
        )
    return frozenset(items)


def parse_selection(body: Mapping[str, Any], *, need_request_ids: bool = False) -> RetrySelection:
    """The selection a retry request's body asks for (`{}` or no body: every error-file line)."""
    codes = _list(body, "error_codes")
    statuses = _list(body, "status_codes")
    request_ids = _list(body, "request_ids")
    if need_request_ids and not request_ids:
        raise InvalidRequest(
            "Missing required parameter: 'request_ids'.",
            param="request_ids",
            code="missing_required_parameter",
        )
    return RetrySelection(
        error_codes=_strings(codes, "error_codes") if codes else frozenset(),
        status_codes=tuple(_status(item) for item in statuses or ()),
        request_ids=_strings(request_ids, "request_ids") if request_ids else None,
    )
