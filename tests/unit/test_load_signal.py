"""Load signals read from model servers' /metrics text: each parser against a recorded exposition."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overnight.backends.load import LOAD_KINDS, LoadSample, detect_kind, parse_load, parse_samples
from overnight.config import ConfigError, load_settings

DATA = Path(__file__).parent.parent / "data" / "load"


def recorded(kind: str) -> str:
    return (DATA / f"{kind}.txt").read_text()


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("vllm", LoadSample(waiting=4, running=21, kv_cache_usage=0.4215)),
        ("sglang", LoadSample(waiting=5, running=28, kv_cache_usage=0.28)),
        ("llamacpp", LoadSample(waiting=1, running=1, kv_cache_usage=0.261719)),
    ],
)
def test_each_parser_reads_its_recording(kind: str, expected: LoadSample) -> None:
    assert parse_load(recorded(kind), kind) == expected
    assert parse_load(recorded(kind), "auto") == expected
    assert detect_kind(parse_samples(recorded(kind))) == kind


def test_a_parser_of_the_wrong_kind_finds_nothing() -> None:
    assert parse_load(recorded("vllm"), "sglang") == LoadSample()


def test_older_vllm_names_its_cache_gauge_differently() -> None:
    text = 'vllm:num_requests_waiting{model_name="m"} 2.0\nvllm:gpu_cache_usage_perc{model_name="m"} 0.5\n'
    assert parse_load(text) == LoadSample(waiting=2, running=None, kv_cache_usage=0.5)


def test_labels_with_escaped_quotes_braces_and_timestamps() -> None:
    text = (
        '# HELP vllm:num_requests_running Running, "quoted" {braces}\n'
        'vllm:num_requests_running{model_name="a \\"b\\" } c",x="\\\\"} 3 1712345678000\n'
        'vllm:num_requests_running{model_name="second"} 4.0\n'
    )
    assert parse_load(text).running == 7


def test_nan_and_infinite_values_count_as_unknown() -> None:
    text = "vllm:num_requests_waiting NaN\nvllm:num_requests_running +Inf\nvllm:kv_cache_usage_perc -Inf\n"
    assert parse_load(text) == LoadSample()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not prometheus at all",
        "<html><body>404 Not Found</body></html>",
        'vllm:num_requests_waiting{model_name="unterminated} 3\n',
        "vllm:num_requests_waiting three\n",
        "vllm:num_requests_waiting 3 4 5\n",
        "vllm:num_requests_waiting -2\n",
        "vllm:num_requests_waiting3\n",
        "vllm:kv_cache_usage_perc -0.5\n",
    ],
)
def test_malformed_input_gives_unknown_fields(text: str) -> None:
    assert parse_load(text, "vllm") == LoadSample()
    assert parse_load(text) == LoadSample()


def test_unknown_kind_gives_unknown_fields() -> None:
    assert parse_load(recorded("vllm"), "tgi") == LoadSample()


def test_kinds_offered() -> None:
    assert LOAD_KINDS == ("auto", "vllm", "sglang", "llamacpp")


@given(st.text(), st.sampled_from(LOAD_KINDS))
def test_arbitrary_text_never_raises(text: str, kind: str) -> None:
    sample = parse_load(text, kind)
    assert sample.kv_cache_usage is None or 0.0 <= sample.kv_cache_usage <= 1.0


@given(st.lists(st.sampled_from([*recorded("vllm").splitlines(), "{", "}", '"', "\\", " NaN"])))
def test_shuffled_recordings_never_raise(lines: list[str]) -> None:
    parse_load("\n".join(lines))


def backend_config(tmp_path: Path, extra: str) -> Path:
    config = tmp_path / "c.toml"
    config.write_text(f'[[backends]]\nname = "gpu"\nbase_url = "http://127.0.0.1:8001/v1"\n{extra}')
    return config


def test_load_metrics_settings_default_to_none_and_auto(tmp_path: Path) -> None:
    (backend,) = load_settings({"config": str(backend_config(tmp_path, ""))}, environ={}).backends
    assert (backend.load_metrics_url, backend.load_metrics_kind) == (None, "auto")


def test_load_metrics_settings_are_read(tmp_path: Path) -> None:
    extra = 'load_metrics_url = "http://127.0.0.1:8001/metrics"\nload_metrics_kind = "sglang"\n'
    (backend,) = load_settings({"config": str(backend_config(tmp_path, extra))}, environ={}).backends
    assert (backend.load_metrics_url, backend.load_metrics_kind) == (
        "http://127.0.0.1:8001/metrics",
        "sglang",
    )


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ('load_metrics_url = "ftp://host/metrics"\n', "backends[0].load_metrics_url"),
        ("load_metrics_url = 3\n", "backends[0].load_metrics_url"),
        ('load_metrics_kind = "tgi"\n', "backends[0].load_metrics_kind"),
        ("load_metrics_kind = 1\n", "backends[0].load_metrics_kind"),
    ],
)
def test_bad_load_metrics_settings_are_named(tmp_path: Path, extra: str, named: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"'{named}'")):
        load_settings({"config": str(backend_config(tmp_path, extra))}, environ={})
