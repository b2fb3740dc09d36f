"""Schemathesis drives OpenAI's own OpenAPI spec (`/files` and `/batches`) at the real `overnight serve`.

Every operation gets generated requests, both ones the spec allows (positive) and ones it forbids
(negative), sent with a valid bearer key; path and body ids are sometimes swapped for ids of real files
and batches so that requests reach past the 404. The checks on every answer:
- `not_a_server_error`: never a 5xx;
- `response_schema_conformance`, `content_type_conformance`, `response_headers_conformance`: an answer
  with a status the spec documents matches its schema, content type and headers;
- `documented_or_openai_error` (ours, in place of `status_code_conformance`): any other status is a 4xx
  in OpenAI's error shape. OpenAI's spec documents only the 200 of these operations, while OpenAI, like
  Overnight, answers 400/401/404/409/413/429 in the error shape (docs/compatibility.md);
- `negative_data_rejection`, for negative cases: what the spec forbids is refused with a 4xx, except the
  differences listed in docs/compatibility.md (LENIENT), each for its operation only.

A few examples per operation with a fixed seed in `make test`; `make fuzz` tries many more.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml  # type: ignore[import-untyped]
from hypothesis import given
from hypothesis import strategies as st
from openai import OpenAI
from schemathesis import GenerationMode
from schemathesis.checks import CheckContext, CheckFunction, not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from acceptance.conftest import chat_line, jsonl, make_client, write_config
from support.fuzzing import count, fuzz_settings
from support.server import FakeUpstreamProcess, OvernightServer

pytestmark = [pytest.mark.acceptance, pytest.mark.fuzz]

SPEC = Path("/work/shared/reference/openai-openapi.yaml")
# The spec's /files and /batches paths and what they reference, kept here so the test runs wherever the
# checkout is; test_the_kept_cut_is_the_spec_s checks it against the spec whenever the spec is beside it.
CUT = Path(__file__).parent.parent / "data" / "openapi" / "files-batches.json"
PATHS = (
    "/files",
    "/files/{file_id}",
    "/files/{file_id}/content",
    "/batches",
    "/batches/{batch_id}",
    "/batches/{batch_id}/cancel",
)
OPERATIONS = (
    "listFiles",
    "createFile",
    "retrieveFile",
    "deleteFile",
    "downloadFile",
    "createBatch",
    "listBatches",
    "retrieveBatch",
    "cancelBatch",
)
# The operations that take more than an id in their path: with no `security` in the spec, the others have
# nothing that a request could get wrong and still reach them.
NEGATIVE_OPERATIONS = ("listFiles", "createFile", "createBatch", "listBatches")
API_KEY = "sk-schemathesis-key"
OPENAI_ERROR_STATUSES = {400, 401, 404, 405, 409, 413, 415, 422, 429}
# operation -> why Overnight accepts some requests that the spec's schema forbids (docs/compatibility.md)
LENIENT: dict[str, str] = {}
# Objects whose optional properties OpenAI's API gives as null when unset (its own examples show
# `"errors": null`, `"output_file_id": null`...; its SDK types them Optional), where the spec types them
# as never null; Overnight does as the API does (docs/compatibility.md).
NULL_WHEN_UNSET = ("Batch", "OpenAIFile")
# Required properties that are null in an empty list, at OpenAI as here.
NULLABLE = {"ListFilesResponse": ("first_id", "last_id"), "ListBatchesResponse": ("first_id", "last_id")}


def spec_path() -> Path:
    """The spec beside the project (../shared/reference), wherever the checkout is."""
    beside = Path(__file__).resolve().parents[3] / "shared" / "reference" / "openai-openapi.yaml"
    return beside if beside.exists() else SPEC


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield ref
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _strip_docs(node: Any) -> Any:
    """The spec without its x-oaiMeta blocks (code samples), which nothing here reads."""
    if isinstance(node, dict):
        return {key: _strip_docs(value) for key, value in node.items() if key != "x-oaiMeta"}
    if isinstance(node, list):
        return [_strip_docs(value) for value in node]
    return node


def openai_cut(spec: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's spec cut down to PATHS and the components they reference (what CUT holds)."""
    paths = {path: _strip_docs(spec["paths"][path]) for path in PATHS}
    components: dict[str, dict[str, Any]] = {}
    pending = list(_refs(paths))
    while pending:
        ref = pending.pop()
        _, _, section, name = ref.split("/", 3)
        if name in components.setdefault(section, {}):
            continue
        components[section][name] = _strip_docs(spec["components"][section][name])
        pending.extend(_refs(components[section][name]))
    ordered = {section: dict(sorted(named.items())) for section, named in sorted(components.items())}
    return {"openapi": spec["openapi"], "info": spec["info"], "paths": paths, "components": ordered}


def openai_subset(cut: dict[str, Any], base_url: str) -> dict[str, Any]:
    """The cut, served at `base_url`, with the nulls OpenAI's API gives allowed."""
    subset = copy.deepcopy(cut)
    _allow_null(subset["components"]["schemas"])
    # no `security`: every request carries the valid key (auth has tests of its own)
    return {**subset, "servers": [{"url": base_url}]}


