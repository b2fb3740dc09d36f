"""How many bytes one upload may store: its purpose's size limit, and the room left in its project's
storage quota (docs/limits.md). The files service streams the content under the smaller of the two and,
when the stream passes it, refuses with the error of the limit that was reached."""

from __future__ import annotations

from dataclasses import dataclass

from overnight.domain.clock import Clock
from overnight.domain.errors import ApiError
from overnight.domain.quotas import StorageQuotas, UploadSizes, room_left, storage_quota_exceeded
from overnight.store.base import MetadataStore

FORM_OVERHEAD = 1024 * 1024  # room for the other form fields and multipart boundaries


@dataclass(frozen=True, slots=True)
class Allowance:
    """What one upload may store: `max_bytes`, set by the purpose's size limit or, when `by_quota`, by
    the room left in the project's `quota` (of which `stored` bytes are in use)."""

    project: str
    purpose: str | None
    max_bytes: int
    by_quota: bool = False
    quota: int | None = None
    stored: int = 0


class UploadLimits:
    def __init__(
        self,
        store: MetadataStore,
        clock: Clock,
        sizes: UploadSizes | None = None,
        quotas: StorageQuotas | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self.sizes = sizes if sizes is not None else UploadSizes()
        self._quotas = quotas if quotas is not None else StorageQuotas()

    async def allowance(self, project: str, purpose: str | None) -> Allowance:
        """The bytes an upload of `purpose` by `project` may store now (the store is asked only for a
        project with a quota)."""
        limit = self.sizes.limit_for(purpose)
        quota = self._quotas.quota_of(project)
        if quota is None:
            return Allowance(project, purpose, limit)
        stored = await self._store.stored_bytes(project, int(self._clock.now()))
        room = room_left(quota, stored)
        return Allowance(project, purpose, min(limit, room), room < limit, quota, stored)

    def refusal(self, allowance: Allowance) -> ApiError:
        """The error for content larger than `allowance.max_bytes`."""
        if allowance.by_quota and allowance.quota is not None:
            return storage_quota_exceeded(allowance.project, allowance.quota, allowance.stored)
        return self.sizes.too_large(allowance.purpose)

    def check_declared(self, allowance: Allowance, declared_bytes: int | None) -> None:
        """Refuse, before a byte of the content is read, a request whose declared size (the whole form)
        cannot fit: the content alone would pass the allowance."""
        if declared_bytes is not None and declared_bytes > allowance.max_bytes + FORM_OVERHEAD:
            raise self.refusal(allowance)
        if allowance.max_bytes == 0:  # a quota already used up: not even an empty file
            raise self.refusal(allowance)
