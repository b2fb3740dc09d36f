"""The reorder buffer of a feed on a backend with `prefix_ordering` (docs/prefix-ordering.md).

It takes the place of the feed's plain queue (`Feed.ready`) and offers the same few operations the
scheduler uses: `append` (a line read, or a request queued again to wait for the backend), `appendleft`
(a retry whose time has come: it goes first, as before), `[0]` (what goes next), `popleft`, `len`,
iteration and `clear`. What goes next:

1. a retry whose time has come (`appendleft`), as with the plain queue;
2. a request queued again to wait for the backend (`append` of a request with `waiting`), once no line
   read is left or it has been passed over by `lookahead` hand-outs: behind the other lines, as before;
3. the line read that has waited longest, when it has been passed over by `lookahead` hand-outs since it
   came in (no line waits for ever behind a hot prefix);
4. else the line whose prefix key shares the most chunks with the last one sent on the backend, when
   that is at least `WARM_CHUNKS` (keep the warm prefix hot);
5. else the line that has waited longest (a new group starts with the oldest line).

Keys are kept sorted, so the request sharing the most with a given key is one of its two neighbours.
The reader stops adding while the buffer holds `lookahead` requests or `max_bytes` of bodies and keys.

`WarmPrefix` is one per backend: the key last sent, shared by the backend's buffers, and the choice
between feeds that tie on deadline and fairness (`choose_feed`).
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from overnight.engine.prefix import prefix_key, shared_chunks

if TYPE_CHECKING:
    from overnight.engine.feed import Feed, Request

WARM_CHUNKS = 1  # 256 bytes of prompt in common, about 64 tokens: less is not worth reordering for
FAIRNESS_SLACK = 16  # a warm feed may run this many requests ahead of the deadline and fairness order
DEFAULT_LOOKAHEAD = 4096
DEFAULT_LOOKAHEAD_MB = 16
_ENTRY_OVERHEAD = 200  # bytes: the Request, the tuple, the dict slot (an estimate)
_BACK = -1  # the choice "the oldest request waiting for the backend"


@dataclass(frozen=True, slots=True)
class PrefixOrdering:
    """A backend's `prefix_ordering` settings: how far each feed reads ahead."""

    lookahead: int = DEFAULT_LOOKAHEAD  # requests
    max_bytes: int = DEFAULT_LOOKAHEAD_MB * 1_000_000  # of bodies and keys


@dataclass(slots=True)
class _Entry:
    request: Request
    key: bytes
    born: int  # hand-outs so far when it came in
    size: int


class WarmPrefix:
    """What a backend has sent last, for its feeds' buffers to follow."""

    def __init__(self, settings: PrefixOrdering) -> None:
        self.settings = settings
        self.key: bytes | None = None
        self.version = 0  # changes with the key, so a buffer knows its choice may be stale
        self._streak = 0  # picks in a row that went to a warm feed ahead of the default one

    def sent(self, key: bytes) -> None:
        if key != self.key:
            self.key = key
            self.version += 1

    def queue(self, endpoint: str) -> PrefixQueue:
        return PrefixQueue(self, endpoint, self.settings)

    def choose_feed(
        self,
        default: Feed,
        feeds: Sequence[Feed],
        served: Callable[[Feed], int],
        bucket: Callable[[Feed], int],
    ) -> Feed:
        """The feed to send from: `default` (the earliest-deadline, least-served one) unless another feed
        in the same deadline bucket, at most FAIRNESS_SLACK requests ahead of it in its project's count,
        has a request sharing more of the warm prefix than default's next (and at least WARM_CHUNKS);
        never more than FAIRNESS_SLACK such picks in a row, and never ahead of a retry that is due."""
        if self.key is None or len(feeds) == 1 or self._streak >= FAIRNESS_SLACK or _retry_due(default):
            self._streak = 0
            return default
        limit, when = served(default) + FAIRNESS_SLACK, bucket(default)
        best, best_warmth = default, max(_warmth(default), WARM_CHUNKS - 1)
        for feed in feeds:
            if feed is default or not feed.ready or feed.stopped:
                continue
            if bucket(feed) != when or served(feed) >= limit:
                continue
            warmth = _warmth(feed)
            if warmth > best_warmth:
                best, best_warmth = feed, warmth
        if best is default:
            self._streak = 0
        else:
            self._streak += 1
        return best


def _warmth(feed: Feed) -> int:
    ready = feed.ready
    return ready.warmth() if isinstance(ready, PrefixQueue) else 0


def _retry_due(feed: Feed) -> bool:
    ready = feed.ready
    return not isinstance(ready, PrefixQueue) or ready.retry_due


