"""The worker: it leads batches through their lifecycle and runs shards of them (see Engine)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from overnight.backends.base import Attempt, Backend
from overnight.backends.router import Router
from overnight.blobs.base import BlobStore
from overnight.domain.clock import Clock
from overnight.domain.events import Subscriptions
from overnight.domain.ids import IdGenerator, blob_key, request_line_id
from overnight.domain.lifecycle import TERMINAL, transition
from overnight.domain.lines import split_line_groups, split_lines
from overnight.domain.models import Batch, BatchError, BatchStatus, ResultRow, Shard
from overnight.domain.results import BATCH_CANCELLED, BATCH_EXPIRED, not_run_row
from overnight.domain.shards import END_OF_FILE, LINES_PER_SHARD, ShardPlanner
from overnight.domain.validation import BatchValidator, is_blank, parse_request
from overnight.engine.background_traffic import TrafficSettings
from overnight.engine.digest import describe_failure
from overnight.engine.feed import RateLimits
from overnight.engine.janitor import Janitor
from overnight.engine.metrics import EngineMetrics
from overnight.engine.neighbour import LoadReading
from overnight.engine.observe import render_metrics
from overnight.engine.outputs import write_result_files
from overnight.engine.prefix_queue import PrefixOrdering
from overnight.engine.retry import RetryPolicy
from overnight.engine.scheduler import BackendScheduler
from overnight.engine.shard_run import run_shard
from overnight.engine.slots import SlotKeeper
from overnight.engine.stats import BackendReporter, ProgressSampler
from overnight.engine.waiting import wait_event
from overnight.probes import NO_PROBE, Probe
from overnight.store.base import MetadataStore

log = logging.getLogger("overnight.engine")
S = BatchStatus
ACTIVE = tuple(status for status in S if status not in TERMINAL)
_YIELD_EVERY = 2000
# lines validated between turns of the event loop: a 1 MB chunk holds thousands, ~20 ms of work at once
VALIDATE_LINES_PER_TURN = 500
RUNS_END_S = 10.0  # at most this long, before marking a stopped batch's lines, for its runs here to end
WATCH_MAX_S = 5.0  # the longest a leader waits between looks at its batch's shards (see watch_interval)
CLEANUP_DELAY_S = 5.0  # after a batch ends, before its results are deleted (see engine/janitor.py)


def new_worker_id() -> str:
    """A fresh id for a worker process: its leases, its slots and its webhook deliveries carry it."""
    return f"worker-{secrets.token_hex(6)}"


@dataclass(frozen=True)
class EngineSettings:
    """How the engine paces itself (wiring.engine_settings builds it from the settings)."""

    flush_interval_s: float  # results are recorded in groups this often
    poll_interval_s: float  # how often the store is looked at without a wake-up
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    rates: Mapping[str, RateLimits] = field(default_factory=dict)  # by backend name
    prefix: Mapping[str, PrefixOrdering] = field(default_factory=dict)  # backends with prefix_ordering
    traffic: Mapping[str, TrafficSettings] = field(default_factory=dict)  # background / priority, by backend
    shutdown_grace_s: float = 0.0  # on shutdown, for requests in flight to answer
    lease_s: int = 30  # a batch's and a shard's lease, renewed at each poll
    cleanup_delay_s: float = CLEANUP_DELAY_S  # after a batch ends, before its results are deleted
    worker_id: str | None = None  # None: a fresh random id
    max_shards: int = 4  # shards this worker runs at once
    lines_per_shard: int = LINES_PER_SHARD
    subscriptions: Subscriptions = field(default_factory=Subscriptions)  # webhooks: who hears a batch end


class Engine:
    """Every worker leads some batches and runs shards of any.

    A batch's *leader* (the worker holding its lease) validates it and plans its shards, watches it
    while it runs, and ends it: it finalizes, cancels or expires it, exactly once, under the lease.
    Its *shards* (ranges of lines) are claimed by any worker, each under a lease of its own, so many
    workers share one batch; a dead worker's shards are taken over when their leases run out.
    """

    def __init__(
        self,
        store: MetadataStore,
        blobs: BlobStore,
        router: Router,
        clock: Clock,
        settings: EngineSettings,
        *,
        metrics: EngineMetrics | None = None,
        probe: Probe = NO_PROBE,
        on_event: Callable[[], None] | None = None,
    ) -> None:
        self.worker_id = settings.worker_id or new_worker_id()
        self._ids = IdGenerator(clock)
        self._on_event = on_event  # a webhook event was recorded: its sender may look at once
        self._settings = settings
        self._lease_s = settings.lease_s
        self._probe = probe
        self._shutdown_grace = settings.shutdown_grace_s
        self._store = store
        self._blobs = blobs
        self._router = router
        self._clock = clock
        self._flush_interval = settings.flush_interval_s
        self._poll_interval = settings.poll_interval_s
        self._wake = asyncio.Event()
        self._drivers: dict[str, asyncio.Task[None]] = {}  # batches this worker leads
        self._stops: dict[str, asyncio.Event] = {}
        self._watching: dict[str, asyncio.Event] = {}  # a led batch in progress: look at its shards
        self._ticks = 0  # polls so far
        self._watch_due: dict[str, int] = {}  # a led batch in progress -> the poll that looks at its shards
        self._claims: dict[str, tuple[int, bool]] = {}  # batch id -> (when its lease was asked for, got it)
        self._slots: set[asyncio.Task[None]] = set()  # each runs one shard after another
        self._runs: dict[tuple[str, int], asyncio.Task[None]] = {}  # the shard each slot runs now
        self._run_stops: dict[tuple[str, int], asyncio.Event] = {}
        self._run_ends: dict[tuple[str, int], asyncio.Event] = {}
        self._last_failures: dict[str, dict[int, Attempt]] = {}  # of lines a stop left unfinished
        self.janitor = Janitor(store, blobs, delay_s=settings.cleanup_delay_s)
        self._retry = settings.retry
        self._rates = dict(settings.rates)
        self._prefix = dict(settings.prefix)
        self._traffic = dict(settings.traffic)
        # a backend's load reading (engine/load_signals.py), for background backends; set by wiring
        self.load_reading: Callable[[str], LoadReading | None] = lambda _backend: None
        self.metrics = metrics or EngineMetrics()
        self._schedulers: dict[str, BackendScheduler] = {}
        self._keepers: dict[str, SlotKeeper] = {}
        self._sampler = ProgressSampler(store, clock)  # led batches' counts over time
        self._reporter = BackendReporter(store, self.worker_id, clock)

    def scheduler(self, backend: Backend) -> BackendScheduler:
        """The one dispatcher of a backend, shared by every shard that runs on it here."""
        scheduler = self._schedulers.get(backend.name)
        if scheduler is None:
            scheduler = BackendScheduler(
                backend,
                self._clock,
                retry=self._retry,
                rates=self._rates.get(backend.name),
                metrics=self.metrics,
                prefix=self._prefix.get(backend.name),
                traffic=self._traffic.get(backend.name),
                load=functools.partial(self._load_of, backend.name),
            )
            self._schedulers[backend.name] = scheduler
            self._keepers[backend.name] = SlotKeeper(
                self._store,
                scheduler,
                self.worker_id,
                self._clock,
                lease_s=self._lease_s,
                interval_s=self._poll_interval,
            )
        return scheduler

    def _load_of(self, backend: str) -> LoadReading | None:
        return self.load_reading(backend)

    @property
    def schedulers(self) -> Mapping[str, BackendScheduler]:
        return self._schedulers

    async def metrics_text(self) -> str:
        """Everything /metrics shows, in Prometheus' text format."""
        return await render_metrics(self.metrics, self._store, self._schedulers)

    def wake(self) -> None:
        """Look at the batches now rather than at the next poll (a batch was created or cancelled)."""
        self._wake.set()

    def _now(self) -> int:
        return int(self._clock.now())

    async def run(self) -> None:
        """Drive batches until cancelled; on cancellation, stop every batch's work cleanly."""
        self.janitor.start_sweep()
        await self._log_resumed()
        try:
            while True:
                self._wake.clear()
                try:
                    await self.tick()
                except Exception as exc:  # the store went away: wait for it, and look again
                    log.warning("worker %s cannot reach the store (%s); retrying", self.worker_id, _why(exc))
                await wait_event(self._wake, self._poll_interval)
        finally:
            await self.shutdown(self._shutdown_grace)

    async def _log_resumed(self) -> None:
        left = await self._store.batches_in(ACTIVE)
        if left:
            described = ", ".join(
                f"{b.id} ({b.status}, {b.request_counts.completed + b.request_counts.failed}"
                f"/{b.request_counts.total} done)"
                for b in left
            )
            log.info("resuming %d unfinished batch(es): %s", len(left), described)

    async def shutdown(self, grace_s: float = 0.0) -> None:
        """Stop: send nothing new, give requests in flight `grace_s` to answer (their results are
        kept), then abandon the rest; abandoned lines run again after a restart."""
        if grace_s > 0 and self._schedulers:
            await asyncio.gather(*(s.drain(grace_s) for s in self._schedulers.values()))
        tasks = [*self._slots, *self._drivers.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for keeper in self._keepers.values():
            await keeper.close()
        for scheduler in self._schedulers.values():
            await scheduler.close()
        await self.janitor.close()

    async def tick(self) -> None:
        """Lead each active batch this worker can lease and renew those leases; signal cancels and
        expiries; renew the shards it runs and claim more while it has room."""
        now = self._now()
        self._ticks += 1
        active = await self._store.batches_in(ACTIVE)
        live = {batch.id for batch in active}
        for gone in [batch_id for batch_id in self._claims if batch_id not in live]:
            del self._claims[gone]
        for batch in active:
            await self._lead(batch, now)
            if batch.status is S.CANCELLING or self._expired(batch, now):
                for key, stop in self._run_stops.items():
                    if key[0] == batch.id:
                        stop.set()
        await self._renew_runs(now)
        for scheduler in self._schedulers.values():
            scheduler.demand_changed.set()  # each poll renews the slots and moves them to fair shares
        await self._fill_slots()
        await self._reporter.report(self._schedulers)

    async def _fill_slots(self) -> None:
        """Claim shards while this worker runs fewer than `max_shards`; each goes to a slot of its own."""
        while len(self._slots) < self._settings.max_shards:
            shard = await self._store.claim_shard(self.worker_id, self._now(), self._lease_s)
            if shard is None:
                return
            task = asyncio.create_task(self._slot(shard), name=f"shard slot {self.worker_id}")
            self._slots.add(task)
            task.add_done_callback(self._slot_done)

    async def _lead(self, batch: Batch, now: int) -> None:
        """Lead the batch if its lease can be had, renewing it a third of the way through; a claim
        refused (another worker leads it) is tried again only a third of a lease later. So a poll
        costs a write per batch only every `lease_s / 3`, not every poll (thousands of small batches
        once kept a core busy)."""
        driver = self._drivers.get(batch.id)
        last = self._claims.get(batch.id)
        if last is None or now - last[0] >= self._lease_s / 3:
            leased = await self._store.claim_batch(batch.id, self.worker_id, now, self._lease_s)
            self._claims[batch.id] = (now, leased)
        else:
            leased = last[1]
        if driver is None:
            if leased:
                self._start_driver(batch.id)
        elif not leased:
            log.warning("lease lost id=%s worker=%s; another worker leads it now", batch.id, self.worker_id)
            driver.cancel()
        elif batch.status is S.CANCELLING or self._expired(batch, now):
            self._stops[batch.id].set()
            if batch.id in self._watching:
                self._watching[batch.id].set()  # its leader stops watching at once
        elif batch.id in self._watching and self._ticks >= self._watch_due.get(batch.id, 0):
            self._watching[batch.id].set()  # time its leader looked at its shards again

    async def _renew_runs(self, now: int) -> None:
        for key in list(self._runs):
            if key not in self._runs:  # it finished meanwhile
                continue
            batch_id, shard_no = key
            if not await self._store.renew_shard(batch_id, shard_no, self.worker_id, now, self._lease_s):
                log.warning(
                    "shard lease lost batch=%s shard=%d worker=%s; another worker runs it now",
                    batch_id,
                    shard_no,
                    self.worker_id,
                )
                # Stopped, not cancelled: the slot goes on to claim another shard (a claim cancelled
                # half way could leave a shard leased to nobody until the lease runs out).
                stop = self._run_stops.get(key)
                if stop is not None:
                    stop.set()

    async def idle(self) -> None:
        """Wait until no batch is led and no shard runs here (for tests)."""
        while self._drivers or self._slots:
            await asyncio.gather(*self._drivers.values(), *self._slots, return_exceptions=True)

    def _start_driver(self, batch_id: str) -> None:
        self._stops[batch_id] = asyncio.Event()
        task = asyncio.create_task(self._drive(batch_id), name=f"batch {batch_id}")
        self._drivers[batch_id] = task
        task.add_done_callback(functools.partial(self._driver_done, batch_id))

    def _driver_done(self, batch_id: str, task: asyncio.Task[None]) -> None:
        self._drivers.pop(batch_id, None)
        self._stops.pop(batch_id, None)
        self._watching.pop(batch_id, None)
        self._watch_due.pop(batch_id, None)
        self._claims.pop(batch_id, None)  # its lease was given up: ask again before leading it again
        self._sampler.forget(batch_id)
        if not any(key[0] == batch_id for key in self._runs):
            self._last_failures.pop(batch_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("batch driver failed id=%s", batch_id, exc_info=task.exception())

    @staticmethod
    def _expired(batch: Batch, now: int) -> bool:
        return batch.status in (S.VALIDATING, S.IN_PROGRESS) and now >= batch.expires_at

    async def _drive(self, batch_id: str) -> None:
        try:
            await self._drive_until_done(batch_id)
        except (ConnectionError, OSError) as exc:
            # The store went away: what was recorded stays; a later tick leads the batch again.
            log.warning("batch %s: the store did not answer (%s); it is led again later", batch_id, _why(exc))
        finally:
            try:
                await self._store.release_batch(batch_id, self.worker_id)
            except (ConnectionError, OSError) as exc:
                log.warning(
                    "batch %s: cannot give up its lead (%s); the lease runs out instead", batch_id, _why(exc)
                )

    async def _drive_until_done(self, batch_id: str) -> None:
        while True:
            batch = await self._store.get_batch(batch_id)
            if batch is None or batch.status in TERMINAL:
                return
            if self._expired(batch, self._now()):
                await self._end(batch, S.EXPIRED)
            elif batch.status is S.VALIDATING:
                await self._validate(batch)
            elif batch.status is S.IN_PROGRESS:
                await self._watch(batch)
            elif batch.status is S.FINALIZING:
                await self._complete(batch)
            elif batch.status is S.CANCELLING:
                await self._end(batch, S.CANCELLED)

    async def _move(self, batch: Batch, target: BatchStatus, **changes: object) -> bool:
        now = self._now()
        moved = transition(batch, target, now, **changes)
        event = self._settings.subscriptions.event_for(moved, self._ids.event_id(), now)
        ok = await self._store.transition_batch(moved, expected=(batch.status,), event=event)
        if ok:
            log.info("batch %s id=%s project=%s%s", target, batch.id, batch.project, _what_changed(moved))
        if ok and event is not None:
            log.info(
                "webhook event recorded id=%s type=%s batch=%s endpoints=%s",
                event.id,
                event.type,
                batch.id,
                ",".join(event.endpoints),
            )
            self._probe.reached("webhook.recorded")
            if self._on_event is not None:
                self._on_event()
        return ok

    # -- validating ----------------------------------------------------------------------------
    async def _validate(self, batch: Batch) -> None:
        validator = BatchValidator(batch.endpoint, self._router.serves)
        planner = ShardPlanner(batch.id, self._settings.lines_per_shard)
        try:
            async for group in split_line_groups(self._blobs.read(blob_key(batch.input_file_id))):
                for start in range(0, len(group), VALIDATE_LINES_PER_TURN):
                    for line_no, raw in group[start : start + VALIDATE_LINES_PER_TURN]:
                        validator.check_line(line_no, raw)
                        planner.line(line_no, len(raw))
                    await asyncio.sleep(0)  # let the API and running batches have the loop
        except FileNotFoundError:
            message = f"Cannot find file {batch.input_file_id}, or it is no longer available."
            await self._move(
                batch, S.FAILED, errors=(BatchError("invalid_request", message, "input_file_id"),)
            )
            return
        result = validator.finish()
        self._probe.reached("validation.finished")
        if not result.ok:
            await self._move(batch, S.FAILED, errors=result.errors)
            return
        await self._store.add_shards(planner.shards())  # before the move: a shard is never missing
        counts = type(batch.request_counts)(total=result.total)
        if await self._move(batch, S.IN_PROGRESS, model=result.model, request_counts=counts):
            await self._fill_slots()  # its shards can be claimed now

    # -- in progress: shards -------------------------------------------------------------------
    async def _watch(self, batch: Batch) -> None:
        """Lead a batch in progress until every shard is done (then it moves to finalizing), or until
        the batch leaves in_progress (a cancel, or the tick sees it expire)."""
        watching = self._watching.setdefault(batch.id, asyncio.Event())
        stop = self._stops[batch.id]
        while not stop.is_set():
            watching.clear()
            shards = await self._store.shards_of(batch.id)
            if not shards:  # an older release's batch, or one validated without them
                await self._store.add_shards([Shard(batch.id, 0, 1, END_OF_FILE, 0, 1)])
                await self._fill_slots()
                continue
            if all(shard.done for shard in shards):
                await self._sampler.sample(await self._store.get_batch(batch.id) or batch, force=True)
                await self._move(batch, S.FINALIZING)
                return
            current = await self._store.get_batch(batch.id)
            if current is None or current.status is not S.IN_PROGRESS:
                return
            await self._sampler.sample(current)
            # A shard finished here wakes it at once; a poll wakes it once the watch interval's worth of
            # polls have passed, to see shards finished on other workers.
            age = self._now() - (current.in_progress_at or current.created_at)
            polls = max(1, round(watch_interval(age, self._poll_interval) / self._poll_interval))
            self._watch_due[batch.id] = self._ticks + polls
            await watching.wait()
        self._watching.pop(batch.id, None)

    async def _slot(self, first: Shard) -> None:
        """Run shards one after another, claiming the next as soon as one ends."""
        task = asyncio.current_task()
        assert task is not None
        shard: Shard | None = first
        while shard is not None:
            key = (shard.batch_id, shard.shard_no)
            self._runs[key], self._run_stops[key] = task, asyncio.Event()
            ended = self._run_ends[key] = asyncio.Event()
            try:
                await self._run(shard)
            except (ConnectionError, OSError) as exc:
                # The store went away mid-run: what was recorded stays recorded; the shard runs again
                # (here or elsewhere) once its lease runs out, skipping those lines.
                log.warning(
                    "shard batch=%s shard=%d: the store did not answer (%s); it runs again after its lease",
                    *key,
                    _why(exc),
                )
                return
            finally:
                self._runs.pop(key, None)
                self._run_stops.pop(key, None)
                self._run_ends.pop(key, None)
                ended.set()
            try:
                shard = await self._store.claim_shard(self.worker_id, self._now(), self._lease_s)
            except (ConnectionError, OSError) as exc:
                log.warning(
                    "worker %s cannot claim shards (%s); the next poll tries again", self.worker_id, _why(exc)
                )
                return

    def _slot_done(self, task: asyncio.Task[None]) -> None:
        self._slots.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("shard slot failed worker=%s", self.worker_id, exc_info=task.exception())

    async def _run(self, shard: Shard) -> None:
        key = (shard.batch_id, shard.shard_no)
        try:
            batch = await self._store.get_batch(shard.batch_id)
            if batch is None or batch.status is not S.IN_PROGRESS:
                return
            backend = self._router.backend_for(batch.model or "")
            if backend is None:
                log.error("no backend serves model=%s any more; batch id=%s waits", batch.model, batch.id)
                await self._run_stops[key].wait()
                return
            outcome = await run_shard(
                self._store,
                self._blobs,
                self.scheduler(backend),
                batch,
                shard,
                self._run_stops[key],
                flush_interval_s=self._flush_interval,
                on_flush=lambda: self._probe.reached("execution.flushed"),
            )
            self._last_failures.setdefault(batch.id, {}).update(outcome.last_failures)
            if outcome.finished:
                self._runs.pop(key, None)  # done here: the tick no longer renews it
                await self._store.finish_shard(batch.id, shard.shard_no, self.worker_id, outcome.part)
                if batch.id in self._watching:
                    self._watching[batch.id].set()  # this worker leads it: look at once
        finally:
            await self._store.release_shard(shard.batch_id, shard.shard_no, self.worker_id)

    # -- endings -------------------------------------------------------------------------------
    async def _complete(self, batch: Batch) -> None:
        shards = await self._store.shards_of(batch.id)
        output_id, error_id = await write_result_files(self._store, self._blobs, batch, self._now(), shards)
        await self._finish(batch, S.COMPLETED, output_id, error_id)

    async def _end(self, batch: Batch, target: BatchStatus) -> None:
        """Cancel or expire: lines without a result get a not-run line, then the files are written
        from the recorded results."""
        if batch.in_progress_at is not None:
            # This worker's runs of the batch were told to stop: let them end first, so the lines they
            # leave say what their last attempt met.
            ends = [ended.wait() for key, ended in self._run_ends.items() if key[0] == batch.id]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RUNS_END_S):
                    await asyncio.gather(*ends)
            code = BATCH_CANCELLED if target is S.CANCELLED else BATCH_EXPIRED
            await self._mark_not_run(batch, code)
            self._probe.reached("ending.marked")
        output_id, error_id = await write_result_files(self._store, self._blobs, batch, self._now(), None)
        await self._finish(batch, target, output_id, error_id)

    async def _finish(
        self, batch: Batch, target: BatchStatus, output_id: str | None, error_id: str | None
    ) -> None:
        self._probe.reached("finalization.written")
        if await self._move(batch, target, output_file_id=output_id, error_file_id=error_id):
            self._probe.reached("finalization.moved")
            self.janitor.batch_ended(batch)

    async def _mark_not_run(self, batch: Batch, code: str) -> None:
        done = await self._store.finished_lines(batch.id)
        last_failures = self._last_failures.get(batch.id, {})
        rows: list[ResultRow] = []
        async for line_no, raw in split_lines(self._blobs.read(blob_key(batch.input_file_id))):
            if line_no in done or is_blank(raw):
                continue
            custom_id = parse_request(raw).custom_id
            last = last_failures.get(line_no)
            detail = describe_failure(last) if last is not None else None
            rows.append(not_run_row(line_no, request_line_id(batch.id, line_no), custom_id, code, detail))
            if len(rows) >= _YIELD_EVERY:
                await self._store.record_results(batch.id, rows)
                rows = []
        if rows:
            await self._store.record_results(batch.id, rows)


def watch_interval(age_s: float, poll_interval_s: float) -> float:
    """How often a leader looks at the shards of a batch in progress for `age_s`: every poll at first,
    then less often (up to WATCH_MAX_S) as the batch gets older, so thousands of long batches cost
    little while a short one still finishes promptly."""
    return max(poll_interval_s, min(WATCH_MAX_S, age_s / 10))


def _what_changed(batch: Batch) -> str:
    """The part of a batch event's log line a user reads: what validation found, how it ended."""
    counts = batch.request_counts
    if batch.status is S.IN_PROGRESS:
        return f" validated: {counts.total} request(s) for model {batch.model}"
    if batch.status is S.FAILED and batch.errors:
        first = batch.errors[0]
        where = f"line {first.line}: " if first.line is not None else ""
        count = len(batch.errors)
        return f" because of {count} validation error(s); first: {where}{first.code}: {first.message}"
    if batch.status in (S.COMPLETED, S.CANCELLED, S.EXPIRED):
        ended = batch.completed_at or batch.cancelled_at or batch.expired_at or batch.created_at
        done = counts.completed + counts.failed
        return (
            f" {done}/{counts.total} done ({counts.completed} succeeded, {counts.failed} failed)"
            f" in {ended - batch.created_at} s"
        )
    return ""


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
