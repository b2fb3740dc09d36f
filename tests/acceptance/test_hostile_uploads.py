"""Hostile uploads at the real server, with file contents on disk and on S3 (SeaweedFS).

Malformed multipart bodies (no or wrong boundary, cut short, missing or repeated parts, huge or too
many part headers, nested multipart) are refused with a 400 in OpenAI's error shape, and nothing of
them is kept. Odd file names (path traversal, absolute paths, NUL, control characters, 10,000
characters, undecodable bytes, only dots) are refused the same way or kept cleaned
(domain/filenames.py). After every request, nothing was written outside the data folder, or outside the
bucket's prefix, and no content was left behind by a refused upload.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from acceptance.conftest import write_config
from support.fuzzing import count
from support.seaweed import SeaweedS3
from support.server import FakeUpstreamProcess, OvernightServer

pytestmark = [pytest.mark.acceptance, pytest.mark.fuzz]

BOUNDARY = b"hostile-boundary-7f3a"
LINE = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "fake-chat", "messages": []}}\n'  # noqa: E501
SETTLE_TIMEOUT_S = 30.0


class BucketKeys:
    """Lists every key of the bucket, on one S3 client kept open on a loop of its own."""

    def __init__(self, seaweed: SeaweedS3) -> None:
        self._bucket = seaweed.bucket
        self._runner = asyncio.Runner()
        self._context = seaweed.client()
        self._s3 = self._runner.run(self._context.__aenter__())

    def __call__(self) -> set[str]:
        return self._runner.run(self._list())

    async def _list(self) -> set[str]:
        keys: set[str] = set()
        async for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self._bucket):
            keys |= {item["Key"] for item in page.get("Contents", [])}
        return keys

    def close(self) -> None:
        self._runner.run(self._context.__aexit__(None, None, None))
        self._runner.close()


@dataclass
class Target:
    server: OvernightServer
    root: Path  # the folder around the data folder, watched for strays
    bucket_keys: BucketKeys | None = None
    prefix: str = ""

    def outside(self) -> set[str]:
        """Every path under `root` but inside neither the data folder nor the server's log."""
        data = self.server.data_dir
        return {
            str(path.relative_to(self.root))
            for path in self.root.rglob("*")
            if data not in path.parents and path != data and path != self.server.log_path
        }

    def stored(self) -> set[str]:
        """The blobs kept: files under the data folder's blobs, or every key of the bucket."""
        if self.bucket_keys is None:
            blobs = self.server.data_dir / "blobs"
            if not blobs.exists():
                return set()
            return {str(p.relative_to(blobs)) for p in blobs.rglob("*") if p.is_file()}
        return self.bucket_keys()


@pytest.fixture(scope="module", params=["disk", "s3"])
def target(
    request: pytest.FixtureRequest, upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    root = tmp_path_factory.mktemp(f"hostile-{request.param}")
    extra: dict[str, Any] = {}
    env: dict[str, str] = {}
    bucket_keys: BucketKeys | None = None
    prefix = ""
    if request.param == "s3":
        seaweed: SeaweedS3 = request.getfixturevalue("seaweed")
        bucket_keys = BucketKeys(seaweed)
        prefix = f"hostile-{uuid.uuid4().hex[:8]}"
        extra["blob_url"] = f"s3://{seaweed.bucket}/{prefix}"
        env = {
            "AWS_ACCESS_KEY_ID": seaweed.access_key_id,
            "AWS_SECRET_ACCESS_KEY": seaweed.secret_access_key,
            "AWS_ENDPOINT_URL": seaweed.endpoint_url,
            "AWS_REGION": seaweed.region,
        }
    config = write_config(root / "overnight.toml", upstream.base_url, **extra)
    server = OvernightServer(root / "data", config, env)
    server.start()
    try:
        yield Target(server, root, bucket_keys, prefix)
    finally:
        server.stop()
        if bucket_keys is not None:
            bucket_keys.close()


def part(name: bytes, content: bytes, filename: bytes | None = None, headers: bytes = b"") -> bytes:
    disposition = b'Content-Disposition: form-data; name="' + name + b'"'
    if filename is not None:
        disposition += b'; filename="' + filename + b'"'
    return disposition + b"\r\n" + headers + b"\r\n" + content


def form(*parts: bytes, boundary: bytes = BOUNDARY, close: bool = True) -> bytes:
    body = b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts)
    return body + (b"--" + boundary + b"--\r\n" if close else b"")


