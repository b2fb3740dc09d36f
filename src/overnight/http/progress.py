"""GET /v1/batches/{batch_id}/progress: Overnight's extension for a batch's rate and ETA (docs/progress.md).
The Batch object itself stays exactly OpenAI's, so stock clients never see this."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from overnight.domain.ids import error_file_id, output_file_id
from overnight.domain.lifecycle import TERMINAL
from overnight.domain.progress import Progress
from overnight.http.auth import scope_of
from overnight.http.wire import json_response
from overnight.services.progress import ProgressService

PROGRESS = web.AppKey("progress", ProgressService)


def progress_json(progress: Progress) -> dict[str, Any]:
    return {
        "object": "batch.progress",
        "id": progress.batch_id,
        "status": str(progress.status),
        "request_counts": {
            "total": progress.total,
            "completed": progress.completed,
            "failed": progress.failed,
        },
        "rate_per_second": progress.rate_per_s,
        "eta_seconds": progress.eta_s,
        "window_left_seconds": progress.window_left_s,
        "samples": [
            {"at": sample.at, "completed": sample.completed, "failed": sample.failed}
            for sample in progress.samples
        ],
        "partial_results": _partial_results(progress),
    }


def _partial_results(progress: Progress) -> dict[str, str] | None:
    """Where the lines finished so far can be read while the batch runs (docs/partial-results.md); null
    once it has ended (the Batch object names its files then)."""
    if progress.status in TERMINAL:
        return None
    return {
        "output_file_id": output_file_id(progress.batch_id),
        "error_file_id": error_file_id(progress.batch_id),
    }


async def retrieve_progress(request: web.Request) -> web.Response:
    progress = await request.app[PROGRESS].progress(scope_of(request), request.match_info["batch_id"])
    return json_response(progress_json(progress))


def add_routes(app: web.Application, service: ProgressService) -> None:
    app[PROGRESS] = service
    app.router.add_get("/v1/batches/{batch_id}/progress", retrieve_progress)
