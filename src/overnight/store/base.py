"""The metadata store interface. Every implementation passes tests/contract/test_store_contract.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence
from typing import Literal, Protocol

from overnight.domain.models import Batch, BatchStatus, FileObject, Page, ResultKind, ResultRow, Shard

Order = Literal["asc", "desc"]


class StoreUnavailable(ConnectionError):
    """The store did not answer (a connection lost, a server gone): worth trying again later."""


LineRange = tuple[int, int]  # first line, and the line after the last
ALL_LINES: LineRange = (0, 2**62)


class MetadataStore(Protocol):
    async def open(self) -> None:
        """Connect and bring the schema up to date (migrations)."""
        ...

    async def close(self) -> None: ...

    # -- files ---------------------------------------------------------------------------------
    async def add_file(self, file: FileObject) -> None:
        """Store the record, replacing one with the same id (finalizing again rewrites its files), and
        end its upload (see `begin_upload`) in the same transaction."""
        ...

    async def begin_upload(self, file_id: str, started_at: int) -> None:
        """Note that content for `file_id` is being stored and has no record yet."""
        ...

    async def end_upload(self, file_id: str) -> None:
        """Forget the upload of `file_id` (its content was discarded); absent is fine."""
        ...

    async def abandoned_uploads(self, started_before: int, limit: int) -> list[str]:
        """Up to `limit` file ids of uploads begun before `started_before` that never got a record."""
        ...

    async def get_file(self, project: str, file_id: str) -> FileObject | None: ...

    async def list_files(
        self, project: str, *, purpose: str | None, after: str | None, limit: int, order: Order
    ) -> Page[FileObject]:
        """Files of a project ordered by id (= creation), starting after the file `after`."""
        ...

    async def delete_file(self, project: str, file_id: str) -> bool:
        """Remove the file's record; False when it did not exist."""
        ...

    async def files_expired_before(self, now: int, limit: int) -> list[FileObject]:
        """Files of any project whose `expires_at` is at or before `now`."""
        ...

    async def file_in_use(self, file_id: str) -> bool:
        """True while a batch that is not in a terminal status reads this file."""
        ...

    # -- batches -------------------------------------------------------------------------------
    async def add_batch(self, batch: Batch) -> None: ...

    async def get_batch(self, batch_id: str, project: str | None = None) -> Batch | None:
        """The batch with live `request_counts` and `usage`; None if absent or another project's."""
        ...

    async def list_batches(self, project: str, *, after: str | None, limit: int) -> Page[Batch]:
        """Batches of a project, newest first, starting after the batch `after`."""
        ...

    async def transition_batch(self, batch: Batch, expected: Collection[BatchStatus]) -> bool:
        """Compare-and-set: store `batch` only if the stored status is one of `expected`."""
        ...

    async def batches_in(self, statuses: Collection[BatchStatus]) -> list[Batch]:
        """Every batch (of any project) in one of these statuses, oldest first."""
        ...

    async def count_batches(self) -> dict[BatchStatus, int]:
        """How many batches (of every project) are in each status; absent statuses have none."""
        ...

    # -- leases: one worker drives a batch at a time ------------------------------------------------
    async def claim_batch(self, batch_id: str, worker: str, now: int, lease_s: int) -> bool:
        """Take or renew the lease on a batch until `now + lease_s`. Succeeds when nobody holds it,
        `worker` already does, or the holder's lease ran out at or before `now`."""
        ...

    async def release_batch(self, batch_id: str, worker: str) -> None:
        """Give the lease up, if `worker` holds it."""
        ...

    async def release_all_leases(self) -> None:
        """Forget every lease, of batches and shards: for a single server that has just proved it is
        the only one."""
        ...

    # -- shards: ranges of a running batch's lines, each run by one worker at a time --------------
    async def add_shards(self, shards: Sequence[Shard]) -> None:
        """Store a batch's shards; those already stored (the same plan, made again) stay as they are."""
        ...

    async def claim_shard(self, worker: str, now: int, lease_s: int) -> Shard | None:
        """Lease, until `now + lease_s`, one shard that is not done, of a batch in progress whose window
        has not ended, that nobody holds or whose holder's lease ran out at or before `now`: the
        earliest deadline first, then the project with the fewest shards held. None when there is none."""
        ...

    async def renew_shard(self, batch_id: str, shard_no: int, worker: str, now: int, lease_s: int) -> bool:
        """Extend `worker`'s lease on the shard to `now + lease_s`; False when it no longer holds it."""
        ...

    async def finish_shard(self, batch_id: str, shard_no: int, worker: str, part: str | None) -> bool:
        """If `worker` holds the shard: mark it done, with the name of the part files that hold exactly
        its rows (None if none do), and end the lease. False when it no longer held it."""
        ...

    async def release_shard(self, batch_id: str, shard_no: int, worker: str) -> None:
        """Give the lease up without finishing, if `worker` holds it."""
        ...

    async def shards_of(self, batch_id: str) -> list[Shard]:
        """The batch's shards, in order."""
        ...

    # -- a backend's slots: its max_concurrency, across every worker ------------------------------
    async def hold_slots(
        self, backend: str, worker: str, *, wants: bool, in_use: int, limit: int, now: int, lease_s: int
    ) -> tuple[int, int]:
        """Move `worker`'s slots of `backend` (slots 0 to `limit` - 1; a request in flight needs one)
        toward its fair share, and renew them until `now + lease_s`. A worker that `wants` slots says
        so until then; its share is `limit` divided among the workers that want some
        (domain.limits.fair_share). Slots above its share are given back, but never more than leaves
        it `in_use`; free slots (nobody's, or their lease ran out) are taken up to its share.
        Returns (slots held now, its share); it may send min(held, share) requests at once."""
        ...

    # -- results -------------------------------------------------------------------------------
    async def record_results(self, batch_id: str, rows: Sequence[ResultRow]) -> int:
        """Insert rows whose line has no result yet (others are ignored) and update the batch's
        request_counts and usage in the same transaction. Returns how many rows were new."""
        ...

    async def finished_lines(self, batch_id: str, lines: LineRange = ALL_LINES) -> set[int]:
        """Line numbers in the range `lines` that already have a result."""
        ...

    def result_lines(
        self, batch_id: str, kinds: Collection[ResultKind], lines: LineRange = ALL_LINES
    ) -> AsyncIterator[bytes]:
        """The `line` of each result of these kinds in the range `lines`, in line order, each followed by
        a newline, streamed in chunks of many lines (what an output or error file holds)."""
        ...

    async def delete_results(self, batch_id: str) -> None:
        """Forget every result of the batch (its files are written)."""
        ...

    async def ended_batches_with_results(self, statuses: Collection[BatchStatus], limit: int) -> list[str]:
        """Up to `limit` ids of batches in one of these (ended) statuses that still have results: what a
        server that stopped before cleaning up left behind."""
        ...