FILE = part(b"file", LINE, b"input.jsonl")
PURPOSE = part(b"purpose", b"batch")
MULTIPART = "multipart/form-data; boundary=" + BOUNDARY.decode()


def post(target: Target, body: bytes, content_type: str = MULTIPART, **headers: str) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", target.server.port, timeout=60)
    try:
        connection.request("POST", "/v1/files", body=body, headers={"Content-Type": content_type, **headers})
        response = connection.getresponse()
        payload = response.read()
        status = response.status
        assert response.getheader("x-request-id") or status >= 400, response.getheaders()
    finally:
        connection.close()
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload


def check_refused(status: int, payload: Any, param: str | None = None) -> None:
    assert status == 400, payload
    assert set(payload) == {"error"}, payload
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    if param is not None:
        assert error["param"] == param, error


def settled(target: Target, expected: set[str]) -> set[str]:
    """The blobs once they are `expected` (a refused upload's content goes soon after the answer), or
    whatever they are after SETTLE_TIMEOUT_S."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while (now := target.stored()) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


LONG = "b" * 200
HUGE_HEADER = part(b"file", LINE, b"a.jsonl", b"X-Big: " + b"h" * 200_000 + b"\r\n")
MANY_HEADERS = part(b"file", LINE, b"a.jsonl", b"X-H: v\r\n" * 5000)
NESTED = part(b"file", b"--inner--\r\n", None, b"Content-Type: multipart/mixed; boundary=inner\r\n")
NO_ANCHOR = part(b"expires_after", b'{"seconds": 3600}')
MALFORMED: dict[str, tuple[str, bytes, str | None]] = {
    "not multipart": ("application/json", b'{"purpose": "batch"}', None),
    "no boundary": ("multipart/form-data", form(PURPOSE, FILE), None),
    "wrong boundary": ("multipart/form-data; boundary=another", form(PURPOSE, FILE), None),
    "boundary too long": (
        f"multipart/form-data; boundary={LONG}",
        form(PURPOSE, FILE, boundary=LONG.encode()),
        None,
    ),
    "empty body": (MULTIPART, b"", None),
    "garbage": (MULTIPART, b"\x00\xff" * 500, None),
    "cut short in the file": (MULTIPART, form(PURPOSE, FILE, close=False)[:-40], None),
    "no closing boundary": (MULTIPART, form(PURPOSE, FILE, close=False), None),
    "no file part": (MULTIPART, form(PURPOSE), "file"),
    "no purpose part": (MULTIPART, form(FILE), "purpose"),
    "no purpose, another field": (MULTIPART, form(FILE, part(b"other", b"x")), "purpose"),
    "two file parts": (MULTIPART, form(PURPOSE, FILE, FILE), "file"),
    "two purpose parts": (MULTIPART, form(PURPOSE, part(b"purpose", b"fine-tune"), FILE), "purpose"),
    "unknown purpose": (MULTIPART, form(part(b"purpose", b"../../etc"), FILE), "purpose"),
    "huge part header": (MULTIPART, form(PURPOSE, HUGE_HEADER), None),
    "many part headers": (MULTIPART, form(PURPOSE, MANY_HEADERS), None),
    "control character in a part header": (MULTIPART, form(PURPOSE, part(b"fi\x05le", LINE, b"a")), None),
    "nested multipart": (MULTIPART, form(PURPOSE, NESTED), None),
    "huge purpose field": (MULTIPART, form(part(b"purpose", b"p" * 200_000), FILE), "purpose"),
    "expires_after not JSON": (
        MULTIPART,
        form(PURPOSE, part(b"expires_after", b"{no"), FILE),
        "expires_after",
    ),
    "expires_after without anchor": (MULTIPART, form(PURPOSE, NO_ANCHOR, FILE), "expires_after.anchor"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_upload_is_refused_and_nothing_is_kept(target: Target, case: str) -> None:
    content_type, body, param = MALFORMED[case]
    outside, stored = target.outside(), target.stored()
    count("malformed uploads")
    status, payload = post(target, body, content_type)
    check_refused(status, payload, param)
    assert settled(target, stored) == stored
    assert target.outside() == outside


ODD_NAMES = [
    b"../../etc/passwd",
    b"../../../../../../../../tmp/overnight-escape.jsonl",
    b"/etc/passwd",
    b"/tmp/absolute.jsonl",
    b"..\\..\\windows\\win.ini",
    b"a\x00b.jsonl",
    b"x" * 10_000 + b".jsonl",
    b"x" * 255,
    b"\x1b[31mred\x07\x7f.jsonl",
    b"line\r\nX-Injected: 1.jsonl",
    b"\xff\xfe\xfd.jsonl",
    b"..",
    b"...",
    b".",
    b"./",
    b"",
    b" .jsonl ",
    b"%2e%2e%2fetc%2fpasswd",
    b"files/file-0000",
    "caf\u00e9 \U0001f600.jsonl".encode(),
]


def _filename_part(raw: bytes) -> bytes:
    return part(b"file", LINE, raw)


def _filename_star_part(raw: bytes) -> bytes:
    encoded = b"".join(b"%%%02X" % byte for byte in raw)
    disposition = b"Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''" + encoded
    return disposition + b"\r\n\r\n" + LINE


@pytest.mark.parametrize("encode", [_filename_part, _filename_star_part], ids=["filename", "filename*"])
@pytest.mark.parametrize("name", ODD_NAMES, ids=lambda raw: repr(raw[:24]))
def test_an_odd_file_name_is_refused_or_cleaned_and_stays_in_the_data_folder(
    target: Target, name: bytes, encode: Any
) -> None:
    outside, stored = target.outside(), target.stored()
    count("odd file names")
    status, payload = post(target, form(part(b"purpose", b"user_data"), encode(name)))
    if status == 200:
        kept = payload["filename"]
        assert "/" not in kept
        assert "\\" not in kept
        assert kept.strip(".")
        assert len(kept) <= 255
        assert all(ord(char) >= 0x20 and not 0x7F <= ord(char) < 0xA0 for char in kept), kept
        assert kept == kept.strip()
        new = target.stored() - stored  # one new blob, under the file's id
        assert len(new) == 1, new
        [key] = new
        assert key.endswith(payload["id"]), (key, payload["id"])
        if target.bucket_keys is not None:
            assert key.startswith(target.prefix + "/"), key
    else:  # by the cleaning (param `file`), or by the multipart parser for a header it cannot read
        check_refused(status, payload)
        assert payload["error"]["param"] in ("file", None), payload
        assert settled(target, stored) == stored
    assert target.outside() == outside
    # the bucket is shared with other modules' tests: what this upload added stays under its prefix
    assert all(key.startswith(target.prefix) for key in target.stored() - stored)


def test_an_upload_cut_off_mid_body_keeps_nothing(target: Target) -> None:
    """The client says 1 MB, sends part of it and goes: no answer to read, nothing kept, still healthy."""
    outside, stored = target.outside(), target.stored()
    body = form(PURPOSE, part(b"file", LINE * 100, b"cut.jsonl"), close=False)
    connection = http.client.HTTPConnection("127.0.0.1", target.server.port, timeout=60)
    connection.putrequest("POST", "/v1/files")
    connection.putheader("Content-Type", MULTIPART)
    connection.putheader("Content-Length", str(1 << 20))
    connection.endheaders(body)
    connection.close()
    assert settled(target, stored) == stored
    assert target.outside() == outside
    status, payload = post(target, form(PURPOSE, FILE))
    assert status == 200, payload


def test_a_huge_request_header_is_refused_by_the_http_layer(target: Target) -> None:
    status, _ = post(target, form(PURPOSE, FILE), **{"X-Big": "h" * 100_000})
    assert 400 <= status < 500
    status, payload = post(target, form(PURPOSE, FILE))
    assert status == 200, payload
