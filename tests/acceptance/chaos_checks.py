"""What must hold after a batch ran against the chaos upstream (tests/support/chaos_upstream.py), on one
server (test_chaos.py) and on a cluster (test_chaos_cluster.py).

The retry bound asserted per line, from engine/retry.py: every attempt that got an HTTP answer is
charged, and a line is given up once `max_attempts` are charged, so at most `max_attempts` of its
requests got an answer. An attempt with no answer (a stall, a reset, a truncated body) is charged
only while the breaker is closed; so the upstream saw at most `max_attempts` + (its unanswered
requests) requests of the line, and a line in the error file was charged all `max_attempts`.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from openai import OpenAI

from support.chaos_upstream import NO_ANSWER, SAYS, SUCCESSES, ChaosUpstream, Fault, marker

SEED = int(os.environ.get("OVERNIGHT_CHAOS_SEED", "20261201"))
MAX_ATTEMPTS = 4
REQUEST_TIMEOUT_S = 2.0  # 20 times a trickled body: a slow machine does not turn one into a timeout
RSS_GROWTH_LIMIT_MB = 150.0


def chaos_settings(**extra: Any) -> dict[str, Any]:
    """Engine settings for a chaos run: a short request timeout and small retry delays."""
    return {
        "request_timeout_s": REQUEST_TIMEOUT_S,
        "max_attempts": MAX_ATTEMPTS,
        "retry_base_delay_s": 0.01,
        "retry_max_delay_s": 0.05,
        **extra,
    }


def chaos_lines(count: int, prefix: str) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{prefix}-{index:05d}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "fake-chat",
                "messages": [{"role": "user", "content": f"Say hi. {marker(f'{prefix}-{index:05d}')}"}],
            },
        }
        for index in range(count)
    ]


def rss_mb(pid: int) -> float:
    """The resident memory of process `pid`, in MB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@dataclass
class Watch:
    """Probes the API and samples memory in a thread while a batch runs."""

    client: OpenAI
    health_urls: list[str]
    pids: list[int]
    batch_id: str = ""
    probes: int = 0
    failures: list[str] = field(default_factory=list)
    rss: dict[int, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        for pid in self.pids:
            self.rss[pid].append(rss_mb(pid))

    def probe(self) -> None:
        try:
            for url in self.health_urls:
                with urllib.request.urlopen(url, timeout=10) as answer:
                    if answer.status != 200:
                        self.failures.append(f"{url} answered {answer.status}")
            self.client.batches.list(limit=5)
            if self.batch_id:
                self.client.batches.retrieve(self.batch_id)
            self.probes += 1
        except Exception as exc:  # every failure is a finding, reported by the test
            self.failures.append(repr(exc))

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            self.sample()
            self.probe()

    def __enter__(self) -> Watch:
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="chaos watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
        self.sample()
        self.probe()

    def growth_mb(self) -> dict[int, tuple[float, float, float, float]]:
        """Per process: RSS at the start, highest, at the end, and growth from start to highest (MB)."""
        return {pid: (s[0], max(s), s[-1], max(s) - s[0]) for pid, s in self.rss.items()}


@dataclass
class Tally:
    lines: int = 0
    succeeded: int = 0
    failed: int = 0
    requests: int = 0
    huge: int = 0  # huge answers found whole in the output file
    uncharged_at_most: int = 0  # requests beyond max_attempts per line (only unanswered ones may be)
    last_faults_in_errors: dict[str, int] = field(default_factory=dict)


def read_results(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    text = client.files.content(file_id).content.decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def check_results(
    chaos: ChaosUpstream, names: list[str], output: list[dict[str, Any]], errors: list[dict[str, Any]]
) -> Tally:
    """Assert every rule of the module docstring and return the counts."""
    seen = collections.Counter(line["custom_id"] for line in (*output, *errors))
    duplicated = [name for name, count in seen.items() if count > 1]
    assert not duplicated, f"{len(duplicated)} lines in the results more than once: {duplicated[:5]}"
    assert set(seen) == set(names), (set(names) - set(seen), set(seen) - set(names))
    tally = Tally(lines=len(names), succeeded=len(output), failed=len(errors))
    for line in output:
        faults = chaos.faults_by_line[line["custom_id"]]
        _check_bound(line["custom_id"], faults)
        assert line["response"]["status_code"] == 200, line
        assert faults[-1] in SUCCESSES, (line["custom_id"], faults)
        if faults[-1] is Fault.HUGE:  # kept whole, byte for byte
            content = line["response"]["body"]["choices"][0]["message"]["content"]
            assert len(content) >= 0.99 * min(chaos.huge_sizes), len(content)
            tally.huge += 1
    last_faults: collections.Counter[str] = collections.Counter()
    for line in errors:
        faults = chaos.faults_by_line[line["custom_id"]]
        _check_bound(line["custom_id"], faults)
        _check_error_words(line, faults)
        last_faults[faults[-1].value] += 1
    tally.requests = sum(chaos.requests_by_line[name] for name in names)
    tally.uncharged_at_most = sum(max(0, chaos.requests_by_line[name] - MAX_ATTEMPTS) for name in names)
    tally.last_faults_in_errors = dict(last_faults)
    return tally


def _check_bound(name: str, faults: list[Fault]) -> None:
    assert faults, f"{name} never reached the upstream"
    answered = [fault for fault in faults if fault not in NO_ANSWER]
    assert len(answered) <= MAX_ATTEMPTS, (name, faults)
    assert all(fault not in SUCCESSES for fault in faults[:-1]), (name, faults)  # no retry after a success


def _check_error_words(line: dict[str, Any], faults: list[Fault]) -> None:
    last = faults[-1]
    assert last not in SUCCESSES, (line, faults)
    assert len(faults) >= MAX_ATTEMPTS, ("given up early", line["custom_id"], faults)
    status, words = SAYS[last]
    assert line["error"] is None, line
    response = line["response"]
    message = response["body"]["error"]["message"]
    assert isinstance(message, str), line
    assert message.strip(), line
    assert response["status_code"] == status, (last, line)
    missing = [word for word in words if word not in message.lower()]
    assert not missing, f"the error for {last.value!r} does not say {missing}: {message!r}"
    assert "Traceback" not in message, message
    assert "<class" not in message, message


def wait_done(
    client: OpenAI, batch_id: str, timeout_s: float, on_poll: Callable[[], None] | None = None
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in {"completed", "failed", "expired", "cancelled"}:
            return batch
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch_id} still {batch.status} after {timeout_s} s")
        if on_poll is not None:
            on_poll()
        time.sleep(0.2)


def report(title: str, chaos: ChaosUpstream, tally: Tally, watch: Watch, seconds: float) -> Iterator[str]:
    yield f"{title}: {tally.lines} lines checked in {seconds:.1f} s (seed {chaos.seed})"
    yield f"  succeeded {tally.succeeded}, failed {tally.failed}, upstream requests {tally.requests}"
    yield f"  huge answers whole in the output: {tally.huge}"
    yield f"  requests beyond max_attempts (unanswered, uncharged): {tally.uncharged_at_most}"
    yield f"  faults injected: {chaos.injected()}"
    yield f"  last fault of the failed lines: {tally.last_faults_in_errors}"
    yield f"  API probes during the run: {watch.probes}, failures: {len(watch.failures)}"
    for pid, (start, peak, end, growth) in watch.growth_mb().items():
        yield f"  RSS pid {pid}: start {start:.0f} MB, peak {peak:.0f}, end {end:.0f}, growth {growth:.0f} MB"
