"""Batches: create, retrieve, list and cancel. Running them is the engine's job."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

from overnight.blobs.base import BlobStore
from overnight.domain import limits
from overnight.domain.clock import Clock
from overnight.domain.errors import Conflict, InvalidRequest, batch_not_found, file_not_found
from overnight.domain.events import Subscriptions
from overnight.domain.idempotency import json_fingerprint
from overnight.domain.ids import IdGenerator, blob_key
from overnight.domain.lifecycle import CANCELLABLE, transition
from overnight.domain.lines import split_line_groups
from overnight.domain.models import Batch, BatchError, BatchStatus, Page
from overnight.domain.quotas import RATE_WINDOW_S, batch_rate_exceeded, retry_after_s
from overnight.domain.tokens import (
    TOKEN_LIMIT_CODE,
    InputEstimate,
    TokenBudgets,
    over_budget,
    token_limit_message,
)
from overnight.services.idempotency import IdempotentCreates
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
    """`blobs` and `budgets`: where a batch's input is read to hold it to its project's enqueued-token
    budget (only for a project that has one); `subscriptions`: the webhooks a batch refused at once
    makes its `batch.failed` event for."""

    def __init__(
        self,
        store: MetadataStore,
        ids: IdGenerator,
        clock: Clock,
        completion_windows: Sequence[str],
        on_change: Callable[[], None],
        *,
        blobs: BlobStore | None = None,
        budgets: TokenBudgets | None = None,
        subscriptions: Subscriptions | None = None,
        idempotency: IdempotentCreates | None = None,
        creation_rate_per_hour: int | None = None,
    ) -> None:
        self._idempotency = idempotency or IdempotentCreates(store, clock)
        self._creation_rate = creation_rate_per_hour
        self._store = store
        self._ids = ids
        self._clock = clock
        self._windows = tuple(completion_windows)
        self._on_change = on_change
        self._blobs = blobs
        self._budgets = budgets if budgets is not None else TokenBudgets()
        if self._blobs is None and (self._budgets.per_project or self._budgets.default is not None):
            raise ValueError("token budgets need the blob store, to read the inputs")
        self._subscriptions = subscriptions if subscriptions is not None else Subscriptions()
        # Within this process, a budget's check and the batch that passes it are one step (across API
        # servers, two creates at the same moment may overshoot by one batch: docs/costs.md).
        self._budget_lock = asyncio.Lock()

    async def create(
        self,
        project: str,
        params: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        batch_id: str | None = None,
    ) -> Batch:
        """Create a batch from the request's `params` (with `batch_id` when given). With
        `idempotency_key`, a key the project already used gives that key's batch (services/idempotency.py)."""
        if idempotency_key is not None:
            outcome = await self._idempotency.create(
                project,
                idempotency_key,
                json_fingerprint("POST /v1/batches", params),
                new_id=self._ids.batch_id,
                create=lambda new_id: self.create(project, params, batch_id=new_id),
                find=lambda found_id: self._store.get_batch(found_id, project),
                gone=batch_not_found,
            )
            return outcome.value
        await self._check_creation_rate(project)
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
            id=batch_id or self._ids.batch_id(),
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
        budget = self._budgets.budget_of(project)
        if budget is None:
            await self._store.add_batch(batch)
        else:
            batch = await self._add_within_budget(batch, budget)
        log.info(
            "batch created id=%s project=%s endpoint=%s input=%s", batch.id, project, endpoint, input_file_id
        )
        self._on_change()
        return batch

    async def _check_creation_rate(self, project: str) -> None:
        """429 when the project already created `batch_create_rate_per_hour` batches in the last hour,
        with the seconds until the oldest of those leaves the hour (counted in the store, so across API
        servers; two creates at the same moment may both pass the last free place)."""
        if self._creation_rate is None:
            return
        now = int(self._clock.now())
        since = now - RATE_WINDOW_S + 1  # the last hour's seconds, this one included
        nth = await self._store.nth_latest_batch_created_at(project, since, self._creation_rate)
        if nth is not None:
            raise batch_rate_exceeded(self._creation_rate, retry_after_s(nth, now))

    async def _add_within_budget(self, batch: Batch, budget: int) -> Batch:
        """Store the batch holding its estimated input tokens, or failed with `token_limit_exceeded`
        when they would take its project's unfinished batches past `budget` (as OpenAI does)."""
        estimate = await self._estimate(batch.input_file_id)
        async with self._budget_lock:
            enqueued = await self._store.enqueued_tokens(batch.project)
            if not over_budget(enqueued, estimate.tokens, budget):
                accepted = dataclasses.replace(batch, enqueued_tokens=estimate.tokens)
                await self._store.add_batch(accepted)
                return accepted
            now = int(self._clock.now())
            message = token_limit_message(estimate.model, batch.project, budget)
            refused = transition(
                batch,
                BatchStatus.FAILED,
                now,
                model=estimate.model,
                errors=(BatchError(TOKEN_LIMIT_CODE, message),),
            )
            event = self._subscriptions.event_for(refused, self._ids.event_id(), now)
            await self._store.add_batch(refused, event=event)
        log.info(
            "batch refused id=%s project=%s: %d tokens estimated, %d enqueued, budget %d",
            batch.id,
            batch.project,
            estimate.tokens,
            enqueued,
            budget,
        )
        return refused

    async def _estimate(self, input_file_id: str) -> InputEstimate:
        """The input's estimated tokens, read as a stream (a chunk at a time, never the whole file)."""
        assert self._blobs is not None  # the constructor checked it
        estimate = InputEstimate()
        try:
            async for group in split_line_groups(self._blobs.read(blob_key(input_file_id))):
                for _, raw in group:
                    estimate.add(raw)
        except FileNotFoundError:  # content gone: validation fails the batch, saying so
            return InputEstimate()
        return estimate

    async def retrieve(self, project: str | None, batch_id: str) -> Batch:
        """The batch, if it is the project's; `project` None: of any project (for an admin)."""
        batch = await self._store.get_batch(batch_id, project)
        if batch is None:
            raise batch_not_found(batch_id)
        return batch

    async def list(self, project: str | None, *, after: str | None, limit: int) -> Page[Batch]:
        """The project's batches, newest first; `project` None: every project's (for an admin)."""
        return await self._store.list_batches(project, after=after, limit=limit)

    async def cancel(self, project: str | None, batch_id: str) -> Batch:
        """Cancel the batch, if it is the project's; `project` None: of any project (for an admin)."""
        while True:
            batch = await self.retrieve(project, batch_id)
            if batch.status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
                return batch
            if batch.status not in CANCELLABLE:
                raise Conflict(f"Cannot cancel a batch with status '{batch.status}'.")
            cancelling = transition(batch, BatchStatus.CANCELLING, int(self._clock.now()))
            if await self._store.transition_batch(cancelling, expected=(batch.status,)):
                log.info("batch cancelling id=%s project=%s", batch_id, batch.project)
                self._on_change()
                return await self.retrieve(project, batch_id)
