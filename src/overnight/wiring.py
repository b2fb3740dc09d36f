"""The composition root: the one place that builds stores, blobs, backends, services and the engine."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from overnight.backends.base import Backend
from overnight.backends.http import HttpBackend
from overnight.backends.local import embeddings
from overnight.backends.local.backend import KNOWN_MODELS, LocalBackend
from overnight.backends.local.base import LocalModel
from overnight.backends.router import Router
from overnight.blobs.local import LocalBlobStore
from overnight.config import ConfigError, Secrets, Settings
from overnight.domain.clock import Clock, SystemClock
from overnight.domain.ids import IdGenerator
from overnight.engine.feed import RateLimits
from overnight.engine.retry import RetryPolicy
from overnight.engine.scheduler import BackendScheduler
from overnight.engine.worker import Engine, EngineSettings
from overnight.http.auth import Authenticator
from overnight.probes import probe_for
from overnight.services.batches import BatchesService
from overnight.services.files import FilesService
from overnight.services.models import ModelsService
from overnight.store.sqlite import SqliteStore

log = logging.getLogger("overnight")
CHAT_MODULE = "overnight.backends.local.chat"


def _chat_model() -> LocalModel | None:
    """The chat model, where its module (and llama-cpp-python and the GGUF it needs) is installed."""
    try:
        module = importlib.import_module(CHAT_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name == CHAT_MODULE:
            return None
        raise
    load = getattr(module, "load_chat_model", None)
    model: LocalModel | None = load() if callable(load) else None
    return model


def local_models() -> list[LocalModel]:
    """The local models installed here."""
    models: list[LocalModel] = []
    if embeddings.is_available():
        models.append(embeddings.MiniLmEmbeddings())
    else:
        log.warning("local model %s is not installed; not serving it", embeddings.MODEL_NAME)
    chat = _chat_model()
    if chat is not None:
        models.append(chat)
    return models


def build_local_backend(settings: Settings, models: list[LocalModel] | None = None) -> LocalBackend | None:
    """The backend of the local models (None when they are off or none is installed)."""
    if not settings.local_models:
        if settings.model_aliases:
            raise ConfigError("setting 'model_aliases': needs local_models = true")
        return None
    for index, config in enumerate(settings.backends):
        if config.name == LocalBackend.name:
            raise ConfigError(
                f"setting 'backends[{index}].name': {config.name!r} is the name of the local models' backend"
            )
    models = local_models() if models is None else models
    names = {model.name for model in models}
    aliases: dict[str, str] = {}
    for alias, target in settings.model_aliases:
        where = f"model_aliases.{alias}"
        if target not in KNOWN_MODELS:
            known = ", ".join(KNOWN_MODELS)
            raise ConfigError(f"setting '{where}': {target!r} is not a local model (one of {known})")
        if alias in KNOWN_MODELS:
            raise ConfigError(f"setting '{where}': {alias!r} is already the name of a local model")
        if target in names:
            aliases[alias] = target
        else:
            log.warning("alias %s not served: local model %s is not installed here", alias, target)
    return LocalBackend(models, aliases) if models else None


def build_backends(settings: Settings, secrets: Secrets, local: LocalBackend | None = None) -> list[Backend]:
    """The configured backends, the local models (if on), then `upstream` as a catch-all.

    `local` replaces the local backend built from settings (tests)."""
    backends: list[Backend] = [
        HttpBackend(
            config, api_key=secrets.upstream_keys.get(config.name), timeout_s=settings.request_timeout_s
        )
        for config in settings.all_backends()
    ]
    local = build_local_backend(settings) if local is None else local
    if local is not None:
        backends.insert(len(settings.backends), local)
    return backends


def engine_settings(settings: Settings) -> EngineSettings:
    return EngineSettings(
        flush_interval_s=settings.result_flush_interval_s,
        poll_interval_s=settings.worker_poll_interval_s,
        retry=retry_policy(settings),
        rates=rate_limits(settings),
        shutdown_grace_s=settings.shutdown_grace_s,
        lease_s=settings.lease_s,
    )


@dataclass
class Offline:
    """What `overnight run` needs: the backends, and a scheduler for the one a file runs on."""

    router: Router
    clock: Clock
    settings: Settings

    def scheduler(self, backend: Backend) -> BackendScheduler:
        return BackendScheduler(
            backend,
            self.clock,
            retry=retry_policy(self.settings),
            rates=rate_limits(self.settings).get(backend.name),
        )


def build_offline(settings: Settings, secrets: Secrets) -> Offline:
    return Offline(Router(build_backends(settings, secrets)), SystemClock(), settings)


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


def describe_backend(backend: Backend) -> str:
    """A backend in a log line: where it is and what it serves, never its key."""
    if isinstance(backend, HttpBackend):
        url = urlsplit(backend.config.base_url)
        netloc = url.netloc.rpartition("@")[2]  # never credentials written into the URL
        where = urlunsplit((url.scheme, netloc, url.path, "", ""))
        models = ", ".join(backend.config.models)
        return (
            f"backend {backend.name} at {where} serves {models} (max_concurrency {backend.max_concurrency})"
        )
    if isinstance(backend, LocalBackend):
        return f"local models: {', '.join(backend.model_names)}"
    return f"backend {backend.name}"


def log_startup(runtime: Runtime) -> None:
    settings = runtime.settings
    log.info("data folder %s (database overnight.db, file contents in blobs/)", settings.data_dir.resolve())
    for backend in runtime.router.backends:
        log.info("%s", describe_backend(backend))
    if not runtime.router.backends:
        log.warning("no backend and no local model: every batch will fail validation (see --upstream)")
    keys = len(settings.api_keys)
    log.info("%s", f"{keys} API key(s) configured" if keys else "no API keys configured: any key is accepted")


@dataclass
class Runtime:
    settings: Settings
    store: SqliteStore
    blobs: LocalBlobStore
    router: Router
    files: FilesService
    batches: BatchesService
    models: ModelsService
    engine: Engine
    authenticator: Authenticator

    async def close(self) -> None:
        await self.router.close()
        await self.store.close()


async def open_runtime(settings: Settings, secrets: Secrets, clock: Clock | None = None) -> Runtime:
    clock = clock or SystemClock()
    probe = probe_for(settings.crash_at)
    router = Router(build_backends(settings, secrets))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(settings.data_dir / "overnight.db")
    await store.open()
    blobs = LocalBlobStore(settings.data_dir / "blobs")
    ids = IdGenerator(clock)
    engine = Engine(store, blobs, router, clock, engine_settings(settings), probe=probe)
    await router.start()
    return Runtime(
        settings=settings,
        store=store,
        blobs=blobs,
        router=router,
        files=FilesService(store, blobs, ids, clock, probe),
        batches=BatchesService(store, ids, clock, settings.completion_windows, on_change=engine.wake),
        models=ModelsService(router.backends, router.backend_for, clock),
        engine=engine,
        authenticator=Authenticator(settings.api_keys),
    )
