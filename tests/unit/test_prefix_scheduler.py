"""The scheduler with `prefix_ordering`: grouping within and across feeds, exactly one result per line
(retries, lines already finished before a restart), and today's order when it is off."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from overnight.backends.base import Attempt, StreamAnswer
from overnight.domain.clock import SystemClock
from overnight.domain.models import ResultKind, ResultRow
from overnight.engine.feed import Feed
from overnight.engine.prefix_queue import PrefixOrdering
from overnight.engine.retry import RetryPolicy
from overnight.engine.scheduler import BackendScheduler

OK = b'{"object":"chat.completion","usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}'
SYSTEM = "Answer from the document only, in one word. " * 4
FAST_RETRY = RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.002)


def document(number: int) -> str:
    words = random.Random(number).choices(["red", "green", "blue", "black", "white"], k=300)
    return f"Document {number}: " + " ".join(words)


def line(custom_id: str, doc: int) -> bytes:
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"{document(doc)}\nQuestion <{custom_id}>"},
    ]
    body = {"model": "m", "messages": messages}
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    ).encode()


def workload(docs: int, questions: int, seed: int) -> list[tuple[str, int]]:
    pairs = [(f"d{doc}q{question}", doc) for doc in range(docs) for question in range(questions)]
    random.Random(seed).shuffle(pairs)
    return pairs


async def lines_of(pairs: list[tuple[str, int]]) -> AsyncIterator[tuple[int, bytes]]:
    for number, (custom_id, doc) in enumerate(pairs, start=1):
        yield number, line(custom_id, doc)


@dataclass
class RecordingBackend:
    """Answers 200 (or what `script` says, per custom_id, first) and records what was sent, in order."""

    max_concurrency: int = 2
    name: str = "recording"
    script: dict[str, list[int]] = field(default_factory=dict)
    sent: list[str] = field(default_factory=list)

    def serves(self, model: str) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def attempt(self, endpoint: str, body: bytes) -> Attempt:
        content: str = json.loads(body)["messages"][1]["content"]
        custom_id = content.rsplit("<", 1)[1].rstrip(">")
        self.sent.append(custom_id)
        await asyncio.sleep(0)
        planned = self.script.get(custom_id)
        status = planned.pop(0) if planned else 200
        return Attempt(status, OK if status == 200 else b'{"error":{"message":"no"}}', "r")

    async def stream(self, endpoint: str, body: bytes) -> Attempt | StreamAnswer:
        return await self.attempt(endpoint, body)


def make_feed(batch_id: str, pairs: list[tuple[str, int]], rows: list[ResultRow], **extra: object) -> Feed:
    return Feed(
        batch_id=batch_id,
        project=str(extra.get("project", "p")),
        deadline=1000,
        endpoint="/v1/chat/completions",
        lines=lines_of(pairs),
        line_id=lambda number: f"{batch_id}-{number}",
        sink=rows.append,
    )


def doc_of(custom_id: str) -> str:
    return custom_id.split("q")[0]


def switches(custom_ids: list[str]) -> int:
    docs = [doc_of(custom_id) for custom_id in custom_ids]
    return sum(1 for before, after in itertools.pairwise(docs) if before != after)


def scheduler_for(backend: RecordingBackend, ordering: bool) -> BackendScheduler:
    prefix = PrefixOrdering(lookahead=4096) if ordering else None
    return BackendScheduler(backend, SystemClock(), retry=FAST_RETRY, prefix=prefix)


async def test_a_shuffled_batch_goes_out_grouped_and_each_line_once() -> None:
    backend = RecordingBackend(max_concurrency=3)
    scheduler = scheduler_for(backend, ordering=True)
    pairs, rows = workload(8, 10, seed=3), list[ResultRow]()
    assert await scheduler.run(make_feed("b1", pairs, rows))
    await scheduler.close()
    assert sorted(row.line_no for row in rows) == list(range(1, 81))
    assert Counter(backend.sent) == Counter(custom_id for custom_id, _ in pairs)
    assert switches([custom_id for custom_id, _ in pairs]) > 40
    assert switches(backend.sent) <= 8 + 2


async def test_off_keeps_the_input_order() -> None:
    backend = RecordingBackend(max_concurrency=1)
    scheduler = scheduler_for(backend, ordering=False)
    pairs, rows = workload(4, 5, seed=4), list[ResultRow]()
    assert await scheduler.run(make_feed("b1", pairs, rows))
    await scheduler.close()
    assert backend.sent == [custom_id for custom_id, _ in pairs]


async def test_retries_still_give_one_result_per_line() -> None:
    pairs = workload(5, 6, seed=5)
    script = {pairs[0][0]: [500, 500, 500], pairs[3][0]: [503], pairs[7][0]: [400]}
    backend = RecordingBackend(max_concurrency=2, script=script)
    scheduler = scheduler_for(backend, ordering=True)
    rows: list[ResultRow] = []
    assert await scheduler.run(make_feed("b1", pairs, rows))
    await scheduler.close()
    assert sorted(row.line_no for row in rows) == list(range(1, 31))
    kinds = {row.line_no: row.kind for row in rows}
    assert kinds[1] is ResultKind.FAILED  # three 500s: out of attempts
    assert kinds[4] is ResultKind.SUCCEEDED  # retried once
    assert kinds[8] is ResultKind.FAILED  # a 400 is final
    assert Counter(backend.sent)[pairs[0][0]] == 3


async def test_lines_finished_before_a_restart_are_not_sent_again() -> None:
    pairs = workload(6, 8, seed=6)
    finished = set(range(1, 49, 3))  # line numbers the store already has results for
    backend = RecordingBackend(max_concurrency=2)
    scheduler = scheduler_for(backend, ordering=True)
    rows: list[ResultRow] = []
    feed = make_feed("b1", pairs, rows)
    feed.skip = finished.__contains__
    assert await scheduler.run(feed)
    await scheduler.close()
    expected = [custom_id for number, (custom_id, _) in enumerate(pairs, 1) if number not in finished]
    assert Counter(backend.sent) == Counter(expected)
    assert sorted(row.line_no for row in rows) == sorted(set(range(1, 49)) - finished)
    assert switches(backend.sent) <= 6 + 2


async def test_feeds_of_one_project_are_grouped_across_each_other() -> None:
    """Two shards of one batch (same project and deadline), each with questions about the same documents:
    the backend sees each document's questions together, across both."""
    pairs = workload(5, 12, seed=8)
    backend = RecordingBackend(max_concurrency=2)
    scheduler = scheduler_for(backend, ordering=True)
    first_rows: list[ResultRow] = []
    second_rows: list[ResultRow] = []
    first, second = make_feed("b1", pairs[:30], first_rows), make_feed("b2", pairs[30:], second_rows)
    assert all(await asyncio.gather(scheduler.run(first), scheduler.run(second)))
    await scheduler.close()
    assert len(first_rows) == 30
    assert len(second_rows) == 30
    assert Counter(backend.sent) == Counter(custom_id for custom_id, _ in pairs)
    assert switches(backend.sent) <= 2 * 5 + 2  # at most one seam per document and feed
