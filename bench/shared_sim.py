"""The `shared` scenario's server simulated offline, without host noise (issue 12): a FIFO server (slots
served in parallel, each request taking its service time, no 429) and Poisson online traffic at half its
capacity, with the real background window (engine/neighbour.py) driven on a simulated clock, or a fixed
window for comparison. Deterministic and quick (a second or two a setting), so it shows the trade-off
between the two goals that the live phases, on a shared and busy host, measure only roughly.

Two servers: `SERVER`, the live bench's (vLLM-like: many sequences at once, requests of varied length),
and `SMALL` (16 slots of fixed 40 ms requests), where even a sender that sees every slot at every instant
cannot meet both goals: an online request that finds every slot busy waits for the next end.

``python -m bench.shared_sim`` prints the tables; bench/shared.py adds their rows to the section.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from dataclasses import dataclass

from overnight.engine.neighbour import LoadReading, NeighbourSettings, NeighbourWindow

NETWORK_S = 0.0005  # each way
SPAN_S = 60.0
WARM_S = 20.0  # not counted (the live phases measure after 20 s too)
SHAPE = (7, 0)
TARGET_SHARE = 0.05  # the delay signal's target: this share of the service time (20 ms of 0.4 s)


@dataclass(frozen=True, slots=True)
class Server:
    """`slots` served at once, each request taking `service_s` times 1 +- up to `jitter` (uniform)."""

    name: str
    slots: int
    service_s: float
    jitter: float

    @property
    def capacity_rps(self) -> float:
        return self.slots / self.service_s

    @property
    def online_rps(self) -> float:
        return self.capacity_rps / 2


SERVER = Server("64 slots x 0.4 s +-50 %", 64, 0.4, 0.5)
SMALL = Server("16 slots x 40 ms fixed", 16, 0.040, 0.0)


@dataclass(frozen=True, slots=True)
class Policy:
    """A batch client: `fixed` requests in flight, or the background window with or without a reading
    every `poll_s`."""

    name: str
    fixed: int | None = None
    load: bool = False
    poll_s: float = 0.25
    headroom: int = 0


@dataclass(frozen=True, slots=True)
class Outcome:
    p99_s: float
    online_rps: float
    batch_rps: float
    capacity_rps: float

    @property
    def share(self) -> float:
        return self.batch_rps / (self.capacity_rps - self.online_rps)


class _Sim:
    def __init__(self, server: Server, policy: Policy | None, seed: int) -> None:
        self.server = server
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
            target = TARGET_SHARE * server.service_s
            settings = NeighbourSettings(target, 128, headroom=policy.headroom)
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
        stretch = 1 + self.server.jitter * (2 * self.rand.random() - 1)
        self.push(now + self.server.service_s * stretch, "done", request)

    def run(self) -> Outcome:
        due = 0.0
        while due < SPAN_S:
            self.push(due + NETWORK_S, "arrive", ("online", due))
            due += self.rand.expovariate(self.server.online_rps)
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
        served = self.served
        return Outcome(p99, served["online"] / counted, served["batch"] / counted, self.server.capacity_rps)

    def handle(self, now: float, kind: str, request: tuple[str, float]) -> None:
        who, sent = request
        if kind == "arrive":
            if self.running < self.server.slots:
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

    def __init__(self, server: Server, keep: int, seed: int) -> None:
        super().__init__(server, Policy("oracle", fixed=0), seed)
        self.keep = keep
        self.on_the_way = 0

    def send(self, now: float) -> None:
        while self.server.slots - self.running - len(self.queue) - self.on_the_way > self.keep:
            self.on_the_way += 1
            self.in_flight += 1
            self.push(now + NETWORK_S, "arrive", ("batch", now))

    def handle(self, now: float, kind: str, request: tuple[str, float]) -> None:
        if kind == "arrive" and request[0] == "batch":
            self.on_the_way -= 1
        super().handle(now, kind, request)
        if kind in ("arrive", "done"):
            self.send(now)


def simulate(server: Server, policy: Policy | None, seed: int = 1) -> Outcome:
    """The online p99 and both served rates with `policy`'s batch (None: no batch)."""
    return _Sim(server, policy, seed).run()


POLICIES = (
    Policy("load signal every 0.25 s (the default), occupancy_headroom 0", load=True),
    Policy("load signal every 0.25 s, occupancy_headroom -2", load=True, headroom=-2),
    Policy("load signal every 0.05 s, occupancy_headroom 0", load=True, poll_s=0.05),
    Policy("delay signal, target 5 % of the service time", load=False),
)


def _fixed(server: Server) -> tuple[Policy, ...]:
    """Fixed windows around what the online traffic leaves idle."""
    idle = round(server.slots / 2)
    return tuple(Policy(f"fixed window {n}", fixed=n) for n in (idle - 2, idle, idle + 2))


def table(server: Server) -> list[tuple[str, float, float]]:
    """(policy, online p99 over the no-batch p99, batch throughput over idle capacity) per policy."""
    baseline = simulate(server, None)
    rows = []
    for policy in (*_fixed(server), *POLICIES):
        found = simulate(server, policy)
        rows.append((policy.name, found.p99_s / baseline.p99_s, found.share))
    for keep in (0, 3):
        found = _Oracle(server, keep, 1).run()
        name = f"bound: sees every slot at every instant, keeps {keep} free"
        rows.append((name, found.p99_s / baseline.p99_s, found.share))
    return rows


def main() -> None:
    for server in (SERVER, SMALL):
        print(f"{server.name}: no batch, online p99 {simulate(server, None).p99_s * 1000:.1f} ms")
        for name, p99_x, share in table(server):
            print(f"  {name:64} p99 x{p99_x:.2f}  batch/idle {share:.2f}")


if __name__ == "__main__":
    main()
