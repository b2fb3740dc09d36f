"""API keys and projects: who may call, and what each project can see."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx2
import pytest
from openai import AuthenticationError, NotFoundError
from openai.types import Batch, FileObject

from acceptance.conftest import (
    chat_line,
    error_shape,
    make_client,
    read_lines,
    upload,
    wait_for,
    write_config,
)
from support.server import FakeUpstreamProcess, OvernightServer

KEYS = {"key-a": "alpha", "key-b": "beta"}


@pytest.fixture(scope="module")
def keyed(
    upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OvernightServer]:
    root = tmp_path_factory.mktemp("overnight-auth")
    config = write_config(root / "overnight.toml", upstream.base_url, api_keys=KEYS)
    srv = OvernightServer(root / "data", config)
    srv.start()
    yield srv
    srv.stop()


@dataclass(frozen=True)
class AlphaWork:
    input_file: FileObject
    private_file: FileObject
    batch: Batch


@pytest.fixture(scope="module")
def alpha_work(keyed: OvernightServer) -> AlphaWork:
    """What project alpha owns: an input file, a user_data file, and a finished batch with an output file."""
    alpha = make_client(keyed.base_url, "key-a")
    private_file = alpha.files.create(file=("private.txt", b"alpha only"), purpose="user_data")
    input_file = upload(alpha, [chat_line("a1"), chat_line("a2")])
    created = alpha.batches.create(
        input_file_id=input_file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = wait_for(alpha, created.id)
    assert batch.status == "completed"
    assert batch.output_file_id is not None
    return AlphaWork(input_file, private_file, batch)


def _root(server: OvernightServer) -> str:
    return server.base_url.removesuffix("/v1")


# -- who may call -------------------------------------------------------------------------------


def test_wrong_key_is_401(keyed: OvernightServer) -> None:
    wrong = make_client(keyed.base_url, "sk-wrong-key-0123456789")
    for call in (wrong.files.list, wrong.batches.list):
        with pytest.raises(AuthenticationError) as caught:
            call()
        assert caught.value.status_code == 401
        assert caught.value.code == "invalid_api_key"
        assert caught.value.request_id
        assert "sk-wrong-key-0123456789" not in caught.value.message  # the key is masked
    with pytest.raises(AuthenticationError):
        wrong.files.create(file=("x.jsonl", b"{}\n"), purpose="batch")


def test_a_project_name_is_not_a_key(keyed: OvernightServer) -> None:
    with pytest.raises(AuthenticationError):
        make_client(keyed.base_url, "alpha").files.list()


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": ""}, {"Authorization": "Bearer"}, {"Authorization": "Basic key-a"}],
    ids=["none", "empty", "bearer-without-token", "basic-scheme"],
)
def test_missing_key_is_401(keyed: OvernightServer, headers: dict[str, str]) -> None:
    with httpx2.Client(timeout=30) as http:
        for method, path in (("GET", "/files"), ("GET", "/batches"), ("POST", "/batches")):
            error = error_shape(http.request(method, keyed.base_url + path, headers=headers), 401)
            assert error["code"] == "missing_api_key"
            assert error["type"] == "invalid_request_error"


def test_health_needs_no_key(keyed: OvernightServer) -> None:
    with httpx2.Client(timeout=30) as http:
        answer = http.get(f"{_root(keyed)}/health")
    assert answer.status_code == 200


def test_each_key_works_for_its_own_project(keyed: OvernightServer, alpha_work: AlphaWork) -> None:
    alpha = make_client(keyed.base_url, "key-a")
    assert alpha.files.retrieve(alpha_work.input_file.id).id == alpha_work.input_file.id
    assert alpha.batches.retrieve(alpha_work.batch.id).status == "completed"
    assert sorted(line["custom_id"] for line in read_lines(alpha, alpha_work.batch.output_file_id)) == [
        "a1",
        "a2",
    ]
    beta = make_client(keyed.base_url, "key-b")
    assert beta.files.create(file=("b.jsonl", b"{}\n"), purpose="batch").id


# -- what each project can see ------------------------------------------------------------------


def test_other_projects_files_are_invisible(keyed: OvernightServer, alpha_work: AlphaWork) -> None:
    beta = make_client(keyed.base_url, "key-b")
    output_id = alpha_work.batch.output_file_id
    assert output_id is not None
    alpha_files = [alpha_work.input_file.id, alpha_work.private_file.id, output_id]
    calls: list[Callable[[str], object]] = [beta.files.retrieve, beta.files.content, beta.files.delete]
    for file_id in alpha_files:
        for call in calls:
            with pytest.raises(NotFoundError) as caught:
                call(file_id)
            # Exactly what an id that never existed gets: nothing tells beta the file is there.
            body = caught.value.body
            assert isinstance(body, dict)
            assert body["message"] == f"No such File object: {file_id}"
    listed = {f.id for f in beta.files.list()}
    listed |= {
        f.id for purpose in ("batch", "batch_output", "user_data") for f in beta.files.list(purpose=purpose)
    }
    assert not listed & set(alpha_files)

    alpha = make_client(keyed.base_url, "key-a")
    for file_id in alpha_files:  # beta's deletes did nothing
        assert alpha.files.retrieve(file_id).id == file_id
    assert set(alpha_files) <= {f.id for f in alpha.files.list()}


def test_other_projects_batches_are_invisible(keyed: OvernightServer, alpha_work: AlphaWork) -> None:
    beta = make_client(keyed.base_url, "key-b")
    batch_id = alpha_work.batch.id
    with pytest.raises(NotFoundError):
        beta.batches.retrieve(batch_id)
    with pytest.raises(NotFoundError):
        beta.batches.cancel(batch_id)
    assert batch_id not in {b.id for b in beta.batches.list()}
    alpha = make_client(keyed.base_url, "key-a")
    assert batch_id in {b.id for b in alpha.batches.list()}
    assert alpha.batches.retrieve(batch_id).status == "completed"


def test_cancel_of_another_projects_running_batch_is_404(keyed: OvernightServer) -> None:
    alpha = make_client(keyed.base_url, "key-a")
    beta = make_client(keyed.base_url, "key-b")
    file = upload(alpha, [chat_line(f"slow-{i}", fake={"delay_ms": 200}) for i in range(3)])
    batch = alpha.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    with pytest.raises(NotFoundError):
        beta.batches.cancel(batch.id)
    done = wait_for(alpha, batch.id)
    assert done.status == "completed"  # beta's cancel did not reach it
    assert done.cancelling_at is None


def test_batch_from_another_projects_file_is_404(keyed: OvernightServer, alpha_work: AlphaWork) -> None:
    beta = make_client(keyed.base_url, "key-b")
    before = {b.id for b in beta.batches.list()}
    with pytest.raises(NotFoundError) as caught:
        beta.batches.create(
            input_file_id=alpha_work.input_file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert alpha_work.input_file.id in caught.value.message
    assert {b.id for b in beta.batches.list()} == before


# -- a server without keys -----------------------------------------------------------------------


def test_server_without_keys_accepts_any_bearer_token(server: OvernightServer) -> None:
    first = make_client(server.base_url, "anything")
    second = make_client(server.base_url, "something-else-entirely")
    file = first.files.create(file=("open.jsonl", b"{}\n"), purpose="batch")
    # With no keys everyone shares one project.
    assert second.files.retrieve(file.id).id == file.id
    assert file.id in {f.id for f in second.files.list(purpose="batch")}
    with httpx2.Client(timeout=30) as http:
        no_header = http.get(f"{server.base_url}/files/{file.id}")
    assert no_header.status_code == 200
    assert no_header.json()["id"] == file.id
