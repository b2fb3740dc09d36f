"""Batches: create, retrieve, list and cancel. Running them is the engine's job."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from overnight.domain import limits
from overnight.domain.clock import Clock
from overnight.domain.errors import Conflict, InvalidRequest, batch_not_found, file_not_found
from overnight.domain.ids import IdGenerator
from overnight.domain.lifecycle import CANCELLABLE, transition
from overnight.domain.models import Batch, BatchStatus, Page
from overnight.store.base import MetadataStore

log = logging.getLogger("overnight.batches")


def _required_string(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if value is None:
        raise InvalidRequest(
            f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter"
        )
    if not isinstance(value, str):
        raise InvalidRequest(
            f"Invalid type for '{name}': expected a string, but got {type(value).__name__} instead.",
            param=name,
            code="invalid_type",
        )
    return value


def _choice(params: dict[str, Any], name: str, allowed: Sequence[str]) -> str:
    value = _required_string(params, name)
    if value not in allowed:
        supported = ", ".join(f"'{a}'" for a in allowed)
        raise InvalidRequest(
            f"Invalid value: '{value}'. Supported values are: {supported}.", param=name, code="invalid_value"
        )
    return value


def check_metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest(
            "Invalid type for 'metadata': expected an object.", param="metadata", code="invalid_type"
        )
    if len(value) > limits.METADATA_MAX_PAIRS:
        raise InvalidRequest(
            f"Invalid 'metadata': too many properties. Expected at most "
            f"{limits.METADATA_MAX_PAIRS}, but got {len(value)}.",
            param="metadata",
            code="object_above_max_properties",
        )
    for key, item in value.items():
        if len(key) > limits.METADATA_MAX_KEY_CHARS:
            raise InvalidRequest(
                f"Invalid 'metadata': key '{key[:80]}' is longer than "
                f"{limits.METADATA_MAX_KEY_CHARS} characters.",
                param=f"metadata.{key}",
                code="string_above_max_length",
            )
        if not isinstance(item, str):
            raise InvalidRequest(
                f"Invalid type for 'metadata.{key}': expected a string, but got {_json_type(item)} instead.",
                param=f"metadata.{key}",
                code="invalid_type",
            )
        if len(item) > limits.METADATA_MAX_VALUE_CHARS:
            raise InvalidRequest(
                f"Invalid 'metadata.{key}': string too long. Expected a string with "
                f"maximum length {limits.METADATA_MAX_VALUE_CHARS}, but got a string "
                f"with length {len(item)} instead.",
                param=f"metadata.{key}",
                code="string_above_max_length",
            )
    return dict(value)


def _json_type(value: Any) -> str:
    names = {list: "an array", dict: "an object", bool: "a boolean", int: "an integer", float: "a number"}
    return "null" if value is None else names.get(type(value), "a value")


def check_output_expiry(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("anchor") != "created_at":
        raise InvalidRequest(
            "Invalid value for 'output_expires_after': expected "
            '{"anchor": "created_at", "seconds": <int>}.',
            param="output_expires_after",
            code="invalid_value",
        )
    seconds = value.get("seconds")
    low, high = limits.EXPIRES_AFTER_MIN_SECONDS, limits.EXPIRES_AFTER_MAX_SECONDS
    if not isinstance(seconds, int) or isinstance(seconds, bool) or not low <= seconds <= high:
        raise InvalidRequest(
            f"'output_expires_after.seconds' must be an integer between {low} and {high}.",
            param="output_expires_after.seconds",
            code="invalid_value",
        )
    return seconds


class BatchesService:
    def __init__(
        self,
        store: MetadataStore,
        ids: IdGenerator,
        clock: Clock,
        completion_windows: Sequence[str],
        on_change: Callable[[], None],
    ) -> None:
        self._store = store
        self._ids = ids
        self._clock = clock
        self._windows = tuple(completion_windows)
        self._on_change = on_change

    async def create(self, project: str, params: dict[str, Any]) -> Batch:
        input_file_id = _required_string(params, "input_file_id")
        endpoint = _choice(params, "endpoint", limits.BATCH_ENDPOINTS)
        window = _choice(params, "completion_window", self._windows)
        metadata = check_metadata(params.get("metadata"))
        output_ttl = check_output_expiry(params.get("output_expires_after"))
        input_file = await self._store.get_file(project, input_file_id)
        if input_file is None:
            raise file_not_found(input_file_id)
        if input_file.purpose != "batch":
            raise InvalidRequest(
                f"The file {input_file_id} has purpose '{input_file.purpose}'; a batch "
                "needs a file uploaded with purpose 'batch'.",
                param="input_file_id",
                code="invalid_file_purpose",
            )
        now = int(self._clock.now())
        window_seconds = limits.parse_window(window)
        assert window_seconds is not None  # settings only admit well-formed windows
        batch = Batch(
            id=self._ids.batch_id(),
            project=project,
            endpoint=endpoint,
            input_file_id=input_file_id,
            completion_window=window,
            status=BatchStatus.VALIDATING,
            created_at=now,
            expires_at=now + window_seconds,
            metadata=metadata,
            output_expires_after=output_ttl,
        )
        await self._store.add_batch(batch)
        log.info(
            "batch created id=%s project=%s endpoint=%s input=%s", batch.id, project, endpoint, input_file_id
        )
        self._on_change()
        return batch

    async def retrieve(self, project: str, batch_id: str) -> Batch:
        batch = await self._store.get_batch(batch_id, project)
        if batch is None:
            raise batch_not_found(batch_id)
        return batch

    async def list(self, project: str, *, after: str | None, limit: int) -> Page[Batch]:
        return await self._store.list_batches(project, after=after, limit=limit)

    async def cancel(self, project: str, batch_id: str) -> Batch:
        while True:
            batch = await self.retrieve(project, batch_id)
            if batch.status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
                return batch
            if batch.status not in CANCELLABLE:
                raise Conflict(f"Cannot cancel a batch with status '{batch.status}'.")
            cancelling = transition(batch, BatchStatus.CANCELLING, int(self._clock.now()))
            if await self._store.transition_batch(cancelling, expected=(batch.status,)):
                log.info("batch cancelling id=%s project=%s", batch_id, project)
                self._on_change()
                return await self.retrieve(project, batch_id)