def _allow_null(schemas: dict[str, Any]) -> None:
    nullable = dict(NULLABLE)
    for name in NULL_WHEN_UNSET:
        required = set(schemas[name].get("required", ()))
        nullable[name] = tuple(prop for prop in schemas[name]["properties"] if prop not in required)
    for name, props in nullable.items():
        properties = schemas[name]["properties"]
        for prop in props:
            properties[prop] = {"anyOf": [properties[prop], {"type": "null"}]}


def documented_or_openai_error(ctx: CheckContext, response: Any, case: Any) -> bool | None:
    """A status the operation does not document must be a 4xx in OpenAI's error shape."""
    documented = case.operation.definition.raw.get("responses", {})
    if str(response.status_code) in documented:
        return None
    assert response.status_code in OPENAI_ERROR_STATUSES, f"undocumented status {response.status_code}"
    assert response.headers.get("x-request-id"), "no x-request-id"
    payload = response.json()
    assert set(payload) == {"error"}, payload
    error = payload["error"]
    assert set(error) >= {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str), error
    assert error["message"], error
    assert error["code"] is None or isinstance(error["code"], str), error
    return True


def load_spec() -> dict[str, Any]:
    with spec_path().open() as handle:
        spec: dict[str, Any] = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return spec


@pytest.mark.skipif(not spec_path().exists(), reason="OpenAI's spec is not beside this checkout")
def test_the_kept_cut_is_the_spec_s() -> None:
    """The kept cut is what OpenAI's spec says today (`cd tests; python -m acceptance.test_schemathesis`
    rewrites it)."""
    assert json.loads(CUT.read_text()) == openai_cut(load_spec())


@pytest.fixture(scope="module")
def fuzzed_server(upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("schemathesis")
    config = write_config(root / "overnight.toml", upstream.base_url, api_keys={API_KEY: "fuzz"})
    server = OvernightServer(root / "data", config)
    server.start()
    try:
        yield server.base_url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def spec(fuzzed_server: str) -> OpenApiSchema:
    return schemathesis.openapi.from_dict(openai_subset(json.loads(CUT.read_text()), fuzzed_server))


@pytest.fixture(scope="module")
def known_ids(fuzzed_server: str) -> dict[str, list[str]]:
    """Ids of real objects, for generated requests to use now and then: two files, one batch."""
    client: OpenAI = make_client(fuzzed_server, API_KEY)
    batch_file = client.files.create(file=("in.jsonl", jsonl([chat_line("a")])), purpose="batch")
    other = client.files.create(file=("notes.jsonl", b'{"x": 1}\n'), purpose="fine-tune")
    batch = client.batches.create(
        input_file_id=batch_file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return {"file_id": [batch_file.id, other.id], "batch_id": [batch.id], "input_file_id": [batch_file.id]}


def _use_known_ids(
    case: Any, ids: dict[str, list[str]], draw: Callable[[st.SearchStrategy[Any]], Any]
) -> None:
    for name in list(case.path_parameters or {}):
        if name in ids and draw(st.booleans()):
            case.path_parameters[name] = draw(st.sampled_from(ids[name]))
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("input_file_id"), str) and draw(st.booleans()):
        body["input_file_id"] = draw(st.sampled_from(ids["input_file_id"]))


def _checks(operation_id: str, mode: GenerationMode) -> list[CheckFunction]:
    checks: list[CheckFunction] = [
        not_a_server_error,
        response_schema_conformance,
        content_type_conformance,
        response_headers_conformance,
        documented_or_openai_error,
    ]
    if mode.is_negative and operation_id not in LENIENT:
        checks.append(negative_data_rejection)
    return checks


@pytest.mark.parametrize(
    ("operation_id", "mode"),
    [(op, GenerationMode.POSITIVE) for op in OPERATIONS]
    + [(op, GenerationMode.NEGATIVE) for op in NEGATIVE_OPERATIONS],
    ids=lambda value: str(value),
)
def test_openai_spec_against_the_server(
    spec: OpenApiSchema,
    known_ids: dict[str, list[str]],
    fuzzed_server: str,
    operation_id: str,
    mode: GenerationMode,
) -> None:
    operation = spec.find_operation_by_id(operation_id)
    strategy = operation.as_strategy(generation_mode=mode)
    checks = _checks(operation_id, mode)
    headers = {"Authorization": f"Bearer {API_KEY}"}

    @fuzz_settings(8, share=0.1)
    @given(case=strategy, data=st.data())
    def run(case: Any, data: st.DataObject) -> None:
        _use_known_ids(case, known_ids, data.draw)
        count(f"schemathesis {operation_id} {mode}")
        response = case.call(base_url=fuzzed_server, headers=headers, timeout=30)
        case.validate_response(response, checks=checks, headers=headers)

    run()


if __name__ == "__main__":  # rewrite the kept cut from the spec beside the checkout
    CUT.parent.mkdir(parents=True, exist_ok=True)
    CUT.write_text(json.dumps(openai_cut(load_spec()), indent=1, sort_keys=False) + "\n")
