"""Idempotency-Key on the creates (POST /v1/files, POST /v1/batches, a batch's retry): the rules, pure.

The same key with the same request gives the object the first request created, as it is now; the same
key with another request is refused. A key is a project's, and is kept at least `KEY_TTL_S`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from overnight.domain.errors import ApiError, Conflict, InvalidRequest

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255
KEY_TTL_S = 86_400  # a key is kept (and honoured) at least this long after its first use
STALE_S = 600  # a key whose object never appeared this long after its first use: that request died


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key as stored: the first request's fingerprint and the id of the object it creates (chosen
    before it is created); `completed_at` once that object exists."""

    project: str
    key: str
    fingerprint: str
    object_id: str
    created_at: int
    completed_at: int | None = None


class KeyReused(ApiError):
    """The key was first used with another request (422, as the IETF Idempotency-Key draft says)."""

    status = 422


def check_key(raw: str) -> str:
    """The header's value, if usable as a key: 1 to 255 printable ASCII characters."""
    if not 1 <= len(raw) <= MAX_KEY_CHARS or not all(" " <= char <= "~" for char in raw):
        raise InvalidRequest(
            f"The {HEADER} header must be 1 to {MAX_KEY_CHARS} printable ASCII characters.",
            param=HEADER,
            code="invalid_idempotency_key",
        )
    return raw


def json_fingerprint(route: str, params: Mapping[str, Any]) -> str:
    """The fingerprint of a JSON request: its route and its body with keys sorted, so the same request
    gives the same fingerprint however its client orders or spaces it."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{route}\n{canonical}".encode()).hexdigest()


class UploadFingerprint:
    """The fingerprint of an upload, computed while it streams: its content and its form fields."""

    def __init__(self, route: str) -> None:
        self._route = route
        self._content = hashlib.sha256()
        self._fields: dict[str, str] = {}

    def content(self, chunk: bytes) -> None:
        self._content.update(chunk)

    def field(self, name: str, value: str) -> None:
        self._fields[name] = value

    def digest(self) -> str:
        return json_fingerprint(self._route, {"fields": self._fields, "content": self._content.hexdigest()})


def reused(key: str) -> KeyReused:
    return KeyReused(
        f"The {HEADER} '{key}' was already used with a different request; send a new key for a new request.",
        param=HEADER,
        code="idempotency_key_reused",
    )


def in_use(key: str) -> Conflict:
    return Conflict(
        f"A request with the {HEADER} '{key}' is still being processed; try again in a moment.",
        param=HEADER,
        code="idempotency_key_in_use",
    )
