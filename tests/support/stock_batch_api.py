"""A small stand-in for another provider's Batch API: the stock endpoints only, stricter limits, and it
answers the lines itself. No extensions: no Idempotency-Key (ignored), no progress, no partial results,
unless `--partial-results` turns on Doubleword's convention (output and error files exist from the start,
`?skip=N` / `?offset=N` on their content, `X-Incomplete` and `X-Last-Line` headers).

    python tests/support/stock_batch_api.py --port 0 --max-lines 1000 [--api-key K] [--partial-results]

prints ``READY <base_url>`` once listening. ``GET /_stats`` (not part of any API) says what it was asked.

A line's body may carry ``"double": {"status": 500, "times": 1}``: the first `times` tries of that
custom_id (over all batches) answer `status`; without `times`, every try does.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

try:
    from .fake_bodies import BUILDERS, error_body
except ImportError:  # run as a script
    from fake_bodies import BUILDERS, error_body  # type: ignore[import-not-found, no-redef]

TERMINAL = {"completed", "failed", "expired", "cancelled"}


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    created_at: int
    lines: list[bytes] = field(default_factory=list)
    batch_id: str | None = None  # for an output or error file: the batch that writes it

    def json(self) -> dict[str, Any]:
        size = sum(len(line) + 1 for line in self.lines)
        return {
            "id": self.id,
            "object": "file",
            "bytes": size,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass
class _Batch:
    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: int
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    total: int = 0
    times: dict[str, int | None] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        stamp = {name: self.times.get(name) for name in ("in_progress", "finalizing", "completed", "failed")}
        stamp |= {name: self.times.get(name) for name in ("expired", "cancelling", "cancelled")}
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "expires_at": self.created_at + 86400,
            **{f"{name}_at": value for name, value in stamp.items()},
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
        }


class StockBatchApi:
    def __init__(
        self,
        *,
        max_lines: int = 1000,
        max_bytes: int = 200 * 1024 * 1024,
        lines_per_tick: int = 100,
        tick_s: float = 0.01,
        api_key: str | None = None,
        partial_results: bool = False,
    ) -> None:
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.lines_per_tick = lines_per_tick
        self.tick_s = tick_s
        self.api_key = api_key
        self.partial_results = partial_results
        self.files: dict[str, _File] = {}
        self.batches: dict[str, _Batch] = {}
        self.tries: dict[str, int] = {}
        self.stats: dict[str, int] = dict.fromkeys(
            ("files", "batches", "idempotency_keys", "content_reads", "offset_reads", "incomplete_answers"), 0
        )
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    def _id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):08d}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_bytes + 1024 * 1024, middlewares=[self._auth])
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{id}", self._file)
        app.router.add_get("/v1/files/{id}/content", self._content)
        app.router.add_post("/v1/batches", self._create)
        app.router.add_get("/v1/batches", self._list)
        app.router.add_get("/v1/batches/{id}", self._retrieve)
        app.router.add_post("/v1/batches/{id}/cancel", self._cancel)
        app.router.add_get("/_stats", self._stats)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("Idempotency-Key"):
            self.stats["idempotency_keys"] += 1  # seen, and ignored
        wanted = f"Bearer {self.api_key}"
        if self.api_key and request.path != "/_stats" and request.headers.get("Authorization") != wanted:
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        response: web.StreamResponse = await handler(request)
        return response

    async def _upload(self, request: web.Request) -> web.Response:
        reader = await request.multipart()
        fields: dict[str, Any] = {}
        while (part := await reader.next()) is not None:
            if getattr(part, "filename", None):
                fields["file"] = (part.filename, await part.read())  # type: ignore[union-attr]
            else:
                fields[part.name or ""] = (await part.text()).strip()  # type: ignore[union-attr]
        if "file" not in fields or fields.get("purpose") != "batch":
            return _error(400, "A file and purpose 'batch' are required.", None)
        name, content = fields["file"]
        file = _File(self._id("file-"), name, "batch", int(time.time()), content.splitlines())
        self.files[file.id] = file
        self.stats["files"] += 1
        return web.json_response(file.json())

    async def _file(self, request: web.Request) -> web.Response:
        file = self.files.get(request.match_info["id"])
        if file is None:
            return _error(404, "No such File object.", None)
        return web.json_response(file.json())

    async def _content(self, request: web.Request) -> web.Response:
        file = self.files.get(request.match_info["id"])
        if file is None:
            return _error(404, "No such File object.", None)
        self.stats["content_reads"] += 1
        if not self.partial_results:
            return web.Response(body=b"".join(line + b"\n" for line in file.lines))
        offset = int(request.query.get("skip") or request.query.get("offset") or 0)
        if offset:
            self.stats["offset_reads"] += 1
        lines = file.lines[offset:]
        batch = self.batches.get(file.batch_id or "")
        incomplete = batch is not None and batch.status not in TERMINAL
        self.stats["incomplete_answers"] += incomplete
        headers = {"X-Incomplete": str(incomplete).lower(), "X-Last-Line": str(offset + len(lines))}
        return web.Response(body=b"".join(line + b"\n" for line in lines), headers=headers)

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        file = self.files.get(body.get("input_file_id", ""))
        if file is None:
            return _error(400, "The input file does not exist.", None)
        batch = _Batch(
            self._id("batch_"),
            body["endpoint"],
            file.id,
            body.get("completion_window", "24h"),
            body.get("metadata"),
            int(time.time()),
        )
        self.batches[batch.id] = batch
        self.stats["batches"] += 1
        task = asyncio.create_task(self._run(batch, file))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response(batch.json())

    async def _list(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "20"))
        ordered = sorted(self.batches.values(), key=lambda b: b.id, reverse=True)
        after = request.query.get("after")
        if after:
            ordered = [batch for batch in ordered if batch.id < after]
        page = ordered[:limit]
        return web.json_response(
            {
                "object": "list",
                "data": [batch.json() for batch in page],
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": len(ordered) > limit,
            }
        )

    async def _retrieve(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return _error(404, "No such batch.", None)
        return web.json_response(batch.json())

    async def _cancel(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return _error(404, "No such batch.", None)
        if batch.status not in TERMINAL:
            batch.status = "cancelling"
            batch.times["cancelling"] = int(time.time())
        return web.json_response(batch.json())

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats)

    def _output_file(self, batch: _Batch, kind: str) -> _File:
        file = _File(self._id("file-"), f"{batch.id}_{kind}.jsonl", f"batch_{kind}", int(time.time()))
        file.batch_id = batch.id
        self.files[file.id] = file
        return file

    async def _run(self, batch: _Batch, file: _File) -> None:
        await asyncio.sleep(self.tick_s)
        requests = [json.loads(line) for line in file.lines if line.strip()]
        batch.total = len(requests)
        if len(requests) > self.max_lines or sum(len(line) + 1 for line in file.lines) > self.max_bytes:
            message = f"The batch has {len(requests)} requests; this provider takes at most {self.max_lines}."
            batch.errors = [{"code": "too_many_tasks", "message": message, "param": None, "line": None}]
            batch.status = "failed"
            batch.times["failed"] = int(time.time())
            return
        batch.status = "in_progress"
        batch.times["in_progress"] = int(time.time())
        output = errors = None
        if self.partial_results:
            output, errors = self._output_file(batch, "output"), self._output_file(batch, "error")
            batch.output_file_id, batch.error_file_id = output.id, errors.id
        done_lines: list[bytes] = []
        error_lines: list[bytes] = []
        for start in range(0, len(requests), self.lines_per_tick):
            await asyncio.sleep(self.tick_s)
            if batch.status == "cancelling":
                break
            for request in requests[start : start + self.lines_per_tick]:
                line, ok = self._answer(batch, request)
                (done_lines if ok else error_lines).append(line)
                if ok:
                    batch.completed += 1
                else:
                    batch.failed += 1
                if output is not None and errors is not None:
                    (output if ok else errors).lines.append(line)
        if output is None:
            output = self._output_file(batch, "output")
            output.lines = done_lines
            batch.output_file_id = output.id
            if error_lines:
                errors = self._output_file(batch, "error")
                errors.lines = error_lines
                batch.error_file_id = errors.id
        final = "cancelled" if batch.status == "cancelling" else "completed"
        batch.status = final
        batch.times[final] = int(time.time())

    def _answer(self, batch: _Batch, request: dict[str, Any]) -> tuple[bytes, bool]:
        custom_id = request["custom_id"]
        body = request.get("body") or {}
        tries = self.tries[custom_id] = self.tries.get(custom_id, 0) + 1
        directive = body.get("double") or {}
        status = 200
        if "status" in directive and ("times" not in directive or tries <= directive["times"]):
            status = int(directive["status"])
        if status == 200:
            answer: Any = BUILDERS[batch.endpoint](body, tries, int(time.time()))
        else:
            answer = json.loads(error_body(status, f"The double was told to answer {status}."))
        line = {
            "id": self._id("batch_req_"),
            "custom_id": custom_id,
            "response": {"status_code": status, "request_id": self._id("req_"), "body": answer},
            "error": None,
        }
        return json.dumps(line).encode(), status == 200


def _error(status: int, message: str, code: str | None) -> web.Response:
    return web.Response(
        status=status, body=error_body(status, message, code), content_type="application/json"
    )


async def _serve(args: argparse.Namespace) -> None:
    api = StockBatchApi(
        max_lines=args.max_lines,
        lines_per_tick=args.lines_per_tick,
        tick_s=args.tick_ms / 1000,
        api_key=args.api_key,
        partial_results=args.partial_results,
    )
    runner = web.AppRunner(api.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    port = runner.addresses[0][1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY http://127.0.0.1:{port}/v1", flush=True)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A stock-only Batch API test double.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-lines", type=int, default=1000)
    parser.add_argument("--lines-per-tick", type=int, default=100)
    parser.add_argument("--tick-ms", type=float, default=10.0)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--partial-results", action="store_true")
    asyncio.run(_serve(parser.parse_args(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
