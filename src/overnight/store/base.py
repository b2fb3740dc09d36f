"""The metadata store interface. Every implementation passes tests/contract/test_store_contract.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence
from typing import Literal, Protocol

from overnight.domain.api_keys import StoredApiKey
from overnight.domain.background import StoredResponse
from overnight.domain.events import Delivery, Event
from overnight.domain.idempotency import KeyRecord
from overnight.domain.models import (
    BackendStatus,
    Batch,
    BatchStatus,
    DailyUsage,
    ErrorGroup,
    FileObject,
    Page,
    ResultKind,
    ResultRow,
    Shard,
)
from overnight.domain.partial import ResultOrder
from overnight.domain.progress import Sample
from overnight.domain.sync import SyncUsage

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

    async def get_file(self, project: str | None, file_id: str) -> FileObject | None:
        """The file; None if absent or another project's (`project` None: of any project)."""
        ...

    async def list_files(
        self, project: str | None, *, purpose: str | None, after: str | None, limit: int, order: Order
    ) -> Page[FileObject]:
        """Files of a project (None: of every project) ordered by id (= creation), starting after the
        file `after`; never those of background responses."""
        ...

    async def delete_file(self, project: str | None, file_id: str) -> bool:
        """Remove the file's record; False when it did not exist or is another project's (`project`
        None: of any project)."""
        ...

    async def files_expired_before(self, now: int, limit: int) -> list[FileObject]:
        """Files of any project whose `expires_at` is at or before `now`."""
        ...

    async def file_in_use(self, file_id: str) -> bool:
        """True while a batch that is not in a terminal status reads this file."""
        ...

    # -- batches -------------------------------------------------------------------------------
    async def add_batch(self, batch: Batch, event: Event | None = None) -> None:
        """Store a new batch and, when given, its `event` and that event's deliveries, in one transaction."""
        ...

    async def get_batch(self, batch_id: str, project: str | None = None) -> Batch | None:
        """The batch with live `request_counts` and `usage`; None if absent or another project's."""
        ...

    async def list_batches(self, project: str | None, *, after: str | None, limit: int) -> Page[Batch]:
        """Batches of a project (None: of every project), newest first, after the batch `after`; never
        those of background responses."""
        ...

    async def transition_batch(
        self, batch: Batch, expected: Collection[BatchStatus], event: Event | None = None
    ) -> bool:
        """Compare-and-set: store `batch` only if the stored status is one of `expected`; when it does,
        record `event` (if given) and one delivery per endpoint of it in the same transaction."""
        ...

    async def batches_in(self, statuses: Collection[BatchStatus]) -> list[Batch]:
        """Every batch (of any project) in one of these statuses, oldest first."""
        ...

    async def count_batches(self) -> dict[BatchStatus, int]:
        """How many batches (of every project) are in each status; absent statuses have none."""
        ...

    # -- background responses: each runs as a hidden one-line batch (docs/background.md) -------------
    async def add_background_response(
        self, stored: StoredResponse, input_file: FileObject, hidden_files: Sequence[str]
    ) -> None:
        """Store a background response in one transaction: its batch, its input file's record (ending
        that upload, see `begin_upload`), the Response as created, and the ids of the files that
        `list_files` leaves out (its input, output and error files). `list_batches` leaves its batch out."""
        ...

    async def get_background_response(self, batch_id: str, project: str | None) -> StoredResponse | None:
        """The project's background response whose batch is `batch_id`, with the batch as `get_batch`
        gives it; None if absent, another project's (`project` None: of any project), or a batch of the
        Batch API."""
        ...

    async def delete_background_response(self, batch_id: str, project: str | None) -> bool:
        """Remove, in one transaction, an ended background response and every row stored of it: its batch
        and that batch's results, shards, samples and error groups, the records of its input, output and
        error files, and the Response as created. False, removing nothing, when `get_background_response`
        finds none or its batch has not ended (in a terminal status). The files' content is the caller's."""
        ...

    # -- usage and budgets ----------------------------------------------------------------------
    async def usage_by_day(self, project: str | None, start: int, end: int) -> list[DailyUsage]:
        """The batches of a project (None: of every project) created in [start, end), per UTC day of
        creation, project and model: how many, and their summed usage; by day, project, then model
        (None last). Only groups that have batches."""
        ...

    async def enqueued_tokens(self, project: str) -> int:
        """The summed `enqueued_tokens` of the project's batches that have not ended (validating, in
        progress, finalizing or cancelling)."""
        ...

    async def add_sync_usage(self, rows: Sequence[SyncUsage]) -> None:
        """Add each row's requests and tokens to those kept for its day, project, model and tier (in one
        transaction; a row whose key is new starts at its own)."""
        ...

    async def sync_usage_by_day(self, project: str | None, start: int, end: int) -> list[SyncUsage]:
        """The synchronous usage of a project (None: of every project) on the UTC days starting in
        [start, end), by day, project, model, then tier."""
        ...

    # -- per-project limits (docs/limits.md) --------------------------------------------------------
    async def stored_bytes(self, project: str, now: int) -> int:
        """The summed `bytes` of the project's files that have not expired at `now` (`expires_at` unset
        or after it), whatever their purpose: what its storage quota counts."""
        ...

    async def nth_latest_batch_created_at(self, project: str, since: int, n: int) -> int | None:
        """The `created_at` of the project's n-th latest batch (n >= 1) created at or after `since`; None
        when fewer than n were. Background responses' batches do not count."""
        ...

    # -- the webhooks' outbox: each event delivered to each of its endpoints ------------------------
    async def claim_deliveries(
        self, worker: str, now: int, lease_s: int, limit: int, endpoints: Collection[str]
    ) -> list[Delivery]:
        """Lease, until `now + lease_s`, up to `limit` deliveries to these endpoints that are due (their
        next attempt at or before `now`), neither delivered nor given up, and that no lease holds (or
        the holder's ran out at or before `now`); the earliest due first. Each counts one more attempt:
        the one it is leased for (`Delivery.attempts`)."""
        ...

    async def finish_delivery(self, delivery: Delivery, now: int, status: int) -> bool:
        """The delivery got a 2xx (`status`) at `now`: it is done, whoever holds it now. False when it
        was already delivered or given up."""
        ...

    async def retry_delivery(
        self,
        delivery: Delivery,
        worker: str,
        now: int,
        *,
        retry_at: int | None,
        status: int | None,
        error: str,
    ) -> bool:
        """An attempt by `worker` failed (`status`, None when no answer came, and `error` in words): if it
        still holds the delivery, end the lease and try again at `retry_at`, or give up (None). False when
        another worker leased it meanwhile, or it was delivered."""
        ...

    async def pending_deliveries(self) -> int:
        """How many deliveries, of every endpoint, are neither delivered nor given up."""
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
        """Forget every lease, of batches, shards, webhook deliveries and backend slots: for a single
        server that has just proved it is the only one."""
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

    # -- statistics: what the dashboard and the progress endpoint show ----------------------------
    async def record_progress(self, batch_id: str, sample: Sample) -> None:
        """Keep the batch's counts at `sample.at` (a second sample at the same second replaces it)."""
        ...

    async def progress_samples(self, batch_id: str) -> list[Sample]:
        """The batch's samples, oldest first."""
        ...

    async def error_groups(self, batch_id: str) -> list[ErrorGroup]:
        """The batch's error-file lines grouped by error code and upstream status, the biggest group
        first, each with its lowest line as the example; counted by `record_results`, so they outlive
        `delete_results`."""
        ...

    async def report_backends(self, statuses: Sequence[BackendStatus]) -> None:
        """Keep each status as its worker's latest report of its backend (one per backend and worker);
        reports a day older than the newest given are forgotten."""
        ...

    async def backend_reports(self, since: int) -> list[BackendStatus]:
        """Every worker's latest report of each backend made at or after `since`, by backend, worker."""
        ...

    # -- results -------------------------------------------------------------------------------
    async def record_results(self, batch_id: str, rows: Sequence[ResultRow]) -> int:
        """Insert rows whose line has no result yet (others are ignored) and update the batch's
        request_counts, usage and error groups (see `error_groups`) in the same transaction, counting
        only the new rows, and numbering them after every result recorded before (see
        `recorded_results`). Returns how many rows were new."""
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

    # -- results while a batch runs (docs/partial-results.md) ------------------------------------------
    async def recorded_results(
        self, batch_id: str, kinds: Collection[ResultKind], *, after_seq: int = 0, skip: int = 0, limit: int
    ) -> list[tuple[int, bytes]]:
        """(seq, line) of the results of these kinds recorded after `seq` `after_seq`, in the order they
        were recorded (`record_results` numbers them in its transaction, so a result becomes visible
        only after every result with a lower `seq`), skipping the first `skip`, at most `limit`."""
        ...

    async def claim_result_order(self, batch_id: str, order: ResultOrder) -> ResultOrder | None:
        """Fix the order of the batch's result files as `order` unless it is already fixed; the order
        it has now (None: no such batch)."""
        ...

    # -- Idempotency-Key: one object per project and key ----------------------------------------------
    async def remember_key(self, record: KeyRecord) -> KeyRecord:
        """Store the key unless the project already has it; the record it has now (`record`, or the
        earlier one)."""
        ...

    async def get_key(self, project: str, key: str) -> KeyRecord | None: ...

    async def key_done(self, project: str, key: str, object_id: str, now: int) -> None:
        """Note that the key's object (`object_id`) exists, from `now`."""
        ...

    async def forget_key(self, project: str, key: str, object_id: str) -> bool:
        """Remove the key if it still names `object_id` (its request failed, or died); False otherwise."""
        ...

    async def forget_keys_before(self, created_before: int) -> int:
        """Remove every key first used before `created_before`; how many went."""
        ...

    # -- API keys kept in the store (docs/auth.md): only the SHA-256 of each secret ----------------------
    async def add_api_key(self, key: StoredApiKey) -> None:
        """Store a new key (its id and its secret's hash are new)."""
        ...

    async def api_key_by_hash(self, secret_hash: str) -> StoredApiKey | None:
        """The key whose secret hashes to `secret_hash`, revoked or not; None if there is none."""
        ...

    async def list_api_keys(self) -> list[StoredApiKey]:
        """Every key, revoked ones too, oldest first."""
        ...

    async def revoke_api_key(self, key_id: str, now: int) -> StoredApiKey | None:
        """Revoke the key from `now` (one revoked before keeps its time); the key as it is now, None if
        there is no such key."""
        ...

    async def any_api_keys(self) -> bool:
        """Whether any key was ever stored (revoked ones count)."""
        ...
