"""`traffic = "background"` settings, vLLM's `priority` on batch lines and the background metrics."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overnight.config import ConfigError, load_settings
from overnight.domain.clock import SystemClock
from overnight.domain.models import ResultRow
from overnight.engine.background_traffic import BackgroundTraffic, TrafficSettings, with_priority
from overnight.engine.metrics import EngineMetrics
from overnight.engine.neighbour import FeedNeed, LoadReading
from overnight.engine.online import Lane
from overnight.engine.retry import RetryPolicy
from overnight.engine.scheduler import BackendScheduler
from overnight.wiring import build_load_signals, engine_settings
from unit.test_scheduler import ScriptedBackend, make_feed, until

BACKEND = '[[backends]]\nname = "vllm"\nbase_url = "http://127.0.0.1:8001/v1"\n'


def settings_from(tmp_path: Path, extra: str) -> Any:
    config = tmp_path / "c.toml"
    config.write_text(BACKEND + extra)
    return load_settings({"config": str(config)}, environ={})


def test_a_backend_is_dedicated_by_default(tmp_path: Path) -> None:
    (backend,) = settings_from(tmp_path, "").backends
    assert (backend.traffic, backend.target_queue_delay_ms, backend.priority) == ("dedicated", 20.0, None)


def test_the_occupancy_headroom_is_read_and_reaches_the_window(tmp_path: Path) -> None:
    (backend,) = settings_from(tmp_path, 'traffic = "background"\noccupancy_headroom = -2\n').backends
    assert backend.occupancy_headroom == -2
    traffic = engine_settings(settings_from(tmp_path, "occupancy_headroom = 1\n")).traffic["vllm"]
    assert traffic.occupancy_headroom == 1
    window = BackgroundTraffic("vllm", TrafficSettings(True, 0.02, None, -2), 64, EngineMetrics()).window
    assert window.settings.headroom == -2


def test_background_settings_are_read(tmp_path: Path) -> None:
    extra = 'traffic = "background"\ntarget_queue_delay_ms = 5\npriority = 10\n'
    (backend,) = settings_from(tmp_path, extra).backends
    assert (backend.traffic, backend.target_queue_delay_ms, backend.priority) == ("background", 5.0, 10)


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ('traffic = "polite"\n', "backends[0].traffic"),
        ("target_queue_delay_ms = 0\n", "backends[0].target_queue_delay_ms"),
        ('target_queue_delay_ms = "soon"\n', "backends[0].target_queue_delay_ms"),
        ("target_queue_delay_ms = 600000\n", "backends[0].target_queue_delay_ms"),
        ('priority = "low"\n', "backends[0].priority"),
        ("priority = 1.5\n", "backends[0].priority"),
        ("priority = true\n", "backends[0].priority"),
        ("priority = 99999999999\n", "backends[0].priority"),
        ("load_metrics_interval_s = 0\n", "backends[0].load_metrics_interval_s"),
        ("load_metrics_interval_s = 0.001\n", "backends[0].load_metrics_interval_s"),
        ('load_metrics_interval_s = "fast"\n', "backends[0].load_metrics_interval_s"),
        ("occupancy_headroom = 1.5\n", "backends[0].occupancy_headroom"),
        ("occupancy_headroom = 5000\n", "backends[0].occupancy_headroom"),
        ("occupancy_headroom = true\n", "backends[0].occupancy_headroom"),
    ],
)
def test_a_bad_setting_is_named_in_one_line(tmp_path: Path, extra: str, named: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"'{named}'")) as raised:
        settings_from(tmp_path, extra)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("extra", "interval_s"),
    [
        ("", 1.0),  # a dedicated backend's load only feeds its gauges
        ('traffic = "background"\n', 0.25),  # a background window follows each reading
        ('traffic = "background"\nload_metrics_interval_s = 0.05\n', 0.05),
        ("load_metrics_interval_s = 2\n", 2.0),
    ],
)
def test_the_load_is_read_as_often_as_its_window_needs(tmp_path: Path, extra: str, interval_s: float) -> None:
    metrics_url = 'load_metrics_url = "http://127.0.0.1:8001/metrics"\n'
    (poller,) = build_load_signals(settings_from(tmp_path, metrics_url + extra)).pollers
    assert poller.interval_s == interval_s


def test_priority_is_added_to_a_body_without_one() -> None:
    body = b'{"model": "m", "messages": []}'
    sent = with_priority(body, 10)
    assert json.loads(sent) == {"priority": 10, "model": "m", "messages": []}
    assert json.loads(with_priority(b"{}", -3)) == {"priority": -3}


def test_a_line_keeps_its_own_priority_only_when_it_is_later() -> None:
    assert json.loads(with_priority(b'{"model":"m","priority":20}', 10))["priority"] == 20
    assert json.loads(with_priority(b'{"model":"m","priority":-5}', 10))["priority"] == 10
    assert json.loads(with_priority(b'{"model":"m","priority":"high"}', 10))["priority"] == 10


def test_the_word_priority_in_a_message_is_not_taken_for_the_field() -> None:
    body = json.dumps({"messages": [{"role": "user", "content": 'what does "priority" mean?'}]}).encode()
    sent = json.loads(with_priority(body, 7))
    assert sent["priority"] == 7
    assert sent["messages"] == json.loads(body)["messages"]


@given(
    st.dictionaries(
        st.text(max_size=8),
        st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8), lambda c: st.lists(c)),
        max_size=5,
    ),
    st.integers(-1000, 1000),
)
def test_priority_leaves_every_other_field_as_it_was(body: dict[str, Any], priority: int) -> None:
    sent = json.loads(with_priority(json.dumps(body).encode(), priority))
    own = body.get("priority")
    kept = isinstance(own, int) and not isinstance(own, bool) and own >= priority
    assert sent["priority"] == (own if kept else priority)
    assert {k: v for k, v in sent.items() if k != "priority"} == {
        k: v for k, v in body.items() if k != "priority"
    }


def test_the_metrics_show_the_window_and_the_signal_and_count_overrides(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = EngineMetrics()
    assert "overnight_background" not in metrics.render()  # no background backend: nothing new
    readings = [LoadReading(1, 1)]  # one waits at the server: the window holds
    traffic = BackgroundTraffic("vllm", TrafficSettings(True, 0.02), 64, metrics, lambda: readings[0])
    traffic.answered(b'{"max_tokens": 5}', 200, 0.5, 100.0, in_flight=0)
    traffic.answered(b'{"max_tokens": 5}', 500, 9.0, 101.0, in_flight=0)  # a failure says nothing of load
    text = metrics.render()
    assert 'overnight_background_window{backend="vllm"} 1' in text
    assert 'overnight_background_base_latency_seconds{backend="vllm"} 0.5' in text
    assert 'overnight_background_signal{backend="vllm",signal="load"} 1' in text
    need = FeedNeed("batch_urgent", 200.0, 10_000)  # 10,000 lines of 0.5 s in 100 s: needs 63 at once
    with caplog.at_level("INFO", logger="overnight.engine"):
        traffic.check_deadlines(lambda: [need], 100.0)
        traffic.check_deadlines(lambda: [need], 100.5)  # looked at once a second, said once
        traffic.check_deadlines(lambda: [need], 102.0)
        assert traffic.limit >= 63  # 64 a little later, with less time left
        traffic.check_deadlines(list, 104.0)
    assert traffic.limit == 1
    text = metrics.render()
    assert 'overnight_background_deadline_overrides_total{backend="vllm"} 1' in text
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    infos = [r for r in caplog.records if r.levelname == "INFO"]
    assert len(warnings) == 1
    assert "batch_urgent" in warnings[0].getMessage()
    assert "63" in warnings[0].getMessage()
    assert len(infos) == 1
    assert "batch_urgent" in infos[0].getMessage()


async def test_online_tickets_are_not_held_back_by_the_background_window() -> None:
    gate = asyncio.Event()
    backend = ScriptedBackend(max_concurrency=8, gate=gate)
    scheduler = BackendScheduler(
        backend, SystemClock(), retry=RetryPolicy(max_attempts=2), traffic=TrafficSettings(True, 0.02)
    )
    rows: list[ResultRow] = []
    run = asyncio.create_task(scheduler.run(make_feed("batch_1", ["a", "b", "c"], rows)))
    await until(lambda: backend.in_flight == 1)
    for _ in range(100):
        await asyncio.sleep(0)
    assert backend.in_flight == 1  # a fresh background window: one batch line at a time
    ticket = await asyncio.wait_for(scheduler.admit(Lane.ONLINE, 10), 30)  # granted all the same
    assert scheduler.in_flight == 2
    scheduler.release(ticket)
    gate.set()
    assert await run
    await scheduler.close()
    assert sorted(row.line_no for row in rows) == [1, 2, 3]


def test_the_settings_reach_the_engine_per_backend(tmp_path: Path) -> None:
    extra = 'traffic = "background"\ntarget_queue_delay_ms = 5\npriority = 3\n'
    extra += '[[backends]]\nname = "other"\nbase_url = "http://127.0.0.1:8002/v1"\n'
    traffic = engine_settings(settings_from(tmp_path, extra)).traffic
    assert traffic["vllm"] == TrafficSettings(background=True, target_queue_delay_s=0.005, priority=3)
    assert traffic["other"] == TrafficSettings(background=False, target_queue_delay_s=0.02, priority=None)
