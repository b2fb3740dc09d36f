"""Idempotency-Key: one object per project and key, however many API servers race (docs/idempotency.md).

The key is stored first, with the request's fingerprint and the id the object will have, by an
insert-if-absent; only the request that stored it creates the object. Any other request with the key
gets that object once it exists (waiting a moment while it is being created), or is refused when its
fingerprint differs. A request that fails forgets its key, so the client may send it again; one that
died leaves a key without an object, which a later request takes over once it is stale.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from overnight.domain.clock import Clock
from overnight.domain.errors import ApiError
from overnight.domain.idempotency import KEY_TTL_S, STALE_S, KeyRecord, in_use, reused
from overnight.store.base import MetadataStore

log = logging.getLogger("overnight.idempotency")
T = TypeVar("T")
WAIT_S = 10.0  # how long a request waits for the object another request with its key is creating
POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """The key's object, and whether this call created it."""

    value: T
    created: bool


class IdempotentCreates:
    def __init__(self, store: MetadataStore, clock: Clock, *, wait_s: float = WAIT_S) -> None:
        self._store = store
        self._clock = clock
        self._wait_s = wait_s

    def _now(self) -> int:
        return int(self._clock.now())

    async def create(
        self,
        project: str,
        key: str,
        fingerprint: str,
        *,
        new_id: Callable[[], str],
        create: Callable[[str], Awaitable[T]],
        find: Callable[[str], Awaitable[T | None]],
        gone: Callable[[str], ApiError],
    ) -> Outcome[T]:
        """The object of `key`: made by `create(id)` with an id from `new_id()` when the key is new,
        else the one `find(id)` gives (`gone(id)` is raised when it was deleted since)."""
        while True:
            record = await self._store.get_key(project, key)
            if record is None:
                object_id = new_id()
                mine = KeyRecord(project, key, fingerprint, object_id, self._now())
                record = await self._store.remember_key(mine)
                if record.object_id == object_id and record.fingerprint == fingerprint:
                    return Outcome(await self._make(mine, create), created=True)
            if record.fingerprint != fingerprint:
                raise reused(key)
            found = await self._wait_for(record, find)
            if found is not None:
                return Outcome(found, created=False)
            if record.completed_at is not None:
                raise gone(record.object_id)
            # The request that stored the key failed (it forgot the key) or died: go round again.

    async def _make(self, record: KeyRecord, create: Callable[[str], Awaitable[T]]) -> T:
        try:
            made = await create(record.object_id)
        except BaseException:
            await asyncio.shield(self._store.forget_key(record.project, record.key, record.object_id))
            raise
        await self._store.key_done(record.project, record.key, record.object_id, self._now())
        return made

    async def _wait_for(self, record: KeyRecord, find: Callable[[str], Awaitable[T | None]]) -> T | None:
        """The key's object once it exists; None when it was deleted (the key is completed), or when the
        key went (its request failed) or was stale and is now forgotten, so the caller may try again."""
        deadline = asyncio.get_running_loop().time() + self._wait_s
        while True:
            found = await find(record.object_id)
            if found is not None or record.completed_at is not None:
                return found
            current = await self._store.get_key(record.project, record.key)
            if current is None or current.object_id != record.object_id:
                return None
            if current.completed_at is not None:  # created meanwhile (and perhaps deleted at once)
                return await find(record.object_id)
            if self._now() - record.created_at >= STALE_S:
                log.warning(
                    "Idempotency-Key of project %s stale: %s was never created; taking the key over",
                    record.project,
                    record.object_id,
                )
                await self._store.forget_key(record.project, record.key, record.object_id)
                return None
            if asyncio.get_running_loop().time() >= deadline:
                raise in_use(record.key)
            await asyncio.sleep(POLL_S)

    async def sweep(self) -> int:
        """Forget the keys first used over KEY_TTL_S ago; how many went."""
        return await self._store.forget_keys_before(self._now() - KEY_TTL_S)
