"""Prefix-cache-aware ordering's pure parts: prefix keys, the reorder buffer, the choice between feeds."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from overnight.engine.feed import Feed, Request
from overnight.engine.prefix import CHUNK_BYTES, HEAD_BYTES, key_of, prefix_key, shared_chunks
from overnight.engine.prefix_queue import FAIRNESS_SLACK, PrefixOrdering, PrefixQueue, WarmPrefix


def entry_size(body: bytes) -> int:
    return len(body) + HEAD_BYTES // CHUNK_BYTES * 8 + 200


CHAT = "/v1/chat/completions"
SYSTEM = "You are a careful reader. Answer from the document only. " * 6


def document(number: int, length: int = 1500) -> str:
    words = random.Random(number).choices(["alpha", "beta", "gamma", "delta", "omega", "sigma"], k=length)
    return f"Document {number}: " + " ".join(words)


def chat_body(doc: int, question: int, **extra: Any) -> bytes:
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"{document(doc)}\n\nQuestion {question}: what about item {question}?"},
    ]
    return json.dumps({"model": "m", "messages": messages, **extra}).encode()


def request(line_no: int, body: bytes) -> Request:
    return Request(line_no, f"c{line_no}", body)


def doc_of(item: Request) -> int:
    content: str = json.loads(item.body)["messages"][1]["content"]
    return int(content.split(":")[0].removeprefix("Document "))


# -- prefix keys -------------------------------------------------------------------------------------


def test_questions_about_one_document_share_a_long_prefix() -> None:
    one, other = prefix_key(CHAT, chat_body(1, 1)), prefix_key(CHAT, chat_body(1, 2))
    third = prefix_key(CHAT, chat_body(2, 1))
    assert shared_chunks(one, other) == HEAD_BYTES // CHUNK_BYTES  # the document fills the head
    assert shared_chunks(one, third) < shared_chunks(one, other)
    assert shared_chunks(one, third) >= len(SYSTEM) // CHUNK_BYTES - 1  # the system prompt alone


def test_the_key_follows_the_prompt_not_other_fields() -> None:
    plain = prefix_key(CHAT, chat_body(3, 1))
    assert prefix_key(CHAT, chat_body(3, 1, temperature=0.2, max_tokens=5)) == plain
    assert prefix_key(CHAT, chat_body(3, 1, model="other")) != plain  # another model: another cache


def test_a_key_is_bounded_by_the_head() -> None:
    huge = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 200_000}]}).encode()
    assert len(prefix_key(CHAT, huge)) == HEAD_BYTES // CHUNK_BYTES * 8


def test_completions_responses_and_embeddings() -> None:
    prompt = json.dumps({"model": "m", "prompt": SYSTEM + "tail one"}).encode()
    other = json.dumps({"model": "m", "prompt": [SYSTEM + "tail two", "second prompt"]}).encode()
    assert shared_chunks(prefix_key("/v1/completions", prompt), prefix_key("/v1/completions", other)) >= 1
    responses = json.dumps({"model": "m", "instructions": SYSTEM, "input": "hello"}).encode()
    listed = json.dumps({"model": "m", "instructions": SYSTEM, "input": [{"role": "user", "content": "x"}]})
    shared = shared_chunks(
        prefix_key("/v1/responses", responses), prefix_key("/v1/responses", listed.encode())
    )
    assert shared >= 1
    embedding = json.dumps({"model": "e", "input": SYSTEM}).encode()
    assert prefix_key("/v1/embeddings", embedding) == b""
    assert prefix_key(CHAT, b"not json") == b""


def test_content_parts_count_as_their_text() -> None:
    parts = [{"type": "text", "text": SYSTEM}, {"type": "image_url", "image_url": {"url": "http://x/a.png"}}]
    as_parts = json.dumps({"model": "m", "messages": [{"role": "user", "content": parts}]}).encode()
    as_text = json.dumps({"model": "m", "messages": [{"role": "user", "content": SYSTEM + "!"}]}).encode()
    assert shared_chunks(prefix_key(CHAT, as_parts), prefix_key(CHAT, as_text)) >= len(SYSTEM) // CHUNK_BYTES


@given(st.binary(max_size=2000), st.binary(max_size=2000), st.binary(max_size=600))
def test_shared_chunks_counts_the_common_whole_chunks(common: bytes, a: bytes, b: bytes) -> None:
    first, second = common + a, common + b
    expected = 0
    while (expected + 1) * CHUNK_BYTES <= min(len(first), len(second)) and (
        first[expected * CHUNK_BYTES : (expected + 1) * CHUNK_BYTES]
        == second[expected * CHUNK_BYTES : (expected + 1) * CHUNK_BYTES]
    ):
        expected += 1
    found = shared_chunks(key_of(first), key_of(second))
    if first == second:
        assert found == len(key_of(first)) // 8
    else:
        assert found == expected


# -- the reorder buffer --------------------------------------------------------------------------


def make_queue(lookahead: int = 4096, max_bytes: int = 10**9) -> tuple[WarmPrefix, PrefixQueue]:
    warm = WarmPrefix(PrefixOrdering(lookahead, max_bytes))
    return warm, warm.queue(CHAT)


def shuffled_workload(docs: int, questions: int, seed: int) -> list[Request]:
    pairs = [(doc, question) for doc in range(docs) for question in range(questions)]
    random.Random(seed).shuffle(pairs)
    return [request(number, chat_body(doc, question)) for number, (doc, question) in enumerate(pairs, 1)]


def switches(order: list[int]) -> int:
    return sum(1 for before, after in itertools.pairwise(order) if before != after)


def test_shuffled_questions_come_out_grouped_by_document() -> None:
    _warm, queue = make_queue()
    items = shuffled_workload(6, 12, seed=1)
    for item in items:
        queue.append(item)
    order = [queue.popleft() for _ in items]
    assert sorted(item.line_no for item in order) == list(range(1, len(items) + 1))
    docs = [doc_of(item) for item in order]
    assert switches(docs) == 5  # each document's questions in one run
    assert docs[0] == doc_of(items[0])  # the group that waited longest starts


def test_a_warm_prefix_stays_hot_across_buffers_of_one_backend() -> None:
    warm = WarmPrefix(PrefixOrdering())
    one, two = warm.queue(CHAT), warm.queue(CHAT)
    one.append(request(1, chat_body(1, 1)))
    two.append(request(1, chat_body(2, 1)))
    two.append(request(2, chat_body(1, 2)))
    assert doc_of(one.popleft()) == 1
    assert doc_of(two.popleft()) == 1  # not its oldest line: the one the backend has warm


def test_a_retry_due_goes_first_and_a_waiting_request_goes_back() -> None:
    _warm, queue = make_queue()
    for number in range(1, 4):
        queue.append(request(number, chat_body(number, 1)))
    first = queue.popleft()
    queue.appendleft(first)  # its retry time has come
    assert queue[0] is first
    assert queue.popleft() is first
    again = queue.popleft()
    again.waiting = True
    queue.append(again)  # queued again to wait for the backend: behind the others
    rest = [queue.popleft() for _ in range(len(queue))]
    assert rest[-1] is again


def test_the_oldest_request_is_not_passed_over_for_ever() -> None:
    lookahead = 8
    _warm, queue = make_queue(lookahead)
    queue.append(request(1, chat_body(1, 0)))
    queue.popleft()  # document 1 is warm
    lonely = request(0, chat_body(99, 1))
    queue.append(lonely)
    handed: list[Request] = []
    for number in range(2, 200):  # a hot document that never runs dry
        queue.append(request(number, chat_body(1, number)))
        handed.append(queue.popleft())
        if lonely in handed:
            break
    assert lonely in handed
    assert handed.index(lonely) <= lookahead


def test_the_reader_bound_counts_requests_and_bytes() -> None:
    _warm, queue = make_queue(lookahead=5)
    for number in range(5):
        assert not queue.full
        queue.append(request(number, chat_body(number, 1)))
    assert queue.full
    _warm, by_bytes = make_queue(lookahead=1000, max_bytes=20_000)
    added = 0
    while not by_bytes.full:
        by_bytes.append(request(added, chat_body(added, 1)))
        added += 1
    assert 2 <= added <= 4  # bodies of ~9 KB each
    assert by_bytes.held_bytes < 20_000 + len(chat_body(0, 1)) + 1000


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("read"), st.integers(0, 5), st.integers(0, 50)),
        st.tuples(st.just("send"), st.just(0), st.just(0)),
        st.tuples(st.just("retry"), st.just(0), st.just(0)),
        st.tuples(st.just("wait"), st.just(0), st.just(0)),
    ),
    max_size=150,
)


@settings(max_examples=80, deadline=None)
@given(OPS, st.integers(1, 12), st.integers(2_000, 40_000))
def test_every_request_goes_out_once_per_time_it_was_queued(
    ops: list[tuple[str, int, int]], lookahead: int, max_bytes: int
) -> None:
    """A model of the scheduler's use: lines read while there is room, sent, retried (appendleft) or
    queued again to wait (append, `waiting`); each queuing is answered by exactly one hand-out, a retry
    due first, and the reader stops only at a bound."""
    warm, queue = make_queue(lookahead, max_bytes)
    queued: Counter[int] = Counter()
    handed: Counter[int] = Counter()
    sent: list[Request] = []
    line_no = 0
    for op, doc, question in ops:
        if op == "read":
            if queue.full:
                assert len(queue) >= lookahead or queue.held_bytes >= max_bytes
                continue
            line_no += 1
            item = request(line_no, chat_body(doc, question))
            queue.append(item)
            queued[line_no] += 1
        elif op == "send" and queue:
            head = queue[0]
            item = queue.popleft()
            assert item is head
            handed[item.line_no] += 1
            sent.append(item)
        elif op == "retry" and sent:
            item = sent.pop()
            queue.appendleft(item)
            queued[item.line_no] += 1
            assert queue[0] is item
        elif op == "wait" and sent:
            item = sent.pop(0)
            item.waiting = True
            queue.append(item)
            queued[item.line_no] += 1
    while queue:
        handed[queue.popleft().line_no] += 1
    assert handed == queued
    assert len(queue) == 0
    assert queue.held_bytes == 0
    assert warm.key is not None or not handed


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.booleans()), max_size=200), st.integers(1, 10))
def test_a_reader_and_a_sender_never_exceed_the_bounds(steps: list[tuple[int, bool]], lookahead: int) -> None:
    max_bytes = 30_000
    _warm, queue = make_queue(lookahead, max_bytes)
    biggest = entry_size(chat_body(30, 50))
    for number, (doc, read) in enumerate(steps):
        if read and not queue.full:
            queue.append(request(number, chat_body(doc, number)))
        elif not read and queue:
            queue.popleft()
        assert len(queue) <= lookahead
        assert queue.held_bytes < max_bytes + biggest


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 8), st.integers(2, 12), st.integers(0, 10_000))
def test_shuffled_input_is_grouped_when_it_fits_the_lookahead(docs: int, questions: int, seed: int) -> None:
    _warm, queue = make_queue()
    items = shuffled_workload(docs, questions, seed)
    for item in items:
        queue.append(item)
    order = [doc_of(queue.popleft()) for _ in items]
    assert switches(order) == docs - 1


# -- the choice between feeds --------------------------------------------------------------------


async def _no_lines() -> AsyncIterator[tuple[int, bytes]]:
    return
    yield


def make_feed(warm: WarmPrefix, project: str, deadline: int, order: int) -> Feed:
    feed = Feed(f"b{order}", project, deadline, CHAT, _no_lines(), str, lambda row: None)
    feed.ready = warm.queue(CHAT)
    feed.order = order
    return feed


def run_picks(
    warm: WarmPrefix, feeds: list[Feed], served: Counter[str], picks: int, bucket_s: int = 60
) -> list[Feed]:
    """Pick as the scheduler does: the default by (deadline bucket, served, order), then choose_feed."""
    chosen = []
    for _ in range(picks):
        ready = [feed for feed in feeds if feed.ready]
        if not ready:
            break
        default = min(ready, key=lambda f: (f.deadline // bucket_s, served[f.project], f.order))
        feed = warm.choose_feed(default, feeds, lambda f: served[f.project], lambda f: f.deadline // bucket_s)
        feed.ready.popleft()
        served[feed.project] += 1
        chosen.append(feed)
    return chosen


def test_a_nearer_deadline_always_goes_first() -> None:
    warm = WarmPrefix(PrefixOrdering())
    late, soon = make_feed(warm, "p", 10_000, 0), make_feed(warm, "q", 100, 1)
    for question in range(20):
        late.ready.append(request(question, chat_body(1, question)))
    late.ready.popleft()  # document 1 is warm, and only the late feed has it
    for question in range(5):
        soon.ready.append(request(question, chat_body(2, question)))
    chosen = run_picks(warm, [late, soon], Counter(), 5)
    assert chosen == [soon] * 5


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 1000))
def test_a_project_runs_at_most_the_slack_ahead_of_another(seed: int) -> None:
    warm = WarmPrefix(PrefixOrdering())
    hot, other = make_feed(warm, "hot", 1000, 0), make_feed(warm, "other", 1000, 1)
    rng = random.Random(seed)
    for number in range(120):
        hot.ready.append(request(number, chat_body(1, number)))  # one document: always warm
        other.ready.append(request(number, chat_body(rng.randrange(2, 40), number)))
    served: Counter[str] = Counter({"hot": 0, "other": 0})
    for feed in run_picks(warm, [hot, other], served, 200):
        assert abs(served["hot"] - served["other"]) <= FAIRNESS_SLACK + 1, feed.project


def test_feeds_of_one_project_follow_the_warm_prefix_but_the_older_is_not_starved() -> None:
    warm = WarmPrefix(PrefixOrdering())
    older, younger = make_feed(warm, "p", 1000, 0), make_feed(warm, "p", 1000, 1)
    for number in range(100):
        older.ready.append(request(number, chat_body(number + 10, 1)))  # nothing in common
        younger.ready.append(request(number, chat_body(1, number)))
    younger.ready.popleft()  # document 1 warm
    served: Counter[str] = Counter({"p": 0})
    chosen = run_picks(warm, [older, younger], served, 60)
    runs = [len(run) for run in "".join("o" if f is older else "y" for f in chosen).split("o") if run]
    assert chosen[0] is younger  # the warm one goes ahead of the default
    assert max(runs) <= FAIRNESS_SLACK
    assert chosen.count(older) >= 60 // (FAIRNESS_SLACK + 1)


def test_without_a_warm_request_the_default_order_stands() -> None:
    warm = WarmPrefix(PrefixOrdering())
    feeds = [make_feed(warm, project, 1000, order) for order, project in enumerate("abc")]
    for number, feed in enumerate(feeds):
        for question in range(3):
            feed.ready.append(request(question, chat_body(100 * number + question, 0)))
    chosen = run_picks(warm, feeds, Counter(), 9)
    assert [f.project for f in chosen] == list("abcabcabc")
