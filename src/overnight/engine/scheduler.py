"""One backend's dispatcher: which request goes next, when, and what happens after it answers.

Every batch running on a backend registers a `Feed`. The scheduler sends the feeds' requests in
earliest-deadline-first order (round robin across projects whose deadlines fall in the same minute),
never more at once than the AIMD window allows, within the backend's requests- and tokens-per-minute
budgets, and not at all while the circuit breaker is open. It owns the retries, on the injected
clock like every other wait here, so a request waiting to retry holds no slot. What a failed
attempt leads to is decided in engine/retry.py.

While the breaker is open, requests waiting for the backend queue behind the others of their batch,
and each probe comes from the next batch in turn, so one batch's bad lines never hold up another
batch; the moment a probe is answered they all go again.

Synchronous requests take tickets (engine/online.py): online ones are granted before any batch line,
flex ones in deadline order with the feeds; the caller sends the request and reports its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
from collections.abc import Callable, Iterator

from overnight.backends.base import Attempt, Backend
from overnight.domain.clock import Clock
from overnight.domain.models import Usage
from overnight.domain.results import response_row, usage_of
from overnight.domain.validation import is_blank, parse_request
from overnight.engine.background_traffic import BackgroundTraffic, TrafficSettings, with_priority
from overnight.engine.control import AimdWindow, BreakerState, CircuitBreaker, TokenBucket
from overnight.engine.digest import ErrorDigest, Fate, describe_failure
from overnight.engine.feed import Feed, RateLimits, ReadyQueue, Request, estimate_tokens
from overnight.engine.metrics import EngineMetrics
from overnight.engine.neighbour import FeedNeed, LoadReading
from overnight.engine.online import Lane, NoSlot, Ticket, TicketQueue, granted, wait_limit
from overnight.engine.prefix_queue import PrefixOrdering, WarmPrefix
from overnight.engine.recent import RecentAttempts, is_failure
from overnight.engine.retry import Judgement, RetryPolicy, is_charged, judge
from overnight.engine.waiting import wait_event

log = logging.getLogger("overnight.engine")

DEADLINE_BUCKET_S = 60
_INTERNAL_ERROR = (
    b'{"error":{"message":"Overnight could not run this request because of an internal error.",'
    b'"type":"server_error","param":null,"code":null}}'
)


def _bucket(feed: Feed) -> int:
    return feed.deadline // DEADLINE_BUCKET_S


class BackendScheduler:
    def __init__(
        self,
        backend: Backend,
        clock: Clock,
        *,
        retry: RetryPolicy,
        rates: RateLimits | None = None,
        metrics: EngineMetrics | None = None,
        breaker: CircuitBreaker | None = None,
        rand: Callable[[], float] = random.random,
        prefetch: int | None = None,
        prefix: PrefixOrdering | None = None,
        traffic: TrafficSettings | None = None,
        load: Callable[[], LoadReading | None] = lambda: None,
    ) -> None:
        self.backend = backend
        self._clock = clock
        self._retry = retry
        self._rand = rand
        self._metrics = metrics or EngineMetrics()
        rates = rates or RateLimits()
        self.window = AimdWindow(maximum=backend.max_concurrency)
        self.breaker = breaker or CircuitBreaker()
        self._rpm = TokenBucket.per_minute(rates.requests_per_minute) if rates.requests_per_minute else None
        self._tpm = TokenBucket.per_minute(rates.tokens_per_minute) if rates.tokens_per_minute else None
        self._full_rates = [(b, b.rate_per_s, b.burst) for b in (self._rpm, self._tpm) if b is not None]
        self._cap = backend.max_concurrency  # this worker's share of the backend (engine/slots.py)
        self.demand_changed = asyncio.Event()  # the first feed came or the last went; or: look again
        self._prefetch = prefetch or max(64, 2 * backend.max_concurrency)
        self._warm = WarmPrefix(prefix) if prefix is not None else None  # docs/prefix-ordering.md
        traffic = traffic or TrafficSettings()
        self._priority = traffic.priority  # vLLM's `priority` on every batch line (None: not sent)
        self.background = (  # traffic = "background": batch lines keep to its window
            BackgroundTraffic(backend.name, traffic, backend.max_concurrency, self._metrics, load)
            if traffic.background
            else None
        )
        self._feeds: list[Feed] = []
        self.tickets = TicketQueue()  # synchronous requests (engine/online.py)
        self._served: dict[str, int] = {}
        self._in_flight = 0
        self._wake = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._order = itertools.count()
        self._draining = False
        self._idle = asyncio.Event()
        self._errors = ErrorDigest(backend.name)
        self.recent = RecentAttempts()  # the last minute's attempts and failures (the dashboard's)
        self._retries: list[tuple[float, int, Feed, Request]] = []  # a heap by due time
        self._retry_order = itertools.count()
        self._last_probe = -1  # the `order` of the feed that sent the last probe
        self._opened_at = 0.0

    @property
    def cap(self) -> int:
        """Requests this worker may have in flight to the backend: its share of the backend's
        max_concurrency across every worker (all of it without a SlotKeeper)."""
        return self._cap

    @property
    def wants_slots(self) -> bool:
        return bool(self._feeds) or self.tickets.busy

    def set_cap(self, cap: int) -> None:
        """Take a new share: at most `cap` in flight, and that share of the rate limits."""
        cap = max(0, min(cap, self.backend.max_concurrency))
        if cap == self._cap:
            return
        self._cap = cap
        fraction = max(cap, 1) / self.backend.max_concurrency
        for bucket, rate, burst in self._full_rates:
            bucket.rate_per_s, bucket.burst = rate * fraction, max(1.0, burst * fraction)
        if self.background is not None:
            self.background.window.share = fraction
        self._wake.set()

    @property
    def waiting_batches(self) -> list[str]:
        """The batches with work on this backend while its breaker is not closed (else none)."""
        if self.breaker.state is BreakerState.CLOSED:
            return []
        return [feed.batch_id for feed in self._feeds if not feed.stopped]

    @property
    def waiting_for_backend(self) -> int:
        """Requests queued again because the backend looked down."""
        return sum(1 for feed in self._feeds for request in feed.ready if request.waiting)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        return sum(len(feed.ready) for feed in self._feeds)

    async def run(self, feed: Feed) -> bool:
        """Run every line of the feed; True when all ran, False when it was stopped first."""
        self._register(feed)
        reader = asyncio.create_task(self._read(feed), name=f"read {feed.batch_id}")
        try:
            await feed.finished.wait()
        finally:
            reader.cancel()
            await self._unregister(feed)
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        return not feed.stopped

    def stop(self, feed: Feed) -> None:
        """Abandon the feed: queued lines and retries are dropped, requests in flight cancelled."""
        feed.stopped = True
        feed.finished.set()

    async def drain(self, timeout_s: float) -> bool:
        """Send nothing new and wait up to `timeout_s` for the requests in flight to answer; True
        when none is left. Used by a graceful shutdown, so finished work need not run again."""
        self._draining = True
        if self._in_flight == 0:
            return True
        self._idle.clear()
        await wait_event(self._idle, timeout_s)
        return self._in_flight == 0

    async def close(self) -> None:
        self._errors.flush(self._clock.now(), everything=True)
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            self._pump = None

    # -- feeds -----------------------------------------------------------------------------------
    def _register(self, feed: Feed) -> None:
        feed.order = next(self._order)
        feed.ready = ReadyQueue(self._prefetch) if self._warm is None else self._warm.queue(feed.endpoint)
        active = [self._served[f.project] for f in self._feeds if f.project in self._served]
        self._served.setdefault(feed.project, min(active, default=0))
        self._feeds.append(feed)
        if len(self._feeds) == 1:
            self.demand_changed.set()
        self._start_pump()

    def _start_pump(self) -> None:
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._run_pump(), name=f"dispatch {self.backend.name}")

    async def _unregister(self, feed: Feed) -> None:
        self._feeds.remove(feed)
        if not self._feeds:
            self.demand_changed.set()
        mine = [entry for entry in self._retries if entry[2] is feed]
        if mine:
            self._retries = [entry for entry in self._retries if entry[2] is not feed]
            heapq.heapify(self._retries)
        for request in (*feed.ready, *(entry[3] for entry in mine)):
            if request.last is not None:
                feed.last_failures[request.line_no] = request.last
        feed.retrying = 0
        feed.ready.clear()
        tasks = list(feed.in_flight)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if not any(f.project == feed.project for f in self._feeds):
            self._served.pop(feed.project, None)
        self._wake.set()

    async def _read(self, feed: Feed) -> None:
        """Keep the feed's queue topped up from its input, parsing each line once."""
        async for line_no, raw in feed.lines:
            if is_blank(raw) or feed.skip(line_no):
                continue
            while feed.ready.full:
                feed.room.clear()
                await feed.room.wait()
            request = parse_request(raw)
            feed.ready.append(Request(line_no, request.custom_id, request.body))
            self._wake.set()
        feed.exhausted = True
        feed.check_finished()

    # -- dispatching -----------------------------------------------------------------------------
    async def _run_pump(self) -> None:
        while True:
            self._wake.clear()
            wait = self._dispatch()
            now = self._clock.now()
            self._errors.flush(now)
            due = self._errors.due_in(now)
            if due is not None:
                wait = due if wait is None else min(wait, due)
            if wait is None:
                await self._wake.wait()
            else:
                await wait_event(self._wake, max(wait, 0.001))

    def _pick(self) -> Feed | None:
        if self.breaker.state is BreakerState.HALF_OPEN:
            return self._pick_probe()
        best: Feed | None = None
        best_key: tuple[int, int, int] | None = None
        for feed in self._feeds:
            if feed.ready and not feed.stopped:
                key = (feed.deadline // DEADLINE_BUCKET_S, self._served[feed.project], feed.order)
                if best_key is None or key < best_key:
                    best, best_key = feed, key
        if best is not None and self._warm is not None:
            return self._warm.choose_feed(best, self._feeds, self._served_of, _bucket)
        return best

    def _served_of(self, feed: Feed) -> int:
        return self._served[feed.project]

    def _pick_probe(self) -> Feed | None:
        """The next feed in turn after the one that sent the last probe, so probes rotate."""
        ready = [feed for feed in self._feeds if feed.ready and not feed.stopped]
        if not ready:
            return None
        later = [feed for feed in ready if feed.order > self._last_probe]
        chosen = min(later or ready, key=lambda feed: feed.order)
        self._last_probe = chosen.order
        return chosen

    def _release_due(self, now: float) -> None:
        """Queue the requests whose retry time has come, ahead of their feeds' new lines."""
        retries = self._retries
        while retries and retries[0][0] <= now:
            _due, _order, feed, request = heapq.heappop(retries)
            feed.retrying -= 1
            if not feed.stopped:
                feed.ready.appendleft(request)

    def _next_retry_in(self, now: float) -> float | None:
        return max(0.0, self._retries[0][0] - now) if self._retries else None

    def _next(self) -> tuple[Feed, Request] | float | None:
        """Book the next request the limits allow now: the work, or how long until some may start
        (a float), or None when nothing can start until something changes. Tickets of synchronous
        requests that may go first are granted on the way."""
        while True:
            if self._in_flight >= min(self.window.limit, self._cap) or self._draining:
                return None
            now = self._clock.now()
            if self._retries:
                self._release_due(now)
            if not self.breaker.allows(now):
                return self.breaker.retry_in(now) or None
            if not self.tickets.waiting:
                break
            ticket = self.tickets.next(self._batch_deadline(), DEADLINE_BUCKET_S)
            if ticket is None:
                break
            wait = self._grant(ticket, now)
            if wait > 0:
                return wait
        if self.background is not None and not self._background_allows(now):
            return None  # the next batch answer looks again
        feed = self._pick()
        if feed is None:
            return self._next_retry_in(now)
        request = feed.ready[0]
        request.waiting = False
        if self._rpm is not None or self._tpm is not None:
            request.tokens = request.tokens or estimate_tokens(request.body)
            wait = self._rate_wait(request.tokens, now)
            if wait > 0:
                return wait
            self._take_budget(request.tokens, now)
        feed.ready.popleft()
        feed.room.set()
        self._served[feed.project] += 1
        self.breaker.sent()
        request.sequence = self.window.sent()
        self._in_flight += 1
        return feed, request

    def _background_allows(self, now: float) -> bool:
        """Whether the background window has room for one more batch line (synchronous tickets do not
        count against it: they are the online traffic it makes room for)."""
        assert self.background is not None
        self.background.check_deadlines(self._feed_needs, now)
        return self._in_flight - self.tickets.holding < self.background.limit

    def _feed_needs(self) -> Iterator[FeedNeed]:
        for feed in self._feeds:
            remaining = feed.remaining
            if remaining and not feed.stopped:
                yield FeedNeed(feed.batch_id, feed.deadline, remaining)

    def _dispatch(self) -> float | None:
        """Start a sender for every request the limits allow now; returns how long until more may
        start (None: until something changes)."""
        while True:
            work = self._next()
            if not isinstance(work, tuple):
                return work
            feed, request = work
            task = asyncio.create_task(self._sender(feed, request))
            feed.in_flight.add(task)

    def _batch_deadline(self) -> int | None:
        ready = [feed.deadline for feed in self._feeds if feed.ready and not feed.stopped]
        return min(ready, default=None)

    def _grant(self, ticket: Ticket, now: float) -> float:
        """Give the ticket a slot now, or say how long the rate limits want it to wait."""
        if self._rpm is not None or self._tpm is not None:
            wait = self._rate_wait(ticket.tokens, now)
            if wait > 0:
                return wait
            self._take_budget(ticket.tokens, now)
        self.breaker.sent()
        ticket.sequence = self.window.sent()
        self._in_flight += 1
        self.tickets.grant(ticket)
        return 0.0

    # -- synchronous requests (engine/online.py) ---------------------------------------------------
    async def admit(self, lane: Lane, tokens: float, deadline: float = float("inf")) -> Ticket:
        """Wait for a slot for one synchronous attempt. NoSlot at once when an online request meets a
        breaker that sends nothing now, or when `deadline` (clock time) passes first."""
        now = self._clock.now()
        if lane is Lane.ONLINE and not self.breaker.allows(now):
            raise NoSlot(f"backend {self.backend.name!r} looks down", self.breaker.retry_in(now) or None)
        ticket = Ticket(lane, deadline, tokens, asyncio.get_running_loop().create_future())
        if not self.tickets.busy:
            self.demand_changed.set()  # this process wants its share of the backend's slots now
        self.tickets.add(ticket)
        self._start_pump()
        self._dispatch()  # granted here and now when the limits allow: no trip through the pump
        self._wake.set()
        return await granted(ticket, self.tickets, wait_limit(deadline, now), self.release, self.backend.name)

    def answered(self, ticket: Ticket, answer: Attempt, seconds: float) -> None:
        """Account for the head of a ticket's answer (a stream's status line is enough): the window,
        the breaker and the metrics learn from it as from a batch line's attempt."""
        now = self._clock.now()
        ticket.reported = True
        self._metrics.observe_attempt(self.backend.name, answer.status, seconds)
        self.recent.note(now, is_failure(answer.status, answer.answered))
        verdict = judge(answer)
        self.window.record(verdict.overload, ticket.sequence)
        self._record_health(verdict, ticket, answer, now)

    def release(self, ticket: Ticket, usage: Usage | None = None) -> None:
        """Free the ticket's slot (once); `usage`: the tokens the request used, when known."""
        if ticket.released:
            return
        ticket.released = True
        if not ticket.reported and self.breaker.state is BreakerState.HALF_OPEN:
            self.breaker.abandoned()  # it may have been the probe, and will never answer
        self.tickets.release()
        self._finish_attempt()
        if usage is not None and (usage.input_tokens or usage.output_tokens):
            self._metrics.tokens(self.backend.name, usage.input_tokens, usage.output_tokens)
            if self._tpm is not None:
                self._tpm.give_back(ticket.tokens - usage.total_tokens, self._clock.now())
        self._wake.set()

    def _rate_wait(self, tokens: float, now: float) -> float:
        wait = 0.0
        if self._rpm is not None:
            wait = self._rpm.wait_time(1, now)
        if self._tpm is not None:
            wait = max(wait, self._tpm.wait_time(tokens, now))
        return wait

    def _take_budget(self, tokens: float, now: float) -> None:
        if self._rpm is not None:
            self._rpm.take(1, now)
        if self._tpm is not None:
            self._tpm.take(tokens, now)

    async def _sender(self, feed: Feed, request: Request) -> None:
        """Send booked requests one after another, taking the next straight away while the limits
        allow, so a busy backend costs no task per request. The task belongs to the feed whose
        request it is sending (stopping that feed cancels it)."""
        task = asyncio.current_task()
        assert task is not None
        while True:
            await self._send(feed, request)
            feed.in_flight.discard(task)
            feed.check_finished()
            work = self._next()
            if not isinstance(work, tuple):
                if work is not None:
                    self._wake.set()  # a rate or breaker wait: the pump keeps the timer
                return
            feed, request = work
            feed.in_flight.add(task)
            if self._in_flight < min(self.window.limit, self._cap):
                self._wake.set()  # the window grew: the pump starts another sender

    async def _send(self, feed: Feed, request: Request) -> None:
        started = self._clock.now()
        try:
            body = request.body if self._priority is None else with_priority(request.body, self._priority)
            answer = await self.backend.attempt(feed.endpoint, body)
        except asyncio.CancelledError:
            self._finish_attempt()
            if request.last is not None:  # its feed was stopped: keep what it last met
                feed.last_failures[request.line_no] = request.last
            raise
        except Exception:
            log.exception("internal error sending line %d of batch %s", request.line_no, feed.batch_id)
            answer = Attempt(500, _INTERNAL_ERROR, "", should_retry=False)
        self._finish_attempt()
        ended = self._clock.now()
        self._metrics.observe_attempt(self.backend.name, answer.status, ended - started)
        self.recent.note(ended, is_failure(answer.status, answer.answered))
        if self.background is not None:
            batch_in_flight = self._in_flight - self.tickets.holding
            self.background.answered(request.body, answer.status, ended - started, ended, batch_in_flight)
        self._after(feed, request, answer)

    def _finish_attempt(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    def _after(self, feed: Feed, request: Request, answer: Attempt) -> None:
        now = self._clock.now()
        verdict = judge(answer)
        self.window.record(verdict.overload, request.sequence)
        self._record_health(verdict, (feed.batch_id, request.line_no), answer, now)
        usage = None
        if verdict.succeeded:
            usage = answer.usage if answer.usage is not None else usage_of(answer.body)
            self._metrics.tokens(self.backend.name, usage.input_tokens, usage.output_tokens)
            if self._tpm is not None and usage.total_tokens:
                self._tpm.give_back(request.tokens - usage.total_tokens, now)
        else:
            request.last = answer
            if feed.stopped:  # no result: the line runs again, or is marked as not run
                feed.last_failures[request.line_no] = answer
                return
            fate = self._retry_later(feed, request, answer, verdict, now)
            self._errors.note(answer, fate, now)
            if fate is not Fate.FAILED:
                return
        row = response_row(
            request.line_no,
            feed.line_id(request.line_no),
            request.custom_id,
            answer.status,
            answer.request_id,
            answer.body,
            usage,
            answered=answer.answered,
        )
        self._metrics.finished(self.backend.name, verdict.succeeded)
        feed.done += 1
        feed.sink(row)

    def _retry_later(
        self, feed: Feed, request: Request, answer: Attempt, verdict: Judgement, now: float
    ) -> Fate:
        """Queue a failed request for another attempt (engine/retry.py says whether and when)."""
        if not verdict.retry:
            return Fate.FAILED
        backend_down = self.breaker.state is not BreakerState.CLOSED
        if is_charged(answer, backend_down):
            request.attempts += 1
            if request.attempts >= self._retry.max_attempts:
                return Fate.FAILED
            tries, fate = request.attempts, Fate.RETRYING
        else:
            request.waits += 1
            tries, fate = request.waits, Fate.WAITING
        self._metrics.retried(self.backend.name)
        if backend_down:
            # The breaker paces the probes: wait behind the feed's other lines, and go as soon as
            # the backend answers again.
            request.waiting = True
            feed.ready.append(request)
            return fate
        request.waiting = fate is Fate.WAITING
        due = now + self._retry.delay(tries, answer.retry_after, self._rand)
        heapq.heappush(self._retries, (due, next(self._retry_order), feed, request))
        feed.retrying += 1
        return fate

    def _record_health(self, verdict: Judgement, request: object, answer: Attempt, now: float) -> None:
        """Tell the breaker; log and count when it opens or closes."""
        before = self.breaker.state
        self.breaker.record(verdict.backend_down, now, request)
        after = self.breaker.state
        if before is BreakerState.CLOSED and after is BreakerState.OPEN:
            self._opened_at = now
            self._metrics.circuit_changed(self.backend.name, "open")
            waiting = self.waiting_batches
            log.warning(
                "backend %s looks down: circuit open after failures of %d different requests "
                "(last: %s); %d batch(es) wait for it: %s",
                self.backend.name,
                self.breaker.threshold,
                describe_failure(answer),
                len(waiting),
                ", ".join(waiting) or "none",
            )
        elif before is not BreakerState.CLOSED and after is BreakerState.CLOSED:
            self._metrics.circuit_changed(self.backend.name, "closed")
            self._release_waiting()
            resumed = [feed.batch_id for feed in self._feeds if not feed.stopped]
            log.info(
                "backend %s answers again: circuit closed after %.1f s; resuming %s",
                self.backend.name,
                now - self._opened_at,
                ", ".join(resumed) or "no batch",
            )
            self._wake.set()

    def _release_waiting(self) -> None:
        """The backend is back: requests that were only waiting for it go now, not after a backoff."""
        kept = []
        for entry in self._retries:
            feed, request = entry[2], entry[3]
            if request.waiting and not feed.stopped:
                feed.retrying -= 1
                feed.ready.appendleft(request)
            else:
                kept.append(entry)
        if len(kept) != len(self._retries):
            self._retries = kept
            heapq.heapify(kept)
