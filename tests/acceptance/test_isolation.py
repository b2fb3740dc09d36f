"""Every route of the app, called with project beta's key on project alpha's objects, on SQLite and on
PostgreSQL: each answer about one of alpha's objects is a 404 that reads exactly like the answer for an
id that never existed, and no answer carries any of alpha's data. An admin key sees alpha's objects on the
dashboard and in the costs here; on the rest of /v1 in test_admin_scope.py.

CASES has one entry per route; `test_every_route_has_a_case` lists the routes of the app that
`overnight serve` runs, so a new route without a case fails."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from acceptance.conftest import chat_line, make_client, upload, wait_for, write_config
from acceptance.projects import projects_server
from overnight.config import load_secrets, load_settings
from overnight.server import api_app
from overnight.wiring import open_runtime
from support.server import FakeUpstreamProcess, OvernightServer

ALPHA_KEY = "sk-config-alpha-0123456789"  # alpha's key comes from the config file, beta's from the store
SECRET_TEXT = b"alpha-private-content-7f3a"
SECRET_NAME = "alpha-private-name.txt"
PLACEHOLDER = "<ID>"
Route = tuple[str, str]  # method, canonical path


@dataclass(frozen=True)
class World:
    root: str
    beta: str  # beta's key
    admin: str  # an admin's key (project ops)
    files: tuple[str, ...]  # alpha's: user_data, batch input, output, error
    batch_id: str
    request_id: str  # one of the batch's requests (batch_req_...)
    response_id: str  # alpha's background response
    day: int  # the UTC day alpha's batch was made

    @property
    def alpha_ids(self) -> tuple[str, ...]:
        return (*self.files, self.batch_id, self.response_id)

    def markers(self) -> tuple[str, ...]:
        """What none of beta's answers may hold."""
        return (*self.alpha_ids, SECRET_TEXT.decode(), SECRET_NAME, "alpha-line", "alpha")


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def world(
    request: pytest.FixtureRequest, upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    root = tmp_path_factory.mktemp(f"isolation-{request.param}")
    with projects_server(root, upstream.base_url, request.param, ALPHA_KEY) as running:
        yield _alpha_work(running.server, running.beta_key, running.admin_key)


def _alpha_work(server: OvernightServer, beta: str, admin: str) -> World:
    alpha = make_client(server.base_url, ALPHA_KEY)
    private = alpha.files.create(file=(SECRET_NAME, SECRET_TEXT), purpose="user_data")
    lines = [chat_line("alpha-line-1"), chat_line("alpha-line-2", fake={"status": 400})]
    source = upload(alpha, lines, name="alpha-input.jsonl")
    created = alpha.batches.create(
        input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = wait_for(alpha, created.id)
    assert batch.output_file_id is not None
    assert batch.error_file_id is not None
    output = [json.loads(line) for line in alpha.files.content(batch.output_file_id).text.splitlines()]
    response = alpha.responses.create(model="fake-chat", input="alpha-line-3", background=True)
    return World(
        root=server.base_url.removesuffix("/v1"),
        beta=beta,
        admin=admin,
        files=(private.id, source.id, batch.output_file_id, batch.error_file_id),
        batch_id=batch.id,
        request_id=output[0]["id"],
        response_id=response.id,
        day=batch.created_at - batch.created_at % 86400,
    )


# -- asking ----------------------------------------------------------------------------------------


def _http(world: World, key: str, *, api: bool) -> httpx2.Client:
    """An HTTP client with `key`: as a bearer token for /v1, as the sign-in cookie for the dashboard."""
    if api:
        return httpx2.Client(base_url=world.root, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    return httpx2.Client(
        base_url=world.root, headers={"Origin": world.root}, cookies={"overnight_key": key}, timeout=60
    )


def unknown_like(object_id: str) -> str:
    """An id of the same shape that no object has."""
    tail = "0badc0de" if not object_id.endswith("0badc0de") else "0defaced"
    return object_id[: -len(tail)] + tail


def _scrubbed(text: str, object_id: str) -> str:
    return text.replace(object_id, PLACEHOLDER)


def assert_clean(world: World, text: str, where: str) -> None:
    leaked = [marker for marker in world.markers() if marker in text]
    assert not leaked, f"{where}: beta's answer holds alpha's {leaked}: {text[:500]}"


def assert_hidden(world: World, method: str, path: str, object_id: str, *, api: bool, **send: object) -> None:
    """Beta asking about alpha's `object_id` gets a 404 exactly like one for an id that never was."""
    with _http(world, world.beta, api=api) as http:
        theirs = http.request(method, path.format(id=object_id), **send)  # type: ignore[arg-type]
        nobodys_id = unknown_like(object_id)
        nobodys = http.request(method, path.format(id=nobodys_id), **send)  # type: ignore[arg-type]
    where = f"{method} {path.format(id=object_id)}"
    assert theirs.status_code == 404, f"{where}: {theirs.status_code} {theirs.text[:300]}"
    assert nobodys.status_code == 404, f"{where} (unknown id): {nobodys.status_code}"
    assert _scrubbed(theirs.text, object_id) == _scrubbed(nobodys.text, nobodys_id), where
    assert_clean(world, _scrubbed(theirs.text, object_id), where)


def assert_answer_clean(world: World, method: str, path: str, *, api: bool = True, **send: object) -> int:
    """Beta's answer on a route that is not about one object: none of alpha's data; its status."""
    with _http(world, world.beta, api=api) as http:
        answer = http.request(method, path, **send)  # type: ignore[arg-type]
    assert answer.status_code not in (403, 500), f"{method} {path}: {answer.status_code}"
    assert_clean(world, answer.text, f"{method} {path}")
    return answer.status_code


# -- one case per route ------------------------------------------------------------------------------


def _each_file(method: str, path: str, *, api: bool = True) -> Callable[[World], None]:
    def case(world: World) -> None:
        for file_id in world.files:
            assert_hidden(world, method, path, file_id, api=api)

    return case


def _file_content(world: World) -> None:
    for file_id in world.files:
        assert_hidden(world, "GET", "/v1/files/{id}/content", file_id, api=True)
        assert_hidden(world, "GET", "/v1/files/{id}/content?limit=1&offset=0", file_id, api=True)


def _the_batch(method: str, path: str, *, api: bool = True, **send: object) -> Callable[[World], None]:
    return lambda world: assert_hidden(world, method, path, world.batch_id, api=api, **send)


def _the_response(method: str, path: str) -> Callable[[World], None]:
    return lambda world: assert_hidden(world, method, path, world.response_id, api=True)


def _clean(method: str, path: str, *, api: bool = True, **send: object) -> Callable[[World], None]:
    return lambda world: _ignore(assert_answer_clean(world, method, path, api=api, **send))


def _ignore(_: object) -> None:
    return None


def _list_files(world: World) -> None:
    for purpose in ("", "?purpose=batch", "?purpose=batch_output", "?purpose=user_data"):
        assert assert_answer_clean(world, "GET", f"/v1/files{purpose}") == 200


def _upload(world: World) -> None:
    files = {"file": ("beta.jsonl", b"{}\n")}
    assert assert_answer_clean(world, "POST", "/v1/files", files=files, data={"purpose": "batch"}) == 200


def _create_batch(world: World) -> None:
    """A batch of alpha's input file: 404 as for a file that never was, and no batch made."""
    body = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}
    with _http(world, world.beta, api=True) as http:
        for file_id in world.files[:2]:
            theirs = http.post("/v1/batches", json={**body, "input_file_id": file_id})
            nobodys = http.post("/v1/batches", json={**body, "input_file_id": unknown_like(file_id)})
            assert theirs.status_code == nobodys.status_code == 404
            assert _scrubbed(theirs.text, file_id) == _scrubbed(nobodys.text, unknown_like(file_id))
            assert_clean(world, _scrubbed(theirs.text, file_id), "POST /v1/batches")
        assert http.get("/v1/batches").json()["data"] == []


def _retry_requests(world: World) -> None:
    body = {"request_ids": [world.request_id]}
    assert_hidden(world, "POST", "/v1/batches/{id}/retry-requests", world.batch_id, api=True, json=body)


def _costs(world: World) -> None:
    path = f"/v1/organization/costs?start_time={world.day}&group_by=project_id&limit=2"
    with _http(world, world.beta, api=True) as http:
        mine = http.get(path)
    with _http(world, world.admin, api=True) as http:
        everyone = http.get(path)
    assert mine.status_code == everyone.status_code == 200
    assert_clean(world, mine.text, "costs")
    projects = {r["project_id"] for b in everyone.json()["data"] for r in b["results"]}
    assert "alpha" in projects  # the admin sees alpha's figures, beta none of them


def _dashboard_list(path: str) -> Callable[[World], None]:
    def case(world: World) -> None:
        assert assert_answer_clean(world, "GET", path, api=False) == 200
        with _http(world, world.admin, api=False) as http:
            assert world.batch_id in http.get(path).text  # the admin sees alpha's batch

    return case


def _dashboard_batch(path: str) -> Callable[[World], None]:
    def case(world: World) -> None:
        assert_hidden(world, "GET", path, world.batch_id, api=False)
        with _http(world, world.admin, api=False) as http:
            assert http.get(path.format(id=world.batch_id)).status_code == 200

    return case


def _dashboard_costs(world: World) -> None:
    """Beta's costs page shows nothing of alpha's usage; the admin's shows alpha's."""
    assert assert_answer_clean(world, "GET", "/ui/costs?days=366", api=False) == 200
    with _http(world, world.admin, api=False) as http:
        assert ">alpha<" in http.get("/ui/costs?days=366").text


def _dashboard_download(world: World) -> None:
    for file_id in world.files:
        assert_hidden(world, "GET", "/ui/files/{id}/content", file_id, api=False)
        assert_hidden(world, "GET", "/ui/files/{id}/content?project=alpha", file_id, api=False)
    with _http(world, world.admin, api=False) as http:
        download = http.get(f"/ui/files/{world.files[1]}/content?project=alpha")  # alpha's input
    assert download.status_code == 200
    assert b"alpha-line-1" in download.content


def _sync(path: str, body: dict[str, object]) -> Callable[[World], None]:
    return _clean("POST", path, json=body)


CHAT: dict[str, object] = {"model": "fake-chat", "messages": [{"role": "user", "content": "beta"}]}
CASES: dict[Route, Callable[[World], None]] = {
    ("GET", "/health"): _clean("GET", "/health"),
    ("GET", "/metrics"): _clean("GET", "/metrics"),
    ("POST", "/v1/files"): _upload,
    ("GET", "/v1/files"): _list_files,
    ("GET", "/v1/files/{file_id}"): _each_file("GET", "/v1/files/{id}"),
    ("DELETE", "/v1/files/{file_id}"): _each_file("DELETE", "/v1/files/{id}"),
    ("GET", "/v1/files/{file_id}/content"): _file_content,
    ("POST", "/v1/batches"): _create_batch,
    ("GET", "/v1/batches"): _clean("GET", "/v1/batches"),
    ("GET", "/v1/batches/{batch_id}"): _the_batch("GET", "/v1/batches/{id}"),
    ("POST", "/v1/batches/{batch_id}/cancel"): _the_batch("POST", "/v1/batches/{id}/cancel"),
    ("GET", "/v1/batches/{batch_id}/progress"): _the_batch("GET", "/v1/batches/{id}/progress"),
    ("POST", "/v1/batches/{batch_id}/retry"): _the_batch("POST", "/v1/batches/{id}/retry", json={}),
    ("POST", "/v1/batches/{batch_id}/retry-requests"): _retry_requests,
    ("GET", "/v1/models"): _clean("GET", "/v1/models"),
    ("GET", "/v1/models/{model}"): _clean("GET", "/v1/models/fake-chat"),
    ("GET", "/v1/organization/costs"): _costs,
    ("POST", "/v1/chat/completions"): _sync("/v1/chat/completions", CHAT),
    ("POST", "/v1/completions"): _sync("/v1/completions", {"model": "fake-chat", "prompt": "beta"}),
    ("POST", "/v1/embeddings"): _sync("/v1/embeddings", {"model": "text-embedding-3-small", "input": "b"}),
    ("POST", "/v1/responses"): _sync(
        "/v1/responses", {"model": "fake-chat", "input": "b", "background": True}
    ),
    ("POST", "/v1/moderations"): _sync("/v1/moderations", {"input": "beta"}),
    ("GET", "/v1/responses/{response_id}"): _the_response("GET", "/v1/responses/{id}"),
    ("POST", "/v1/responses/{response_id}/cancel"): _the_response("POST", "/v1/responses/{id}/cancel"),
    ("DELETE", "/v1/responses/{response_id}"): _the_response("DELETE", "/v1/responses/{id}"),
    ("GET", "/"): _dashboard_list("/"),
    ("GET", "/ui/fragments/batches"): _dashboard_list("/ui/fragments/batches"),
    ("GET", "/ui/batches/{batch_id}"): _dashboard_batch("/ui/batches/{id}"),
    ("GET", "/ui/fragments/batches/{batch_id}"): _dashboard_batch("/ui/fragments/batches/{id}"),
    ("POST", "/ui/batches/{batch_id}/cancel"): _the_batch("POST", "/ui/batches/{id}/cancel", api=False),
    ("GET", "/ui/files/{file_id}/content"): _dashboard_download,
    ("GET", "/ui/costs"): _dashboard_costs,
    ("GET", "/ui/signin"): _clean("GET", "/ui/signin", api=False, follow_redirects=False),
    ("POST", "/ui/signin"): lambda world: _ignore(
        assert_answer_clean(world, "POST", "/ui/signin", api=False, data={"key": world.beta})
    ),
    ("POST", "/ui/signout"): _clean("POST", "/ui/signout", api=False),
    ("GET", "/ui/static"): _clean("GET", "/ui/static/dashboard.js", api=False),
}


def served_routes(tmp_path: Path) -> set[Route]:
    """The routes of the app `overnight serve` runs (built here, on a scratch SQLite folder)."""
    config = write_config(tmp_path / "routes.toml", "http://127.0.0.1:9/v1")
    flags = {"config": str(config), "data_dir": str(tmp_path / "routes"), "local_models": "false"}
    settings = load_settings(flags, environ={})

    async def collect() -> set[Route]:
        runtime = await open_runtime(settings, load_secrets(settings, environ={}))
        try:
            routes = api_app(runtime).router.routes()
            return {
                (route.method, route.resource.canonical) for route in routes if route.resource is not None
            }
        finally:
            await runtime.close()

    return {route for route in asyncio.run(collect()) if route[0] != "HEAD"}


def test_every_route_has_a_case(tmp_path: Path) -> None:
    served = served_routes(tmp_path)
    assert served == set(CASES), f"routes without a case: {sorted(served - set(CASES))}"


@pytest.mark.parametrize("route", sorted(CASES), ids=lambda route: f"{route[0]} {route[1]}")
def test_another_project_sees_nothing(world: World, route: Route) -> None:
    CASES[route](world)


def test_alpha_still_has_everything(world: World) -> None:
    """Beta's deletes and cancels changed nothing of alpha's."""
    alpha = make_client(f"{world.root}/v1", ALPHA_KEY)
    deadline = time.monotonic() + 60
    for file_id in world.files:
        assert alpha.files.retrieve(file_id).id == file_id
    assert alpha.batches.retrieve(world.batch_id).status == "completed"
    while alpha.responses.retrieve(world.response_id).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline, "alpha's background response never ended"
        time.sleep(0.05)
    assert alpha.responses.retrieve(world.response_id).status == "completed"
