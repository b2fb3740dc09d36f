"""The batch lifecycle: no sequence of events leaves the allowed graph, and stamps follow statuses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overnight.domain.lifecycle import ALLOWED, CANCELLABLE, STAMP, TERMINAL, IllegalTransition, transition
from overnight.domain.models import Batch, BatchStatus

S = BatchStatus


def new_batch() -> Batch:
    return Batch(
        id="batch_1",
        project="p",
        endpoint="/v1/chat/completions",
        input_file_id="file-1",
        completion_window="24h",
        status=S.VALIDATING,
        created_at=100,
        expires_at=100 + 86400,
    )


def test_terminal_and_cancellable_sets() -> None:
    assert {S.FAILED, S.COMPLETED, S.EXPIRED, S.CANCELLED} == TERMINAL
    assert {S.VALIDATING, S.IN_PROGRESS, S.FINALIZING} == CANCELLABLE


def test_happy_path_stamps_every_step() -> None:
    batch = new_batch()
    for now, status in enumerate((S.IN_PROGRESS, S.FINALIZING, S.COMPLETED), start=101):
        batch = transition(batch, status, now)
        assert batch.status is status
        assert getattr(batch, STAMP[status]) == now
    assert (batch.in_progress_at, batch.finalizing_at, batch.completed_at) == (101, 102, 103)


def test_terminal_statuses_accept_nothing() -> None:
    for status in TERMINAL:
        assert not ALLOWED[status]


def test_illegal_move_raises_and_names_both_statuses() -> None:
    with pytest.raises(IllegalTransition, match="completed"):
        transition(new_batch(), S.COMPLETED, 101)


@given(st.lists(st.sampled_from(list(S)), max_size=20), st.integers(min_value=0, max_value=10**9))
def test_any_event_sequence_stays_in_the_graph(targets: list[BatchStatus], start: int) -> None:
    batch = new_batch()
    now = start
    for target in targets:
        now += 1
        before = batch.status
        if target in ALLOWED[before]:
            batch = transition(batch, target, now)
            assert batch.status is target
            assert getattr(batch, STAMP[target]) == now
        else:
            with pytest.raises(IllegalTransition):
                transition(batch, target, now)
            assert batch.status is before
    stamped = [status for status, name in STAMP.items() if getattr(batch, name) is not None]
    # every stamped status was visited, and the current one is always stamped (unless still validating)
    assert batch.status is S.VALIDATING or batch.status in stamped
