"""The `shared` scenario's server simulated offline, without host noise (issue 12): the same FIFO server
(SLOTS x SERVICE_S, no 429) and Poisson online traffic, with the real background window
(engine/neighbour.py) driven on a simulated clock, or a fixed window for comparison. Deterministic and
quick (a second or two a setting), so it shows the trade-off between the two goals that the live phases,
on a shared and busy host, measure only roughly.

``python -m bench.shared_sim`` prints the table; bench/shared.py adds its rows to the section.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from dataclasses import dataclass

from overnight.engine.neighbour import LoadReading, NeighbourSettings, NeighbourWindow

SLOTS = 16
SERVICE_S = 0.040
ONLINE_RPS = 200.0
NETWORK_S = 0.0005  # each way
SPAN_S = 60.0
WARM_S = 10.0  # not counted
SHAPE = (7, 0)


@dataclass(frozen=True, slots=True)
class Policy:
    """A batch client: `fixed` requests in flight, or the background window with or without a reading
    every `poll_s`."""

    name: str
    fixed: int | None = None
    load: bool = False
    poll_s: float = 0.05
    headroom: int = 0
    target_s: float = 0.002


@dataclass(frozen=True, slots=True)
class Outcome:
    p99_s: float
    online_rps: float
    batch_rps: float

    @property
    def share(self) -> float:
        return self.batch_rps / (SLOTS / SERVICE_S - self.online_rps)


class _Sim:
    def __init__(self, policy: Policy | None, seed: int) -> None:
        self.policy = policy
        self.rand = random.Random(seed)
        self.events: list[tuple[float, int, str, tuple[str, float]]] = []
        self.order = itertools.count()
        self.queue: deque[tuple[str, float]] = deque()
        self.running = 0
        self.in_flight = 0
        self.latest: LoadReading | None = None
        self.readings = 0
        self.online: list[float] = []
        self.served = {"online": 0, "batch": 0}
        self.window: NeighbourWindow | None = None
        if policy is not None and policy.fixed is None:
            settings = NeighbourSettings(policy.target_s, 128, headroom=policy.headroom)
            self.window = NeighbourWindow(settings)

    def push(self, at: float, kind: str, request: tuple[str, float] = ("", 0.0)) -> None:
        heapq.heappush(self.events, (at, next(self.order), kind, request))

    def limit(self) -> int:
        if self.policy is None:
            return 0
        return self.policy.fixed if self.window is None else self.window.limit  # type: ignore[return-value]

    def send(self, now: float) -> None:
        while self.in_flight < self.limit():
            self.in_flight += 1
            self.push(now + NETWORK_S, "arrive", ("batch", now))

    def start(self, now: float, request: tuple[str, float]) -> None:
        self.running += 1
        self.push(now + SERVICE_S, "done", request)

    def run(self) -> Outcome:
        due = 0.0
        while due < SPAN_S:
            self.push(due + NETWORK_S, "arrive", ("online", due))
            due += self.rand.expovariate(ONLINE_RPS)
        if self.policy is not None and self.policy.load:
            self.push(0.0, "poll")
        self.send(0.0)
        while self.events:
            now, _, kind, request = heapq.heappop(self.events)
            if now > SPAN_S:
                break
            self.handle(now, kind, request)
        self.online.sort()
        counted = SPAN_S - WARM_S
        p99 = self.online[round(0.99 * (len(self.online) - 1))]
        return Outcome(p99, self.served["online"] / counted, self.served["batch"] / counted)

    def handle(self, now: float, kind: str, request: tuple[str, float]) -> None:
        who, sent = request
        if kind == "arrive":
            if self.running < SLOTS:
                self.start(now, request)
            else:
                self.queue.append(request)
        elif kind == "done":
            self.running -= 1
            if self.queue:
                self.start(now, self.queue.popleft())
            if now >= WARM_S:
                self.served[who] += 1
            self.push(now + NETWORK_S, "answer", request)
        elif kind == "answer" and who == "online":
            if sent >= WARM_S:
                self.online.append(now - sent)
        elif kind == "answer":
            self.in_flight -= 1
            if self.window is not None:
                load = self.latest if self.policy is not None and self.policy.load else None
                self.window.answered(SHAPE, now - sent, now, in_flight=self.in_flight, load=load)
            self.send(now)
        elif kind == "poll":
            self.readings += 1
            self.latest = LoadReading(len(self.queue), self.readings, self.running)
            assert self.policy is not None
            self.push(now + self.policy.poll_s, "poll")


class _Oracle(_Sim):
    """The bound: it sees the server at every instant and sends a batch request the moment a slot is
    free beyond `keep` and nothing queues (no real client can: it reads the server only now and then)."""

    def __init__(self, keep: int, seed: int) -> None:
        super().__init__(Policy("oracle", fixed=0), seed)
        self.keep = keep
        self.on_the_way = 0

    def send(self, now: float) -> None:
        while SLOTS - self.running - len(self.queue) - self.on_the_way > self.keep:
            self.on_the_way += 1
            self.in_flight += 1
            self.push(now + NETWORK_S, "arrive", ("batch", now))

    def handle(self, now: float, kind: str, request: tuple[str, float]) -> None:
        if kind == "arrive" and request[0] == "batch":
            self.on_the_way -= 1
        super().handle(now, kind, request)
        if kind in ("arrive", "done"):
            self.send(now)


def simulate(policy: Policy | None, seed: int = 1) -> Outcome:
    """The online p99 and both served rates with `policy`'s batch (None: no batch)."""
    return _Sim(policy, seed).run()


POLICIES = (
    Policy("fixed window 6", fixed=6),
    Policy("fixed window 7", fixed=7),
    Policy("fixed window 8", fixed=8),
    Policy("load signal every 0.05 s, occupancy_headroom -1", load=True, headroom=-1),
    Policy("load signal every 0.05 s, occupancy_headroom 0", load=True, headroom=0),
    Policy("load signal every 0.05 s, occupancy_headroom +1", load=True, headroom=1),
    Policy("load signal every 0.25 s (the default), occupancy_headroom 0", load=True, poll_s=0.25),
    Policy("delay signal, target 2 ms", target_s=0.002),
)


def table() -> list[tuple[str, float, float]]:
    """(policy, online p99 over the no-batch p99, batch throughput over idle capacity) per policy."""
    baseline = simulate(None)
    rows = []
    for policy in POLICIES:
        found = simulate(policy)
        rows.append((policy.name, found.p99_s / baseline.p99_s, found.share))
    for keep in (0, 3):
        found = _Oracle(keep, 1).run()
        name = f"bound: sees every slot at every instant, keeps {keep} free"
        rows.append((name, found.p99_s / baseline.p99_s, found.share))
    return rows


def main() -> None:
    print(f"no batch: online p99 {simulate(None).p99_s * 1000:.1f} ms")
    for name, p99_x, share in table():
        print(f"{name:64} p99 x{p99_x:.2f}  batch/idle {share:.2f}")


if __name__ == "__main__":
    main()
