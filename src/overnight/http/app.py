"""The aiohttp application factory."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from overnight.http import background, batches, costs, dashboard, files, models, progress, sync
from overnight.http import partial as http_partial
from overnight.http import retries as http_retries
from overnight.http.auth import Authenticator, auth_middleware
from overnight.http.errors import errors_middleware
from overnight.http.limits import LIMITS, RequestLimits, body_limit_middleware
from overnight.http.slow_clients import DEADLINES, HeaderDeadlines, request_started_middleware
from overnight.http.wire import json_response
from overnight.services.background import BackgroundResponses
from overnight.services.batches import BatchesService
from overnight.services.costs import CostsService
from overnight.services.files import FilesService
from overnight.services.models import ModelsService
from overnight.services.partial import PartialResults
from overnight.services.progress import ProgressService
from overnight.services.retries import RetryService
from overnight.services.sync import SyncService

REQUEST_ID = "x-request-id"


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = f"req_{secrets.token_hex(16)}"
    request["request_id"] = request_id
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers[REQUEST_ID] = request_id
        raise
    if not response.prepared:
        response.headers[REQUEST_ID] = request_id
    return response


async def _prepare_streams(request: web.Request, response: web.StreamResponse) -> None:
    # Streamed responses are prepared inside their handler: stamp them here.
    if REQUEST_ID not in response.headers and "request_id" in request:
        response.headers[REQUEST_ID] = request["request_id"]


MetricsSource = Callable[[], Awaitable[str]]
HealthCheck = Callable[[], Awaitable[dict[str, str]]]  # part -> "ok" or what is wrong
METRICS: web.AppKey[MetricsSource] = web.AppKey("metrics")
HEALTH: web.AppKey[HealthCheck] = web.AppKey("health")


async def health(request: web.Request) -> web.Response:
    """200 `{"status": "ok", "store": "ok", "blobs": "ok"}` while the store and the blobs answer;
    503 with what is wrong otherwise (for load balancers)."""
    parts = await request.app[HEALTH]()
    healthy = all(state == "ok" for state in parts.values())
    return json_response(
        {"status": "ok" if healthy else "unavailable", **parts}, status=200 if healthy else 503
    )


async def metrics(request: web.Request) -> web.Response:
    text = await request.app[METRICS]()
    return web.Response(
        body=text.encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )


def create_app(
    files_service: FilesService,
    batches_service: BatchesService,
    authenticator: Authenticator,
    metrics_source: MetricsSource,
    health_check: HealthCheck,
    models_service: ModelsService | None = None,
    dashboard_services: dashboard.Dashboard | None = None,
    costs_service: CostsService | None = None,
    progress_service: ProgressService | None = None,
    background_service: BackgroundResponses | None = None,
    sync_service: SyncService | None = None,
    sync_body_limit: int = 32 * 1024 * 1024,
    partial: PartialResults | None = None,
    retries: RetryService | None = None,
    request_limits: RequestLimits | None = None,
) -> web.Application:
    # The dashboard's pages check the key their cookie holds themselves (http/dashboard_auth.py).
    public = ("/", "/ui") if dashboard_services is not None else ()
    limits = request_limits or RequestLimits()
    app = web.Application(
        middlewares=[
            request_started_middleware,  # first: the request's headers are in (http/slow_clients.py)
            request_id_middleware,
            errors_middleware,
            body_limit_middleware,  # http/limits.py
            auth_middleware(authenticator, public),
        ],
        client_max_size=limits.max_body_bytes,
    )
    app[LIMITS] = limits
    app[DEADLINES] = HeaderDeadlines(limits.client_header_timeout_s)
    app.on_response_prepare.append(_prepare_streams)
    _add_probes(app, metrics_source, health_check)
    files.add_routes(app, files_service)
    # File content by lines (docs/partial-results.md); without the service, no result file is special.
    http_partial.add_routes(app, partial or PartialResults(None, files_service))
    batches.add_routes(app, batches_service)
    if retries is not None:
        http_retries.add_routes(app, retries)
    if models_service is not None:
        models.add_routes(app, models_service)
    if dashboard_services is not None:
        dashboard.add_routes(app, dashboard_services, authenticator)
    if costs_service is not None:
        costs.add_routes(app, costs_service)
    if progress_service is not None:
        progress.add_routes(app, progress_service)
    if sync_service is not None:
        sync.add_routes(app, sync_service, body_limit=sync_body_limit)
    if background_service is not None:  # POST /v1/responses hands background requests to it
        background.add_routes(app, background_service)
    return app


def _add_probes(app: web.Application, metrics_source: MetricsSource, health_check: HealthCheck) -> None:
    app[METRICS] = metrics_source
    app[HEALTH] = health_check
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)


def create_probe_app(metrics_source: MetricsSource, health_check: HealthCheck) -> web.Application:
    """A worker's optional port: /metrics and /health only, no API and no auth."""
    app = web.Application(middlewares=[request_id_middleware, errors_middleware])
    _add_probes(app, metrics_source, health_check)
    return app
