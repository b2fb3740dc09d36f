"""The dashboard: server-rendered pages at `/` and `/ui/...`, and the fragments their script polls.

Pages check the signed-in key themselves (the API's bearer middleware skips these paths): no page,
fragment or download shows anything without one, and another project's batch answers exactly as a
missing one. What each value looks like is worked out in `dashboard_views`.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from aiohttp import web

from overnight.domain.clock import Clock, SystemClock
from overnight.domain.errors import Conflict, InvalidRequest, NotFound
from overnight.domain.models import Batch
from overnight.domain.progress import Progress
from overnight.http import dashboard_auth as auth
from overnight.http import dashboard_costs as costs_view
from overnight.http import dashboard_views as views
from overnight.http.auth import Authenticator, Identity
from overnight.services.batches import BatchesService
from overnight.services.costs import DAY_S, CostsService, day_name
from overnight.services.files import FilesService
from overnight.services.progress import ProgressService

LIST_LIMIT = 50
POLL_MS = 2000
_HERE = Path(__file__).parent
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True, slots=True)
class Dashboard:
    """The services the dashboard reads and acts through."""

    batches: BatchesService
    files: FilesService
    progress: ProgressService
    costs: CostsService
    clock: Clock = field(default_factory=SystemClock)  # what "today" is on the costs page


@dataclass(frozen=True, slots=True)
class _Parts:
    dashboard: Dashboard
    authenticator: Authenticator
    templates: jinja2.Environment


_PARTS: web.AppKey[_Parts] = web.AppKey("dashboard", _Parts)


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("overnight.http", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = views.when
    env.filters["duration"] = views.duration
    return env


def add_routes(app: web.Application, dashboard: Dashboard, authenticator: Authenticator) -> None:
    app[_PARTS] = _Parts(dashboard, authenticator, templates())
    app.router.add_get("/", batch_list)
    app.router.add_get("/ui/fragments/batches", batch_list_fragment)
    app.router.add_get("/ui/batches/{batch_id}", batch_page)
    app.router.add_get("/ui/fragments/batches/{batch_id}", batch_fragment)
    app.router.add_post("/ui/batches/{batch_id}/cancel", cancel)
    app.router.add_get("/ui/costs", costs_page)
    app.router.add_get("/ui/files/{file_id}/content", download)
    app.router.add_get("/ui/signin", sign_in_form)
    app.router.add_post("/ui/signin", sign_in)
    app.router.add_post("/ui/signout", sign_out)
    app.router.add_static("/ui/static", _HERE / "static", append_version=False)


# -- rendering -------------------------------------------------------------------------------------


def _render(request: web.Request, name: str, context: dict[str, Any], status: int = 200) -> web.Response:
    parts = request.app[_PARTS]
    base = {"open": parts.authenticator.open, "poll_ms": POLL_MS, "identity": None}
    html = parts.templates.get_template(name).render({**base, **context})
    response = web.Response(
        status=status, text=html, content_type="text/html", charset="utf-8", headers=_SECURITY_HEADERS
    )
    # Gzip where the browser takes it (a list is ~50 KB, ~5 KB gzipped, polled every 2 s). The pages hold
    # no secret (the key is only in the HttpOnly cookie), so compression gives a BREACH attack nothing.
    response.enable_compression()
    return response


def _fragment(request: web.Request, name: str, context: dict[str, Any], live: bool) -> web.Response:
    response = _render(request, name, context)
    response.headers["X-Overnight-Live"] = "true" if live else "false"
    return response


def _sign_in_page(
    request: web.Request, error: str = "", status: int = 401, target: str | None = None
) -> web.Response:
    """The sign-in form, which comes back to `target` (by default the page asked for)."""
    if target is None:
        target = request.path_qs if request.method == "GET" else "/"
    return _render(request, "signin.html", {"error": error, "next": auth.local_path(target)}, status)


def _problem(
    request: web.Request, identity: Identity | None, status: int, title: str, text: str
) -> web.Response:
    context = {"identity": identity, "title": title, "text": text}
    return _render(request, "problem.html", context, status)


def _not_found(request: web.Request, identity: Identity, what: str) -> web.Response:
    return _problem(request, identity, 404, "Not found", f"There is no {what} here.")


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def _signed_out() -> web.Response:
    return web.Response(status=401, text="Sign in again.", headers={"Cache-Control": "no-store"})


async def _identity(request: web.Request) -> Identity | None:
    return await auth.identity_of_request(request, request.app[_PARTS].authenticator)


def _scope(identity: Identity) -> str | None:
    """The project whose batches this identity sees; None for an admin: every project."""
    return identity.scope


def _api_base_url(request: web.Request) -> str:
    scheme = "https" if auth.came_over_https(request) else "http"
    return f"{scheme}://{request.host}/v1"


# -- the batch list --------------------------------------------------------------------------------


async def _progress_of(dashboard: Dashboard, scope: str | None, batch: Batch) -> Progress | None:
    if not views.is_active(batch.status):
        return None  # its counts are final: nothing to measure
    try:
        return await dashboard.progress.progress(scope, batch.id)
    except NotFound:
        return None  # deleted between the list and now


async def _list_context(request: web.Request, identity: Identity) -> dict[str, Any]:
    dashboard = request.app[_PARTS].dashboard
    scope = _scope(identity)
    after = request.query.get("after") or None
    page, backends = await asyncio.gather(
        dashboard.batches.list(scope, after=after, limit=LIST_LIMIT), dashboard.progress.backends()
    )
    progresses = await asyncio.gather(*(_progress_of(dashboard, scope, batch) for batch in page.items))
    rows = [views.row(batch, progress) for batch, progress in zip(page.items, progresses, strict=True)]
    backend_rows = [views.backend_row(view) for view in backends]
    query = f"?after={quote(after, safe='')}" if after else ""
    return {
        "identity": identity,
        "rows": rows,
        "after": after,
        "next_after": rows[-1].id if rows and page.has_more else None,
        "backends": backend_rows,
        "troubled": [backend for backend in backend_rows if backend.trouble],
        "base_url": _api_base_url(request),
        "live_url": f"/ui/fragments/batches{query}",
    }


async def batch_list(request: web.Request) -> web.Response:
    identity = await _identity(request)
    if identity is None:
        return _sign_in_page(request)
    return _render(request, "batches.html", await _list_context(request, identity))


async def batch_list_fragment(request: web.Request) -> web.Response:
    identity = await _identity(request)
    if identity is None:
        return _signed_out()
    return _fragment(request, "batches_live.html", await _list_context(request, identity), live=True)


# -- one batch -------------------------------------------------------------------------------------


async def _batch_context(request: web.Request, identity: Identity) -> dict[str, Any]:
    """Raises NotFound for a batch this identity may not see, as for one that does not exist."""
    dashboard = request.app[_PARTS].dashboard
    scope = _scope(identity)
    batch_id = request.match_info["batch_id"]
    batch = await dashboard.batches.retrieve(scope, batch_id)
    progress, groups = await asyncio.gather(
        dashboard.progress.progress(scope, batch.id), dashboard.progress.error_groups(scope, batch.id)
    )
    group_views = views.error_groups(groups)
    return {
        "identity": identity,
        "batch": batch,
        "progress": progress,
        "status": str(progress.status),
        "active": views.is_active(progress.status),
        "can_cancel": views.can_cancel(progress.status),
        "bar": views.bar(progress.total, progress.completed, progress.failed),
        "rate": views.rate(progress.rate_per_s),
        "eta": views.eta(progress),
        "chart": views.chart(progress.samples, progress.total),
        "groups": group_views,
        "all_failed": views.every_line_failed(progress),
        "cost": views.cost(dashboard.costs.batch_cost(batch)),
        "file_query": f"?project={quote(batch.project, safe='')}",
        "live_url": f"/ui/fragments/batches/{quote(batch.id, safe='')}",
    }


async def batch_page(request: web.Request) -> web.Response:
    identity = await _identity(request)
    if identity is None:
        return _sign_in_page(request)
    try:
        context = await _batch_context(request, identity)
    except NotFound:
        return _not_found(request, identity, f"batch {request.match_info['batch_id']}")
    return _render(request, "batch.html", context)


async def batch_fragment(request: web.Request) -> web.Response:
    identity = await _identity(request)
    if identity is None:
        return _signed_out()
    try:
        context = await _batch_context(request, identity)
    except NotFound:
        return web.Response(status=404, text="No such batch.", headers={"Cache-Control": "no-store"})
    return _fragment(request, "batch_live.html", context, live=bool(context["active"]))


async def cancel(request: web.Request) -> web.Response:
    identity = await _identity(request)
    if identity is None:
        return _sign_in_page(request)
    if not auth.same_origin(request):
        return _problem(
            request, identity, 403, "Refused", "A cancel must come from this dashboard's own page."
        )
    dashboard = request.app[_PARTS].dashboard
    try:
        batch = await dashboard.batches.retrieve(_scope(identity), request.match_info["batch_id"])
    except NotFound:
        return _not_found(request, identity, f"batch {request.match_info['batch_id']}")
    with contextlib.suppress(Conflict):  # it ended meanwhile: its page says how
        await dashboard.batches.cancel(batch.project, batch.id)
    return _see_other(f"/ui/batches/{quote(batch.id, safe='')}")


async def download(request: web.Request) -> web.StreamResponse:
    identity = await _identity(request)
    if identity is None:
        return _sign_in_page(request)
    project = identity.project
    if identity.admin:
        project = request.query.get("project") or project
    file_id = request.match_info["file_id"]
    try:
        file, chunks = await request.app[_PARTS].dashboard.files.content(project, file_id)
    except NotFound:
        return _not_found(request, identity, f"file {file_id}")
    except InvalidRequest as error:
        return _problem(request, identity, 400, "Not downloadable", error.message)
    name = file.filename or file.id
    fallback = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:200] or "download"
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Length": str(file.bytes),
            "Content-Disposition": f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name)}",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        }
    )
    await response.prepare(request)
    async for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


# -- costs -----------------------------------------------------------------------------------------


async def costs_page(request: web.Request) -> web.Response:
    """Usage and cost per day, project, model and source over the last `?days=` days (30 by default)."""
    identity = await _identity(request)
    if identity is None:
        return _sign_in_page(request)
    days = costs_view.period_days(request.query.get("days"))
    if days is None:
        text = f"Choose a period of 1 to {costs_view.MAX_DAYS} days, for example /ui/costs?days=7."
        return _problem(request, identity, 400, "Not a period", text)
    dashboard = request.app[_PARTS].dashboard
    now = int(dashboard.clock.now())
    start = costs_view.period_start(now, days)
    rows = await dashboard.costs.costs(_scope(identity), start, None)
    page = costs_view.costs_page(rows)
    context = {
        "identity": identity,
        "page": page,
        "price_snippet": costs_view.price_snippet(page.unpriced),
        "days": days,
        "periods": costs_view.PERIODS,
        "first_day": day_name(start),
        "last_day": day_name(now // DAY_S * DAY_S),
        "has_prices": bool(dashboard.costs.prices.prices),
        "base_url": _api_base_url(request),
    }
    return _render(request, "costs.html", context)


# -- signing in and out ----------------------------------------------------------------------------


async def sign_in_form(request: web.Request) -> web.Response:
    if await _identity(request) is not None:
        return _see_other("/")
    return _sign_in_page(request, status=200)


async def sign_in(request: web.Request) -> web.Response:
    if not auth.same_origin(request):
        return _problem(request, None, 403, "Refused", "Sign in from this dashboard's own page.")
    form = await request.post()
    key, target = form.get("key"), form.get("next")
    key = key if isinstance(key, str) else ""
    target = auth.local_path(target if isinstance(target, str) else None)
    if await auth.check_key(request.app[_PARTS].authenticator, key) is None:
        refused = "That key was not accepted. Use one of this server's API keys."
        return _sign_in_page(request, refused, target=target)
    response = _see_other(target)
    auth.keep_key(response, request, key)
    return response


async def sign_out(request: web.Request) -> web.Response:
    if not auth.same_origin(request):
        return _problem(
            request, await _identity(request), 403, "Refused", "Sign out from this dashboard's own page."
        )
    response = _see_other("/")
    auth.forget_key(response, request)
    return response
