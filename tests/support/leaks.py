"""Searching what a server wrote for secrets it must never write down: marker strings in their plain form
and in the simple encodings a leak could take (base64 at any alignment, URL-encoding, hex, JSON escapes).

    markers = Markers({"upstream key": "sk-upstream-...", ...})
    hits = markers.search(data, "data dir: overnight.db-wal")   # [] when clean
    hits += scan_folder(markers, data_dir, "data dir")

`Recorder` is an HTTP client that keeps every answer it gets, to search them afterwards.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx2

MIN_MARKER_BYTES = 12  # a shorter secret would match by chance in a large file
SNIPPET = 40


def _b64_fragments(secret: bytes, encode: Any) -> set[bytes]:
    """The characters of base64(secret) that are the same wherever the secret sits in a longer encoded
    text: one fragment per alignment (0, 1 or 2 bytes before it in its 3-byte group)."""
    found = set()
    for before in range(3):
        encoded = encode(b"\0" * before + secret + b"\0\0").rstrip(b"=")
        first = -(-before * 4 // 3)  # the first character holding no bit of the bytes before
        last = (before + len(secret)) * 4 // 3  # past it, characters hold bits of what follows
        fragment = encoded[first:last]
        if len(fragment) >= MIN_MARKER_BYTES:
            found.add(fragment)
    return found


def encodings(secret: str) -> dict[str, bytes]:
    """The forms of `secret` to look for, by name (each as bytes)."""
    raw = secret.encode()
    forms: dict[str, bytes] = {"plain": raw}
    forms["url-encoded"] = urllib.parse.quote(secret, safe="").encode()
    forms["url-encoded (+)"] = urllib.parse.quote_plus(secret).encode()
    forms["hex"] = binascii.hexlify(raw)
    forms["HEX"] = binascii.hexlify(raw).upper()
    forms["json-escaped"] = secret.replace("/", "\\/").encode()
    for index, fragment in enumerate(sorted(_b64_fragments(raw, base64.b64encode))):
        forms[f"base64 #{index}"] = fragment
    for index, fragment in enumerate(sorted(_b64_fragments(raw, base64.urlsafe_b64encode))):
        forms[f"base64url #{index}"] = fragment
    unique: dict[str, bytes] = {}
    for name, form in forms.items():
        if form not in unique.values():
            unique[name] = form
    return unique


@dataclass(frozen=True)
class Hit:
    where: str
    marker: str
    form: str
    context: bytes

    def __str__(self) -> str:
        return f"{self.where}: {self.marker} ({self.form}) in ...{self.context!r}..."


@dataclass
class Markers:
    """Named secrets; `search` finds any of their forms in some bytes."""

    secrets: Mapping[str, str]
    forms: dict[str, dict[str, bytes]] = field(init=False)
    searched: list[str] = field(default_factory=list)  # every place searched, for the report

    def __post_init__(self) -> None:
        for name, secret in self.secrets.items():
            if len(secret.encode()) < MIN_MARKER_BYTES:
                raise ValueError(f"marker {name!r} is too short to search for")
        self.forms = {name: encodings(secret) for name, secret in self.secrets.items()}

    def search(self, data: bytes | str, where: str) -> list[Hit]:
        blob = data.encode(errors="surrogateescape") if isinstance(data, str) else data
        self.searched.append(where)
        hits = []
        for name, forms in self.forms.items():
            for form_name, form in forms.items():
                at = blob.find(form)
                if at >= 0:
                    context = blob[max(0, at - SNIPPET) : at + len(form) + SNIPPET]
                    hits.append(Hit(where, name, form_name, context))
                    break
        return hits


@dataclass
class Answer:
    where: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Recorder:
    """An HTTP client that keeps every answer it gets, to search them afterwards."""

    root: str
    key: str
    answers: list[Answer] = field(default_factory=list)
    http: httpx2.Client = field(default_factory=lambda: httpx2.Client(timeout=30))

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, *, key: str | None = None, **kwargs: Any) -> httpx2.Response:
        headers = dict(kwargs.pop("headers", {}))
        if key != "":
            headers.setdefault("Authorization", f"Bearer {key or self.key}")
        answer = self.http.request(method, self.root + path, headers=headers, **kwargs)
        self.answers.append(
            Answer(f"{method} {path}", answer.status_code, list(answer.headers.items()), answer.content)
        )
        return answer

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = self.call(method, path, **kwargs)
        assert answer.status_code == 200, f"{method} {path}: {answer.status_code} {answer.text[:300]}"
        return answer.json() if "json" in answer.headers.get("content-type", "") else answer.content


def scan_folder(markers: Markers, folder: Path, label: str) -> list[Hit]:
    """Every file under `folder` (SQLite's database, -wal and -shm files included), byte for byte."""
    hits: list[Hit] = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            hits += markers.search(path.read_bytes(), f"{label}: {path.relative_to(folder)}")
    return hits


async def scan_postgres(markers: Markers, dsn: str) -> list[Hit]:
    """Every column of every table in the database's own schemas, as text (bytea as its bytes)."""
    hits: list[Hit] = []
    conn = await asyncpg.connect(dsn)
    try:
        columns = await conn.fetch(
            "SELECT c.table_schema, c.table_name, c.column_name, c.data_type "
            "FROM information_schema.columns c JOIN information_schema.tables t "
            "ON t.table_schema = c.table_schema AND t.table_name = c.table_name "
            "WHERE t.table_type = 'BASE TABLE' "
            "AND c.table_schema NOT IN ('pg_catalog', 'information_schema') "
            "ORDER BY 1, 2, c.ordinal_position"
        )
        for column in columns:
            table = f'"{column["table_schema"]}"."{column["table_name"]}"'
            name = f'"{column["column_name"]}"'
            selected = name if column["data_type"] == "bytea" else f"{name}::text"
            values = await conn.fetch(f"SELECT {selected} AS v FROM {table} WHERE {name} IS NOT NULL")
            blob = b"\n".join(v["v"] if isinstance(v["v"], bytes) else v["v"].encode() for v in values)
            where = f"postgres: {column['table_name']}.{column['column_name']}"
            hits += markers.search(blob, where)
    finally:
        await conn.close()
    return hits


async def scan_bucket(markers: Markers, s3: Any, bucket: str) -> tuple[list[Hit], int]:
    """Every object in `bucket` (an aiobotocore client); the hits and how many objects were read."""
    hits: list[Hit] = []
    count = 0
    paginator = s3.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=bucket):
        for entry in page.get("Contents", []):
            answer = await s3.get_object(Bucket=bucket, Key=entry["Key"])
            async with answer["Body"] as body:
                data = await body.read()
            count += 1
            hits += markers.search(entry["Key"].encode() + b"\n" + data, f"s3: {entry['Key']}")
    return hits, count


def describe(hits: Iterable[Hit]) -> str:
    return "\n".join(str(hit) for hit in hits)
