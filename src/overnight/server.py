"""`overnight serve`: the HTTP API and the in-process worker, until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web

from overnight.config import ConfigError, Secrets, Settings
from overnight.http.app import create_app
from overnight.wiring import Runtime, log_startup, open_runtime

log = logging.getLogger("overnight")
CLEANUP_S = 10.0  # after the engine's own grace period
ABANDONED_UPLOAD_S = 6 * 3600  # an upload still without its record after this long was abandoned


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


async def serve(settings: Settings, secrets: Secrets) -> None:
    sock = listening_socket(settings.host, settings.port)
    with sock, exclusive_data_dir(settings.data_dir):
        runtime = await open_runtime(settings, secrets)
        log_startup(runtime)
        # This process holds the data folder's lock, so any lease in it belongs to a dead server.
        await runtime.store.release_all_leases()
        discarded = await runtime.blobs.discard_unfinished()
        if discarded:
            log.info("discarded %d unfinished blob write(s) of an earlier run", discarded)
        orphans = await runtime.files.sweep_abandoned_uploads(started_before=int(time.time()) + 1)
        if orphans:
            log.info("deleted the content of %d upload(s) an earlier run left without a record", orphans)
        app = create_app(
            runtime.files,
            runtime.batches,
            runtime.authenticator,
            runtime.engine.metrics_text,
            runtime.models,
        )
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.SockSite(runner, sock)
        await site.start()
        workers = [asyncio.create_task(runtime.engine.run()), asyncio.create_task(_sweep_files(runtime))]
        log.info("Overnight listening on http://%s:%d/v1", settings.host, settings.port)
        try:
            await _wait_for_signal()
            log.info("shutting down")
        finally:
            for task in workers:
                task.cancel()
            await asyncio.wait(workers, timeout=settings.shutdown_grace_s + CLEANUP_S)
            await runner.cleanup()
            await runtime.close()
