"""Domain values as OpenAI's JSON objects (every field present, null where unset)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from overnight.domain.models import Batch, FileObject, Page, Usage

T = TypeVar("T")


# Purposes OpenAI accepts on upload but leaves out of its File schema: a strict SDK would reject a File
# that names them, so they are shown as the nearest purpose the schema has (docs/compatibility.md).
_SHOWN_PURPOSE = {"evals": "user_data"}


def file_json(file: FileObject) -> dict[str, Any]:
    return {
        "id": file.id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": file.created_at,
        "filename": file.filename,
        "purpose": _SHOWN_PURPOSE.get(file.purpose, file.purpose),
        "status": file.status,
        "expires_at": file.expires_at,
        "status_details": None,
    }


def usage_json(usage: Usage) -> dict[str, Any]:
    """Token usage as OpenAI's Batch object carries it."""
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def batch_json(batch: Batch) -> dict[str, Any]:
    counts = batch.request_counts
    errors = None
    if batch.errors:
        errors = {
            "object": "list",
            "data": [
                {"code": e.code, "message": e.message, "param": e.param, "line": e.line} for e in batch.errors
            ],
        }
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "model": batch.model,
        "errors": errors,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": str(batch.status),
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": batch.created_at,
        "in_progress_at": batch.in_progress_at,
        "expires_at": batch.expires_at,
        "finalizing_at": batch.finalizing_at,
        "completed_at": batch.completed_at,
        "failed_at": batch.failed_at,
        "expired_at": batch.expired_at,
        "cancelling_at": batch.cancelling_at,
        "cancelled_at": batch.cancelled_at,
        "request_counts": {"total": counts.total, "completed": counts.completed, "failed": counts.failed},
        "usage": usage_json(batch.usage),
        "metadata": batch.metadata,
    }


def list_json(page: Page[T], to_json: Callable[[T], dict[str, Any]]) -> dict[str, Any]:
    data: Sequence[dict[str, Any]] = [to_json(item) for item in page.items]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": page.has_more,
    }


def json_response(payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(payload), content_type="application/json")
