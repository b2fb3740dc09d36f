"""The background backend's window (engine/neighbour.py): pure, driven by a made-up clock."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from overnight.engine.neighbour import (
    BaseLatency,
    FeedNeed,
    LoadReading,
    NeighbourSettings,
    NeighbourWindow,
    needed_concurrency,
    request_shape,
)

BASE_S = 0.040
TARGET_S = 0.002
SHAPE = (7, 0)


def window(maximum: int = 32, **kwargs: float) -> NeighbourWindow:
    return NeighbourWindow(NeighbourSettings(TARGET_S, maximum, **kwargs))  # type: ignore[arg-type]


class Driver:
    """Answers one after another on a clock of its own, each `latency` long, with the window full."""

    def __init__(self, win: NeighbourWindow, now: float = 1_000.0) -> None:
        self.win = win
        self.now = now

    def answer(self, latency: float, load: LoadReading | None = None) -> None:
        self.now += latency / max(1, self.win.limit)  # a full window answers `limit` times per latency
        self.win.answered(SHAPE, latency, self.now, in_flight=self.win.limit - 1, load=load)

    def answers(self, count: int, latency: float, load: LoadReading | None = None) -> None:
        for _ in range(count):
            self.answer(latency, load)


def test_it_starts_at_one_and_doubles_while_nothing_queues() -> None:
    win = window()
    assert win.limit == 1
    Driver(win).answers(400, BASE_S)
    assert win.limit == 32  # the backend's maximum


def test_sustained_queueing_shrinks_it_to_one_and_a_clear_server_grows_it_back() -> None:
    win = window()
    drive = Driver(win)
    drive.answers(400, BASE_S)
    assert win.limit == 32
    drive.answers(500, BASE_S + 10 * TARGET_S)  # ~10 s: the base latency is still remembered
    assert win.limit == 1
    drive.answers(4_000, BASE_S)
    assert win.limit == 32


def test_it_reacts_within_a_few_round_trips() -> None:
    win = window()
    drive = Driver(win)
    drive.answers(400, BASE_S)
    started = drive.now
    while win.limit > 16:
        drive.answer(BASE_S + 10 * TARGET_S)
    assert drive.now - started < 20 * BASE_S


def test_a_delay_just_over_the_target_steps_down_not_halves() -> None:
    win = window()
    drive = Driver(win)
    drive.answers(400, BASE_S)
    before = win.size
    for _ in range(20 * win.limit):  # a few epochs: the filter's quantile moves, the slow start ends
        drive.answer(BASE_S + 1.5 * TARGET_S)
        if win.size != before:
            break
    assert win.size == before - win.settings.step


def test_the_window_grows_only_while_it_is_used() -> None:
    win = window()
    now = 1_000.0
    for _ in range(500):
        now += BASE_S
        win.answered(SHAPE, BASE_S, now, in_flight=0)  # one line in flight at a time: never full above 1
    assert win.limit <= 2


def occupancy(win: NeighbourWindow, own: int, running: int, waiting: int, number: int) -> int:
    """One answer with a fresh reading, a second after the last: `own` batch requests out (this answer's
    among them)."""
    load = LoadReading(waiting, number, running)
    win.answered(SHAPE, BASE_S, 1_000.0 + number, in_flight=own - 1, load=load)
    return win.limit


def test_a_reading_sets_the_window_to_the_servers_free_slots_plus_headroom() -> None:
    win = window(maximum=64, headroom=1, follow_s=1e-6)  # follows each reading at once
    assert occupancy(win, own=6, running=10, waiting=0, number=1) == 6 + 3  # slots unknown: half again
    assert occupancy(win, own=7, running=16, waiting=3, number=2) == 7 - 3 + 1  # 16 slots, 3 wait
    assert win.signal == "load"
    assert win.slots.count == 16
    assert win.slots.confirmed
    assert occupancy(win, own=5, running=10, waiting=0, number=3) == 5 + 6 + 1  # 6 free, the headroom
    assert occupancy(win, own=12, running=16, waiting=1, number=4) == 12  # one waits, as it aims for


def test_a_negative_headroom_keeps_slots_free() -> None:
    win = window(maximum=64, headroom=-2, follow_s=1e-6)
    occupancy(win, own=10, running=16, waiting=2, number=1)
    assert occupancy(win, own=8, running=12, waiting=0, number=2) == 8 + 4 - 2


def test_the_window_follows_the_readings_with_a_time_constant() -> None:
    win = window(maximum=64, follow_s=0.5)
    occupancy(win, own=4, running=16, waiting=1, number=1)
    assert win.limit == 3
    # online traffic left: 12 slots free at once; half a second later it has come about 63 % of the way
    win.answered(SHAPE, BASE_S, 1_001.5, in_flight=2, load=LoadReading(0, 2, 4))
    assert win.limit == int(3 + (1 - math.exp(-1.0)) * 12)


def test_between_readings_the_window_holds() -> None:
    win = window(maximum=64)
    occupancy(win, own=6, running=16, waiting=2, number=1)
    held = win.limit
    for _ in range(50):
        win.answered(SHAPE, BASE_S, 1_001.0, in_flight=0, load=LoadReading(2, 1, 16))
    assert win.limit == held


def test_with_the_load_signal_it_finds_the_slot_count_from_one() -> None:
    win = window(maximum=128)
    slots, online = 16, 8
    for number in range(1, 40):  # each reading: what its window put there, and the online load
        own = win.limit
        running = min(slots, own + online)
        occupancy(win, own, running, max(0, own + online - slots), number)
    assert win.limit == slots - online  # what the server holds: its slot count
    assert win.slots.count == slots


def test_a_gross_slowdown_takes_one_back_despite_a_clear_reading() -> None:
    win = window(maximum=64, follow_s=1e-6)
    occupancy(win, own=6, running=16, waiting=1, number=1)
    for _ in range(100):  # the base latency, learned (the same reading: nothing is followed)
        win.answered(SHAPE, BASE_S, 1_001.0, in_flight=5, load=LoadReading(1, 1, 16))
    for number in range(2, 2 + win.settings.noise_filter):  # the filter's quantile moves
        load = LoadReading(0, number, 16)
        win.answered(SHAPE, BASE_S + 10 * TARGET_S, 1_000.0 + number, in_flight=5, load=load)
    assert win.limit == 6 - 1


def test_a_reading_without_running_shrinks_once_per_reading_while_a_queue_waits() -> None:
    win = window(waiting_threshold=2)
    drive = Driver(win)
    drive.answers(400, BASE_S)
    assert win.limit == 32
    drive.answers(50, BASE_S, LoadReading(waiting=5, number=1))
    assert win.limit == int(32 * 0.7)
    assert win.signal == "load"
    drive.answers(50, BASE_S, LoadReading(waiting=5, number=2))
    assert win.limit == int(int(32 * 0.7) * 0.7)


def test_a_short_queue_at_the_server_holds_the_window() -> None:
    win = window(waiting_threshold=2)
    drive = Driver(win)
    drive.answers(20, BASE_S)
    held = win.size
    drive.answers(500, BASE_S, LoadReading(waiting=1, number=1))
    assert win.size == held


def test_without_a_reading_the_delay_signal_drives_it() -> None:
    win = window()
    drive = Driver(win)
    drive.answers(50, BASE_S, LoadReading(waiting=0, number=1))
    assert win.signal == "load"
    drive.answers(1, BASE_S, None)  # the reading went stale or the endpoint failed
    assert win.signal == "delay"


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 128),
    st.lists(
        st.tuples(
            st.floats(0.0, 5.0, allow_nan=False),  # latency
            st.floats(0.0, 2.0, allow_nan=False),  # time since the last answer
            st.integers(0, 200),  # in flight
            st.one_of(st.none(), st.integers(0, 50)),  # waiting at the server
            st.one_of(st.none(), st.integers(0, 300)),  # running there
        ),
        max_size=300,
    ),
    st.lists(st.tuples(st.integers(0, 10**6), st.floats(-100.0, 10**6, allow_nan=False)), max_size=4),
)
def test_the_window_stays_within_one_and_the_maximum(
    maximum: int,
    answers: list[tuple[float, float, int, int | None, int | None]],
    feeds: list[tuple[int, float]],
) -> None:
    win = window(maximum)
    now = 0.0
    for number, (latency, gap, in_flight, waiting, running) in enumerate(answers):
        now += gap
        load = None if waiting is None else LoadReading(waiting, number // 7, running)
        win.answered(SHAPE, latency, now, in_flight=in_flight, load=load)
        assert 1 <= win.limit <= maximum
        if number % 50 == 0:
            needs = [
                FeedNeed(f"batch_{i}", now + left, remaining) for i, (remaining, left) in enumerate(feeds)
            ]
            win.plan_deadlines(needs, now)
            assert 1 <= win.limit <= maximum


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 64), st.integers(0, 80), st.integers(1, 128), st.integers(-2, 2))
def test_the_load_signal_keeps_the_servers_occupancy_at_its_slot_count(
    slots: int, online: int, maximum: int, headroom: int
) -> None:
    win = window(maximum, headroom=headroom)
    for number in range(1, 200):  # each reading shows what its window put there, with the online load
        own = win.limit
        demand = own + online
        waiting = max(0, demand - slots)
        occupancy(win, own, min(slots, demand), waiting, number)
        assert 1 <= win.limit <= maximum
        if waiting > max(0, headroom):  # more waits than it aims for: it never grows
            assert win.limit <= own

    def bounded(size: int) -> int:
        return max(1, min(maximum, size))

    # about the slot count less the online load, plus the headroom (or one more while it probes)
    assert bounded(slots - online + headroom - 1) <= win.limit <= bounded(slots - online + max(1, headroom))


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 128), st.floats(2.5, 20.0))
def test_sustained_delay_takes_it_to_one_and_a_clear_server_grows_it_back(maximum: int, over: float) -> None:
    win = window(maximum)
    drive = Driver(win)
    drive.answers(8 * maximum + 50, BASE_S)  # slow start: doubling per round trip
    assert win.limit == maximum
    started = drive.now
    while win.limit > 1:  # clearly over: within seconds, before the base latency is learned again
        drive.answer(BASE_S + over * TARGET_S)
        assert drive.now - started < 10.0
    cleared = drive.now
    while win.limit < maximum:  # half a request per round trip (two round trips at the least) back
        drive.answer(BASE_S)
        assert drive.now - cleared < 0.5 * maximum + 5.0


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 100_000), st.floats(1.0, 86_400.0), st.floats(0.01, 30.0))
def test_a_deadline_override_raises_the_floor_to_what_the_feed_needs(
    remaining: int, seconds_left: float, latency: float
) -> None:
    win = window(maximum=128)
    win.answered(SHAPE, latency, 0.0, in_flight=0)
    need = FeedNeed("batch_1", seconds_left, remaining)
    required = needed_concurrency(remaining, seconds_left, latency)
    changes = win.plan_deadlines([need], 0.0)
    if required > win.size:
        assert changes.started == [("batch_1", min(128, required))]
        assert win.limit >= min(128, required)
        # at that concurrency the lines finish in time (or it takes everything there is)
        assert win.limit == 128 or remaining * latency / win.limit <= seconds_left
        again = win.plan_deadlines([need], 0.0)
        assert again.started == []
        assert again.ended == []
        assert win.plan_deadlines([], 1.0).ended == [("batch_1", min(128, required))]
    else:
        assert changes.started == []
        assert win.floor == 1
    assert win.floor == 1 or win.overrides


def test_needed_concurrency_by_littles_law() -> None:
    assert needed_concurrency(0, 100.0, 1.0) == 0
    assert needed_concurrency(800, 100.0, 1.0) == 10  # 800 line-seconds in 80 % of 100 s
    assert needed_concurrency(1, 0.0, 1.0) > 10**6  # no time left: everything


def test_the_base_latency_is_a_minimum_that_ages() -> None:
    bases = BaseLatency(epoch_s=10.0)
    assert bases.base(SHAPE, 0.0) is None
    bases.observe(SHAPE, 0.040, 0.0)
    bases.observe(SHAPE, 0.090, 1.0)
    assert bases.base(SHAPE, 5.0) == 0.040
    bases.observe(SHAPE, 0.080, 12.0)  # the server got slower
    assert bases.base(SHAPE, 15.0) == 0.040  # still remembered for up to two epochs
    bases.observe(SHAPE, 0.080, 21.0)
    assert bases.base(SHAPE, 25.0) == 0.080  # learned again
    assert bases.base(SHAPE, 60.0) is None  # nothing recent at all


def test_a_slower_server_is_learned_again_and_the_window_recovers() -> None:
    win = window()
    drive = Driver(win)
    drive.answers(400, BASE_S)
    slower = 2 * BASE_S
    drive.answers(20_000, slower)  # each answer is twice as slow, for long enough to relearn
    assert win.last_base_s == slower
    assert win.limit == 32


def test_request_shapes_bucket_prompt_bytes_and_output_tokens() -> None:
    small = json.dumps({"model": "m", "messages": [], "max_tokens": 16}).encode()
    assert request_shape(small) == (len(small).bit_length(), 5)
    assert request_shape(b'{"max_completion_tokens": 1000}')[1] == 10
    assert request_shape(b'{"model": "m"}')[1] == 0
    assert request_shape(b"x" * 4000)[0] == request_shape(b"x" * 3000)[0]
    assert request_shape(b"x" * 4000)[0] != request_shape(b"x" * 400)[0]


def test_a_deadline_a_hair_away_needs_everything_rather_than_overflowing() -> None:
    from overnight.engine.neighbour import EVERYTHING, needed_concurrency

    assert needed_concurrency(1, 2.225073858507203e-309, 1.0) == EVERYTHING  # found by Hypothesis
    assert needed_concurrency(1, 0.0, 1.0) == EVERYTHING
    assert needed_concurrency(10, 100.0, 1.0) == 1


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 8), st.integers(16, 128), st.integers(0, 12))
def test_workers_reading_one_server_share_its_free_slots_instead_of_each_taking_them_all(
    workers: int, slots: int, online: int
) -> None:
    wins = [window(256) for _ in range(workers)]
    for win in wins:
        win.share = 1 / workers  # each holds that share of the backend's slots (engine/slots.py)
    totals = []
    for number in range(1, 160):  # a reading every 0.25 s; each worker answers once with it
        demand = sum(win.limit for win in wins) + online
        running, waiting = min(slots, demand), max(0, demand - slots)
        for win in wins:
            load = LoadReading(waiting, number, running)
            win.answered(SHAPE, BASE_S, 1_000.0 + number / 4, in_flight=win.limit - 1, load=load)
        totals.append(sum(win.limit for win in wins))
    settled = totals[-40:]  # no swing between overshoot and undershoot: near the free slots, and steady
    assert all(slots - online - 2 * workers <= total <= slots - online + 2 * workers for total in settled)
