"""`overnight serve` and `overnight worker`: the HTTP API and/or the worker, until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from overnight import __version__
from overnight.binding import refuse_open_binding
from overnight.config import ConfigError, Secrets, Settings
from overnight.http.app import create_app, create_probe_app
from overnight.http.dashboard import Dashboard
from overnight.http.limits import request_limits
from overnight.http.slow_clients import handler_args, site_for
from overnight.wiring import Runtime, log_startup, open_runtime

log = logging.getLogger("overnight")
CLEANUP_S = 10.0  # after the engine's own grace period
ABANDONED_UPLOAD_S = 6 * 3600  # an upload still without its record after this long was abandoned
ABANDONED_WRITE_S = 8 * 86400  # past the longest completion window: no shard's result part runs so long


@contextlib.contextmanager
def exclusive_data_dir(data_dir: Path) -> Iterator[None]:
    """One server per data folder: its worker owns every batch stored there."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"setting 'data_dir': {str(data_dir)!r} is in use by another Overnight server"
            ) from None
        yield


async def _sweep_files(runtime: Runtime) -> None:
    while True:
        try:
            removed = await runtime.files.sweep_expired()
            if removed:
                log.info("expired files deleted count=%d", removed)
            stale = int(time.time()) - ABANDONED_UPLOAD_S
            abandoned = await runtime.files.sweep_abandoned_uploads(stale)
            if abandoned:
                log.info("deleted the content of %d upload(s) that never got a record", abandoned)
            if runtime.idempotency is not None:
                await runtime.idempotency.sweep()  # keys first used over a day ago
        except Exception:
            log.exception("file sweep failed")
        await asyncio.sleep(runtime.settings.file_sweep_interval_s)


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything is created, so a port in use changes nothing."""
    try:
        return socket.create_server((host, port), reuse_port=False, backlog=1024)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"setting 'port': cannot listen on {host}:{port}: {reason}") from None


@dataclass(frozen=True)
class Roles:
    """What one process runs: the HTTP API (on settings.port), the worker (the engine and the file
    sweep), and for a worker without the API, an optional port for /metrics and /health."""

    api: bool = True
    worker: bool = True
    metrics_port: int | None = None

    @property
    def name(self) -> str:
        return "+".join(role for role, on in (("api", self.api), ("worker", self.worker)) if on)


@contextlib.contextmanager
def _embedded_lock(settings: Settings) -> Iterator[bool]:
    """On SQLite one server owns the data folder (True); on PostgreSQL any number share it (False)."""
    if settings.database_url is not None:
        yield False
        return
    with exclusive_data_dir(settings.data_dir):
        yield True


async def _recover_alone(runtime: Runtime) -> None:
    """What a server that has proved it is the only one cleans up after a dead predecessor."""
    await runtime.store.release_all_leases()
    discarded = await runtime.blobs.discard_unfinished()
    if discarded:
        log.info("discarded %d unfinished blob write(s) of an earlier run", discarded)
    orphans = await runtime.files.sweep_abandoned_uploads(started_before=int(time.time()) + 1)
    if orphans:
        log.info("deleted the content of %d upload(s) an earlier run left without a record", orphans)


async def _check_binding(runtime: Runtime) -> None:
    """Refuse (closing the runtime) to serve open beyond loopback unless told to (overnight/binding.py)."""
    settings = runtime.settings
    open_ = await runtime.authenticator.check_open()
    try:
        refuse_open_binding(settings.host, open_=open_, allow_unauthenticated=settings.allow_unauthenticated)
    except ConfigError:
        await runtime.close()
        raise
    if open_:
        log.warning("no API keys (none configured, none stored): any bearer token is accepted")


async def serve(settings: Settings, secrets: Secrets, roles: Roles = Roles()) -> None:
    port = settings.port if roles.api else roles.metrics_port
    sock = listening_socket(settings.host, port) if port is not None else None
    with contextlib.ExitStack() as stack:
        if sock is not None:
            stack.enter_context(sock)
        alone = stack.enter_context(_embedded_lock(settings))
        runtime = await open_runtime(settings, secrets)
        log.info("Overnight %s starting: role=%s id=%s", __version__, roles.name, runtime.engine.worker_id)
        log_startup(runtime)
        if roles.api:
            await _check_binding(runtime)
        if alone:
            await _recover_alone(runtime)
        else:  # others may be writing now: only what is older than any write could be
            old = await runtime.blobs.discard_unfinished(started_before=time.time() - ABANDONED_WRITE_S)
            if old:
                log.info(
                    "discarded %d blob write(s) unfinished for over %d days", old, ABANDONED_WRITE_S // 86400
                )
        runner = await _start_http(runtime, roles, sock) if sock is not None else None
        tasks = []
        if roles.worker:
            tasks = [asyncio.create_task(runtime.engine.run()), asyncio.create_task(_sweep_files(runtime))]
            if runtime.webhooks is not None:  # delivered wherever batches end
                tasks.append(asyncio.create_task(runtime.webhooks.run()))
            if runtime.load is not None:  # the backends' load signals (docs/load-signal.md)
                tasks.append(asyncio.create_task(runtime.load.run()))
        try:
            await _wait_for_signal()
            log.info("shutting down")
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=settings.shutdown_grace_s + CLEANUP_S)
            if runner is not None:
                await runner.cleanup()
            if not roles.worker:  # the schedulers of the synchronous requests give their slots back
                await runtime.engine.shutdown()
            await runtime.close()


def api_app(runtime: Runtime) -> web.Application:
    """The HTTP API and the dashboard, as `overnight serve` runs them."""
    return create_app(
        runtime.files,
        runtime.batches,
        runtime.authenticator,
        runtime.engine.metrics_text,
        runtime.health,
        runtime.models,
        costs_service=runtime.costs,
        progress_service=runtime.progress,
        background_service=runtime.background,
        partial=runtime.partial,
        retries=runtime.retries,
        sync_service=runtime.sync,
        sync_body_limit=runtime.settings.sync_max_body_bytes,
        dashboard_services=Dashboard(runtime.batches, runtime.files, runtime.progress, runtime.costs),
        request_limits=request_limits(runtime.settings),
    )


async def _start_http(runtime: Runtime, roles: Roles, sock: socket.socket) -> web.AppRunner:
    app = api_app(runtime) if roles.api else create_probe_app(runtime.engine.metrics_text, runtime.health)
    keepalive = handler_args(runtime.settings.keepalive_timeout_s)  # http/slow_clients.py
    runner = web.AppRunner(app, access_log=None, handle_signals=False, **keepalive)
    await runner.setup()
    await site_for(runner, sock).start()
    host, port = sock.getsockname()[:2]
    if roles.api:
        log.info("Overnight listening on http://%s:%d/v1 (dashboard: http://%s:%d/)", host, port, host, port)
    else:
        log.info("metrics and health on http://%s:%d/metrics", host, port)
    return runner