class PrefixQueue:
    """A feed's requests, handed out so that those sharing a prefix go close together (module doc)."""

    def __init__(self, warm: WarmPrefix, endpoint: str, settings: PrefixOrdering) -> None:
        self._warm = warm
        self._endpoint = endpoint
        self._lookahead = settings.lookahead
        self._max_bytes = settings.max_bytes
        self._front: deque[Request] = deque()  # retries due: first, in appendleft order
        self._back: deque[_Entry] = deque()  # requests queued again to wait for the backend
        self._entries: dict[int, _Entry] = {}  # by arrival number
        self._sorted: list[tuple[bytes, int]] = []  # (key, arrival number), sorted
        self._arrivals: deque[int] = deque()  # arrival numbers, oldest first (some already gone)
        self._numbers = itertools.count()
        self._handed = 0
        self._bytes = 0
        self._choice: tuple[int, int, int] | None = None  # (warm version, arrival number, warmth) of the next

    # -- what the scheduler calls (a deque's names) ----------------------------------------------
    def append(self, request: Request) -> None:
        key = prefix_key(self._endpoint, request.body)
        size = len(request.body) + len(key) + _ENTRY_OVERHEAD
        entry = _Entry(request, key, self._handed, size)
        self._bytes += size
        self._choice = None
        if request.waiting:
            self._back.append(entry)
            return
        number = next(self._numbers)
        self._entries[number] = entry
        bisect.insort(self._sorted, (key, number))
        self._arrivals.append(number)

    def appendleft(self, request: Request) -> None:
        self._front.appendleft(request)

    def __getitem__(self, index: int) -> Request:
        if index != 0:
            raise IndexError("only the next request can be looked at")
        if self._front:
            return self._front[0]
        return self._entry(self._next_number()).request

    def popleft(self) -> Request:
        if self._front:
            return self._front.popleft()
        number = self._next_number()
        if number == _BACK:
            entry = self._back.popleft()
        else:
            entry = self._entries.pop(number)
            del self._sorted[bisect.bisect_left(self._sorted, (entry.key, number))]
        self._bytes -= entry.size
        self._handed += 1
        self._choice = None
        self._warm.sent(entry.key)
        return entry.request

    def clear(self) -> None:
        self._front.clear()
        self._back.clear()
        self._entries.clear()
        self._sorted.clear()
        self._arrivals.clear()
        self._bytes = 0
        self._choice = None

    def __len__(self) -> int:
        return len(self._front) + len(self._entries) + len(self._back)

    def __bool__(self) -> bool:
        return bool(self._front) or bool(self._entries) or bool(self._back)

    def __iter__(self) -> Iterator[Request]:
        yield from self._front
        yield from (entry.request for entry in self._entries.values())
        yield from (entry.request for entry in self._back)

    # -- the reader's bound ------------------------------------------------------------------------
    @property
    def full(self) -> bool:
        """No more lines now: `lookahead` requests or `max_bytes` held (the retries due not counted)."""
        held = len(self._entries) + len(self._back)
        return held >= self._lookahead or (self._bytes >= self._max_bytes and held > 0)

    @property
    def retry_due(self) -> bool:
        return bool(self._front)

    @property
    def held_bytes(self) -> int:
        return self._bytes

    # -- the choice --------------------------------------------------------------------------------
    def warmth(self) -> int:
        """Chunks the next request shares with what the backend sent last (0: a retry goes next)."""
        if self._front or self._warm.key is None or not self:
            return 0
        self._next_number()
        assert self._choice is not None
        return self._choice[2]

    def _entry(self, number: int) -> _Entry:
        return self._back[0] if number == _BACK else self._entries[number]

    def _next_number(self) -> int:
        choice = self._choice
        if choice is not None and choice[0] == self._warm.version:
            return choice[1]
        number, shared = self._choose()
        self._choice = (self._warm.version, number, shared)
        return number

    def _choose(self) -> tuple[int, int]:
        """The next request's arrival number (or _BACK), and how many chunks it shares with the warm key."""
        warm = self._warm.key
        if self._back and (not self._entries or self._handed - self._back[0].born >= self._lookahead):
            return _BACK, self._shared(self._back[0].key, warm)
        oldest = self._oldest()
        if self._handed - self._entries[oldest].born < self._lookahead and warm is not None:
            nearest, shared = self._nearest(warm)
            if shared >= WARM_CHUNKS:
                return nearest, shared
        return oldest, self._shared(self._entries[oldest].key, warm)

    @staticmethod
    def _shared(key: bytes, warm: bytes | None) -> int:
        return 0 if warm is None else shared_chunks(key, warm)

    def _oldest(self) -> int:
        arrivals = self._arrivals
        while arrivals[0] not in self._entries:
            arrivals.popleft()
        return arrivals[0]

    def _nearest(self, key: bytes) -> tuple[int, int]:
        """The arrival number of the request sharing the most chunks with `key`, and how many."""
        at = bisect.bisect_left(self._sorted, (key, -1))
        best, best_shared = -1, -1
        for index in (at, at - 1):
            if 0 <= index < len(self._sorted):
                other, number = self._sorted[index]
                shared = shared_chunks(other, key)
                if shared > best_shared:
                    best, best_shared = number, shared
        return best, best_shared
