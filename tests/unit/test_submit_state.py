"""`overnight submit`'s state file."""

from __future__ import annotations

from pathlib import Path

import pytest

from overnight.client import state as job_state
from overnight.client.state import InputFingerprint, JobState, PartState, StateError


def _state() -> JobState:
    return JobState(
        job_id=job_state.new_job_id(),
        created_at=1_700_000_000.5,
        base_url="http://127.0.0.1:8000/v1",
        input=InputFingerprint(path="/data/in.jsonl", size=10, mtime_ns=1, sha256="ab"),
        total_lines=3,
        completion_window="24h",
        max_lines=2,
        max_bytes=100,
        max_embedding_inputs=5,
        parts=[
            PartState(name="r0-p0001", round=0, endpoint="/v1/embeddings", model="m", lines=2, bytes=60),
            PartState(name="r0-p0002", round=0, endpoint="/v1/embeddings", model="m", lines=1, bytes=30),
            PartState(name="r1-p0001", round=1, endpoint="/v1/embeddings", model="m", lines=1, bytes=30),
        ],
    )


def test_a_state_survives_saving_and_loading(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl.overnight-state.json"
    state = _state()
    state.parts[0].batch_id = "batch_1"
    state.parts[0].create_sent = True

    job_state.save(path, state)

    assert job_state.load(path) == state
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_no_state_yet(tmp_path: Path) -> None:
    assert job_state.load(tmp_path / "absent.json") is None


def test_a_damaged_or_foreign_state_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"version": 1, "job_id": ')
    with pytest.raises(StateError, match="not a state file"):
        job_state.load(path)
    job_state.save(path, _state())
    path.write_text(path.read_text().replace('"version": 1', '"version": 99'))
    with pytest.raises(StateError, match="another version"):
        job_state.load(path)


def test_rounds_and_parts() -> None:
    state = _state()
    assert state.last_round == 1
    assert [p.name for p in state.round_parts(0)] == ["r0-p0001", "r0-p0002"]
    assert state.part("r1-p0001").round == 1
    with pytest.raises(KeyError):
        state.part("r9-p0001")


def test_idempotency_keys_are_stable_and_tell_requests_apart() -> None:
    state = _state()
    first, second = state.parts[0], state.parts[1]
    assert first.idempotency_key(state.job_id, "file") == first.idempotency_key(state.job_id, "file")
    keys = {
        part.idempotency_key(job, what)
        for part in (first, second)
        for job in (state.job_id, "other")
        for what in ("file", "batch")
    }
    assert len(keys) == 8
