"""Prefix-cache-aware ordering (issue 12): `prefix_ordering = true` against input order.

The upstream is `prefix_upstream.py`: SLOTS requests in parallel, an LRU prefix cache with room for
CACHE_DOCS documents, a request costing HIT_MS when its whole prompt is cached and up to MISS_MS when none
of it is (the uncached share of the prompt is processed). Measured in one run, each through a fresh
`overnight serve` (`max_concurrency` = SLOTS), with `prefix_ordering` off (input order) then on:

(a) DOCS documents x QUESTIONS questions (one system prompt, the document, then the question), shuffled:
    throughput on / off, goal >= 1.5;
(b) the same number of requests with no prefix in common (each its own document): on / off, goal >= 0.97,
    each way run three times (off, on, on, off, off, on) and the best run kept, as the difference is
    within the noise of a shared machine;
(c) memory on a 200 MB input (`prefix_memory.py`, a process of its own): four shards' feeds through one
    scheduler to an instant backend, peak RSS off and on, and the most any reorder buffer held against
    its bound (20 MB with `--quick`).

Throughput is lines / the batch's dispatch phase (the server log's in_progress -> finalizing).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from .client import run_batch
from .prefix_upstream import BLOCK_CHARS, PrefixUpstream
from .procs import REPO, Overnight
from .report import Section, rate, ratio
from .workload import custom_id

SLOTS = 8
HIT_MS, MISS_MS = 10.0, 60.0
DOCS, QUESTIONS = 20, 50
DOC_CHARS = 4000  # about 1,000 tokens
CACHE_DOCS = 4
SEED = 20261201
GOAL_SHARED, GOAL_UNIQUE = 1.5, 0.97
UNIQUE_ORDER = (False, True, True, False, False, True)  # (b): off / on, balanced in time
SYSTEM = "You are a careful analyst. Answer the question using only the document below. Be brief. " * 2
WORDS = ("market", "river", "engine", "signal", "harvest", "ledger", "orbit", "canvas", "lantern", "quartz")


def _document(number: int) -> str:
    rng = random.Random(SEED + number)
    text = f"Document {number}. "
    while len(text) < DOC_CHARS:
        text += " ".join(rng.choices(WORDS, k=12)) + ". "
    return text[:DOC_CHARS]


def _line(custom_id: str, document: str, question: str) -> str:
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"{document}\n\nQuestion: {question}"},
    ]
    body = {"model": "sim-chat", "messages": messages, "max_tokens": 16}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


def shared_workload(path: Path) -> int:
    """DOCS x QUESTIONS lines, shuffled: each document asked QUESTIONS questions."""
    pairs = [(doc, question) for doc in range(DOCS) for question in range(QUESTIONS)]
    random.Random(SEED).shuffle(pairs)
    documents = [_document(doc) for doc in range(DOCS)]
    lines = [
        _line(
            custom_id(index), documents[doc], f"what does item {question} say about {WORDS[question % 10]}?"
        )
        for index, (doc, question) in enumerate(pairs)
    ]
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def unique_workload(path: Path) -> int:
    """As many lines, each about its own document, its own words from the first character on."""
    count = DOCS * QUESTIONS
    lines = []
    for number in range(count):
        document = _document(10_000 + number)
        lines.append(_line(custom_id(number), f"{number:06d} {document}", "what is it about?"))
    # the system prompt is the same everywhere, as in real files: 'no shared prefix' beyond it
    path.write_text("\n".join(lines) + "\n")
    return count


def _cache_blocks() -> int:
    system = len(f"system:{SYSTEM}\n")
    user = len(f"user:{_document(0)}\n\nQuestion: what does item 10 say about market?\n")
    return CACHE_DOCS * ((system + user) // BLOCK_CHARS + 1)


async def _one(
    work: Path, name: str, upstream: PrefixUpstream, path: Path, lines: int, on: bool
) -> dict[str, Any]:
    server = Overnight(work, name, upstream.base_url, SLOTS)
    with server.config.open("a") as config:  # the [[backends]] table is the file's last
        config.write(f"prefix_ordering = {json.dumps(on)}\n")
    server.start()
    before = upstream.stats()
    try:
        run = await run_batch(server, path, lines, {"upstream": [upstream.process.pid]})
    finally:
        server.stop()
    after = upstream.stats()
    dispatch_s = run.phase_s("dispatch") or run.total_s
    looked = after["blocks_looked_up"] - before["blocks_looked_up"]
    found = after["blocks_found"] - before["blocks_found"]
    return {
        "ordering": on,
        "lines": lines,
        "dispatch_s": dispatch_s,
        "rps": lines / dispatch_s,
        "cache_hit_share": found / looked if looked else 0.0,
        "served": after["served"] - before["served"],
        "output_ok": run.check.ok,
        "cores": run.cores,
    }


def _memory(mb: int, on: bool) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.prefix_memory", "--mb", str(mb), *(["--ordering"] if on else [])]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=1800, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def run(work: Path, quick: bool) -> Section:
    section = Section("prefix", "Prefix-cache-aware ordering (issue 12): prefix_ordering on / off")
    shared_path, unique_path = work / "prefix-shared.jsonl", work / "prefix-unique.jsonl"
    shared_n, unique_n = shared_workload(shared_path), unique_workload(unique_path)
    with PrefixUpstream(SLOTS, _cache_blocks(), HIT_MS, MISS_MS) as upstream:
        off = await _one(work, "prefix-off", upstream, shared_path, shared_n, False)
        on = await _one(work, "prefix-on", upstream, shared_path, shared_n, True)
        unique = [
            await _one(work, f"unique-{index}", upstream, unique_path, unique_n, flag)
            for index, flag in enumerate(UNIQUE_ORDER)
        ]
    unique_off = max((u for u in unique if not u["ordering"]), key=lambda u: u["rps"])
    unique_on = max((u for u in unique if u["ordering"]), key=lambda u: u["rps"])
    shared_x, unique_x = on["rps"] / off["rps"], unique_on["rps"] / unique_off["rps"]
    mb = 20 if quick else 200
    memory_off, memory_on = _memory(mb, False), _memory(mb, True)
    section.data.update(
        {"shared_off": off, "shared_on": on, "unique_runs": unique, "shared_ratio": shared_x,
         "unique_ratio": unique_x, "memory_off": memory_off, "memory_on": memory_on}
    )  # fmt: skip
    section.add(
        f"(a) {DOCS} docs x {QUESTIONS} questions, shuffled: off / on",
        f"{rate(off['rps'])} / {rate(on['rps'])}",
    )
    section.add(
        "(a) prefix cache hits (share of prompt blocks): off / on",
        f"{off['cache_hit_share']:.2f} / {on['cache_hit_share']:.2f}",
    )
    section.add("(a) throughput on / off", ratio(shared_x), f">= {GOAL_SHARED}", shared_x >= GOAL_SHARED)
    section.add(
        f"(b) {unique_n} lines, no shared prefix: off / on (best of three each)",
        f"{rate(unique_off['rps'])} / {rate(unique_on['rps'])}",
    )
    section.add("(b) throughput on / off", ratio(unique_x), f">= {GOAL_UNIQUE}", unique_x >= GOAL_UNIQUE)
    section.add(
        f"(c) {memory_on['input_mb']:.0f} MB input, 4 shards: peak RSS off / on",
        f"{memory_off['peak_rss_mb']:.0f} MB / {memory_on['peak_rss_mb']:.0f} MB",
    )
    bound_mb = memory_on["bound_bytes"] / 1e6
    section.add(
        "(c) most one reorder buffer held / its bound",
        f"{memory_on['max_held_bytes'] / 1e6:.1f} MB / {bound_mb:.0f} MB, "
        f"{memory_on['max_held_requests']} / {memory_on['lookahead']} lines",
        "within the bound",
        memory_on["max_held_bytes"] <= memory_on["bound_bytes"] + memory_on["largest_entry"],
    )
    section.notes.append(
        f"upstream: {SLOTS} slots, FIFO queue, LRU prefix cache of {_cache_blocks()} blocks of {BLOCK_CHARS} "
        f"characters (room for {CACHE_DOCS} documents of {DOC_CHARS} characters), {HIT_MS:.0f} ms a request "
        f"whose prompt is all cached to {MISS_MS:.0f} ms for none; max_concurrency {SLOTS}; throughput = "
        "lines / the dispatch phase (server log)"
    )
    runs = ", ".join(f"{u['rps']:.0f}" for u in unique)
    section.notes.append(
        f"(a) dispatch {off['dispatch_s']:.2f} s off, {on['dispatch_s']:.2f} s on; "
        f"(b) runs off, on, on, off, off, on: {runs} req/s"
    )
    section.notes.append(
        f"(c) {memory_on['lines']} lines of ~{memory_on['line_bytes']} bytes, generated as they are read "
        f"(no file held), {memory_on['feeds']} feeds at once as a worker's 4 shards; "
        f"{memory_off['seconds']:.1f} s off, {memory_on['seconds']:.1f} s on"
    )
    return section
