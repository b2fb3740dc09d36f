"""The composition root: the one place that builds stores, blobs, backends, services and the engine."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from overnight.backends.base import Backend
from overnight.backends.http import HttpBackend
from overnight.backends.router import Router
from overnight.blobs.local import LocalBlobStore
from overnight.config import ConfigError, Settings
from overnight.domain.clock import Clock, SystemClock
from overnight.domain.ids import IdGenerator
from overnight.engine.scheduler import RateLimits, RetryPolicy
from overnight.engine.worker import Engine
from overnight.http.auth import Authenticator
from overnight.probes import probe_for
from overnight.services.batches import BatchesService
from overnight.services.files import FilesService
from overnight.store.sqlite import SqliteStore


def build_backends(settings: Settings, environ: Mapping[str, str] | None = None) -> list[Backend]:
    environ = os.environ if environ is None else environ
    backends: list[Backend] = []
    for index, config in enumerate(settings.all_backends()):
        api_key = None
        if config.api_key_env:
            api_key = environ.get(config.api_key_env)
            if not api_key:
                where = (
                    "upstream_api_key_env" if config.name == "upstream" else f"backends[{index}].api_key_env"
                )
                raise ConfigError(f"setting '{where}': environment variable {config.api_key_env} is not set")
        backends.append(
            HttpBackend(
                config,
                api_key=api_key,
                timeout_s=settings.request_timeout_s,
                max_attempts=settings.max_attempts,
                base_delay_s=settings.retry_base_delay_s,
                max_delay_s=settings.retry_max_delay_s,
            )
        )
    return backends


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.max_attempts,
        base_delay_s=settings.retry_base_delay_s,
        max_delay_s=settings.retry_max_delay_s,
    )


def rate_limits(settings: Settings) -> dict[str, RateLimits]:
    return {
        config.name: RateLimits(config.requests_per_minute, config.tokens_per_minute)
        for config in settings.all_backends()
    }


@dataclass
class Runtime:
    settings: Settings
    store: SqliteStore
    blobs: LocalBlobStore
    router: Router
    files: FilesService
    batches: BatchesService
    engine: Engine
    authenticator: Authenticator

    async def close(self) -> None:
        await self.router.close()
        await self.store.close()


async def open_runtime(settings: Settings, clock: Clock | None = None) -> Runtime:
    clock = clock or SystemClock()
    probe = probe_for(settings.crash_at)
    router = Router(build_backends(settings))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(settings.data_dir / "overnight.db")
    await store.open()
    blobs = LocalBlobStore(settings.data_dir / "blobs")
    ids = IdGenerator(clock)
    engine = Engine(
        store,
        blobs,
        router,
        clock,
        flush_interval_s=settings.result_flush_interval_s,
        poll_interval_s=settings.worker_poll_interval_s,
        retry=retry_policy(settings),
        rates=rate_limits(settings),
        probe=probe,
        shutdown_grace_s=settings.shutdown_grace_s,
        lease_s=settings.lease_s,
    )
    await router.start()
    return Runtime(
        settings=settings,
        store=store,
        blobs=blobs,
        router=router,
        files=FilesService(store, blobs, ids, clock, probe),
        batches=BatchesService(store, ids, clock, settings.completion_windows, on_change=engine.wake),
        engine=engine,
        authenticator=Authenticator(settings.api_keys),
    )
