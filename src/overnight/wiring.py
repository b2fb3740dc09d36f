"""The composition root: the one place that builds stores, blobs, backends, services and the engine."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from overnight.backends.base import Backend
from overnight.backends.http import HttpBackend
from overnight.backends.local import embeddings
from overnight.backends.local.backend import KNOWN_MODELS, LocalBackend
from overnight.backends.local.base import LocalModel
from overnight.backends.router import Router
from overnight.blobs.base import BlobStore
from overnight.blobs.local import LocalBlobStore
from overnight.config import ConfigError, Secrets, Settings
from overnight.config_limits import storage_quotas, upload_sizes
from overnight.config_traffic import read_interval_s
from overnight.config_webhooks import subscriptions as webhook_subscriptions
from overnight.domain.clock import Clock, SystemClock
from overnight.domain.ids import IdGenerator
from overnight.domain.pricing import PriceTable
from overnight.domain.tokens import TokenBudgets
from overnight.engine.background_traffic import TrafficSettings
from overnight.engine.feed import RateLimits
from overnight.engine.load_signals import LoadPoller, LoadSignals, LoadSource
from overnight.engine.prefix_queue import PrefixOrdering
from overnight.engine.retry import RetryPolicy
from overnight.engine.scheduler import BackendScheduler
from overnight.engine.worker import Engine, EngineSettings, new_worker_id
from overnight.http.auth import Authenticator
from overnight.probes import Probe, probe_for
from overnight.services.background import BackgroundResponses
from overnight.services.batches import BatchesService
from overnight.services.costs import CostsService
from overnight.services.files import FilesService
from overnight.services.idempotency import IdempotentCreates
from overnight.services.models import ModelsService
from overnight.services.partial import PartialResults
from overnight.services.progress import ProgressService
from overnight.services.retries import RetryService
from overnight.services.sync import SyncService, SyncSettings
from overnight.services.sync_usage import SyncUsageRecorder
from overnight.services.upload_limits import UploadLimits
from overnight.store.base import MetadataStore
from overnight.store.sqlite import SqliteStore
from overnight.store.sqlite import migrate as sqlite_migrate
from overnight.webhooks.backoff import RetrySchedule
from overnight.webhooks.dispatcher import DeliverySettings, WebhookDispatcher

log = logging.getLogger("overnight")
CHAT_MODULE = "overnight.backends.local.chat"
HEALTH_TIMEOUT_S = 2.0
FIRST_RETRY_S, LAST_RETRY_S = 1.0, 30.0  # waiting for a store that does not answer at start


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


def engine_settings(settings: Settings, worker_id: str | None = None) -> EngineSettings:
    return EngineSettings(
        flush_interval_s=settings.result_flush_interval_s,
        poll_interval_s=settings.worker_poll_interval_s,
        retry=retry_policy(settings),
        rates=rate_limits(settings),
        prefix=prefix_orderings(settings),
        traffic=traffic_settings(settings),
        shutdown_grace_s=settings.shutdown_grace_s,
        lease_s=settings.lease_s,
        max_shards=settings.worker_max_shards,
        lines_per_shard=settings.shard_lines,
        subscriptions=webhook_subscriptions(settings.webhooks),
        worker_id=worker_id,
    )


def build_webhooks(
    settings: Settings, secrets: Secrets, store: MetadataStore, clock: Clock, worker_id: str, probe: Probe
) -> WebhookDispatcher | None:
    """The sender of the configured webhooks (None when none is configured)."""
    subscriptions = webhook_subscriptions(settings.webhooks)
    if not subscriptions:
        return None
    schedule = RetrySchedule(base_s=settings.webhook_retry_base_s, retry_for_s=settings.webhook_retry_for_s)
    delivery = DeliverySettings(timeout_s=settings.webhook_timeout_s, schedule=schedule)
    keys = secrets.webhook_secrets
    return WebhookDispatcher(store, subscriptions, keys, clock, worker_id, delivery, probe=probe)


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
            prefix=prefix_orderings(self.settings).get(backend.name),
            traffic=traffic_settings(self.settings).get(backend.name),
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


def prefix_orderings(settings: Settings) -> dict[str, PrefixOrdering]:
    """The backends with `prefix_ordering` on, and how far their feeds read ahead."""
    return {
        config.name: PrefixOrdering(config.prefix_lookahead, config.prefix_lookahead_mb * 1_000_000)
        for config in settings.all_backends()
        if config.prefix_ordering
    }


def traffic_settings(settings: Settings) -> dict[str, TrafficSettings]:
    """How each backend shares its server: `traffic`, `target_queue_delay_ms`, `priority`
    (docs/background-traffic.md)."""
    return {
        config.name: TrafficSettings(
            config.traffic == "background",
            config.target_queue_delay_ms / 1000,
            config.priority,
            config.occupancy_headroom,
        )
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


def where_data_lives(settings: Settings) -> tuple[str, str]:
    """The store and the blobs in words for a log line, never with a password or a key."""
    if settings.database_url is None:
        store = f"SQLite {(settings.data_dir / 'overnight.db').resolve()}"
    else:
        url = urlsplit(settings.database_url)
        store = f"PostgreSQL {url.hostname or 'socket'}:{url.port or 5432}/{url.path.strip('/')}"
    if settings.blob_url is None:
        blobs = f"data folder {(settings.data_dir / 'blobs').resolve()}"
    else:
        endpoint = settings.s3_endpoint_url or "AWS"
        blobs = f"{settings.blob_url} at {urlsplit(endpoint).netloc or endpoint}"
    return store, blobs


def log_startup(runtime: Runtime) -> None:
    settings = runtime.settings
    store, blobs = where_data_lives(settings)
    if settings.database_url is None and settings.blob_url is None:
        log.info(
            "data folder %s (database overnight.db, file contents in blobs/)", settings.data_dir.resolve()
        )
    else:
        log.info("metadata in %s; file contents in %s", store, blobs)
    for backend in runtime.router.backends:
        log.info("%s", describe_backend(backend))
    if not runtime.router.backends:
        log.warning("no backend and no local model: every batch will fail validation (see --upstream)")
    keys = len(settings.api_keys)
    log.info("%s", f"{keys} API key(s) in the config file" if keys else "no API keys in the config file")
    for webhook in settings.webhooks:
        of = f"project {webhook.project}" if webhook.project is not None else "every project"
        log.info("webhook endpoint %s gets %s of %s", webhook.name, ", ".join(webhook.events), of)


def build_sync(
    settings: Settings, store: MetadataStore, engine: Engine, router: Router, clock: Clock
) -> SyncService:
    """The synchronous endpoints' service, on the engine's schedulers: in a process without the worker
    (`serve --no-worker`) they are made for the synchronous requests alone and hold their share of each
    backend's global slots only while such requests are waiting or running (docs/sync.md)."""
    forwarded = frozenset(config.name for config in settings.all_backends() if config.forward_service_tier)
    service = SyncService(
        router.backend_for,
        engine.scheduler,
        clock,
        SyncUsageRecorder(store, clock, interval_s=settings.sync_usage_flush_interval_s),
        SyncSettings(
            flex_timeout_s=settings.flex_timeout_s, tier_forwarded=forwarded, retry=retry_policy(settings)
        ),
    )
    engine.metrics.gauges.append(service.metrics.render)
    return service


@dataclass
class Runtime:
    settings: Settings
    store: MetadataStore
    blobs: BlobStore
    router: Router
    files: FilesService
    batches: BatchesService
    models: ModelsService
    engine: Engine
    authenticator: Authenticator
    costs: CostsService
    progress: ProgressService
    webhooks: WebhookDispatcher | None = None  # run where the engine runs
    background: BackgroundResponses | None = None  # POST /v1/responses with background: true
    partial: PartialResults | None = None  # file content by lines, result files while a batch runs
    retries: RetryService | None = None  # POST /v1/batches/{id}/retry
    idempotency: IdempotentCreates | None = None  # its keys are swept where the engine runs
    sync: SyncService | None = None  # the synchronous endpoints (docs/sync.md)
    load: LoadSignals | None = None  # backends' load_metrics_url, read where the engine runs

    async def close(self) -> None:
        await self.router.close()
        await self.store.close()
        await self.blobs.close()

    async def health(self) -> dict[str, str]:
        """Whether the store and the blobs answer now (what /health reports)."""
        store, blobs = await asyncio.gather(
            _answers(self.store.get_batch("batch_health_check")), _answers(self.blobs.exists("health/check"))
        )
        return {"store": store, "blobs": blobs}


async def _answers(call: Awaitable[object]) -> str:
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S):
            await call
    except Exception as exc:  # the type only: a message may hold a host name or worse
        return f"unavailable ({type(exc).__name__})"
    return "ok"


def build_store(settings: Settings, clock: Clock) -> MetadataStore:
    """PostgreSQL when `database_url` is set, else SQLite in the data folder."""
    if settings.database_url is not None:
        from overnight.store.postgres import PostgresStore

        # pg_stat_activity tells which process each connection serves
        return PostgresStore(settings.database_url, clock=clock, application_name=f"overnight-{os.getpid()}")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteStore(settings.data_dir / "overnight.db", clock=clock)


def build_blobs(settings: Settings, secrets: Secrets) -> BlobStore:
    """S3 when `blob_url` is set, else the data folder."""
    if settings.blob_url is not None:
        from overnight.blobs.s3 import S3BlobStore

        url = urlsplit(settings.blob_url)
        return S3BlobStore(
            url.netloc,
            url.path.strip("/"),
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=secrets.s3_access_key_id,
            secret_access_key=secrets.s3_secret_access_key,
        )
    return LocalBlobStore(settings.data_dir / "blobs")


async def migrate(settings: Settings) -> list[int]:
    """Apply the store's missing migrations (`overnight migrate`); the versions applied."""
    if settings.database_url is not None:
        from overnight.store import postgres

        return await postgres.migrate(settings.database_url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return await sqlite_migrate(settings.data_dir / "overnight.db", int(SystemClock().now()))


async def open_patiently(open_: Callable[[], Awaitable[None]], setting: str, what: str) -> None:
    """Open a store, waiting for it while it does not answer yet (logging each try); a ConfigError
    naming the setting when it answers that the setting is wrong."""
    delay = FIRST_RETRY_S
    while True:
        try:
            await open_()
            return
        except (ConnectionError, OSError) as exc:
            if not getattr(exc, "transient", False):
                raise ConfigError(f"setting '{setting}': {exc}") from None
            log.warning("%s does not answer (%s); trying again in %.0f s", what, exc, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, LAST_RETRY_S)


async def open_stores(settings: Settings, secrets: Secrets, clock: Clock) -> tuple[MetadataStore, BlobStore]:
    """The store (migrated) and the blobs, open, once both answer."""
    store_words, blob_words = where_data_lives(settings)
    store = build_store(settings, clock)
    await open_patiently(store.open, "database_url", f"the metadata store ({store_words})")
    blobs = build_blobs(settings, secrets)
    try:
        await open_patiently(blobs.open, "blob_url", f"the blob store ({blob_words})")
    except BaseException:
        await store.close()
        raise
    return store, blobs


async def open_runtime(settings: Settings, secrets: Secrets, clock: Clock | None = None) -> Runtime:
    clock = clock or SystemClock()
    probe = probe_for(settings.crash_at)
    router = Router(build_backends(settings, secrets))
    store, blobs = await open_stores(settings, secrets, clock)
    ids = IdGenerator(clock)
    worker_id = new_worker_id()
    webhooks = build_webhooks(settings, secrets, store, clock, worker_id, probe)
    engine = Engine(
        store,
        blobs,
        router,
        clock,
        engine_settings(settings, worker_id),
        probe=probe,
        on_event=webhooks.wake if webhooks is not None else None,
    )
    if webhooks is not None:
        engine.metrics.gauges.append(webhooks.metrics.render)
    await router.start()
    idempotency = IdempotentCreates(store, clock)  # one for every create that takes a key
    runtime = Runtime(
        settings=settings,
        store=store,
        blobs=blobs,
        router=router,
        files=FilesService(
            store, blobs, ids, clock, probe, idempotency, upload_limits(settings, store, clock)
        ),
        batches=BatchesService(
            store,
            ids,
            clock,
            settings.completion_windows,
            on_change=engine.wake,
            blobs=blobs,
            budgets=TokenBudgets(dict(settings.token_budgets), settings.default_token_budget),
            subscriptions=webhook_subscriptions(settings.webhooks),
            idempotency=idempotency,
            creation_rate_per_hour=settings.batch_create_rate_per_hour,
        ),
        models=ModelsService(router.backends, router.backend_for, clock),
        engine=engine,
        authenticator=Authenticator(settings.api_keys, store),  # and the keys kept in the store
        costs=CostsService(store, PriceTable(settings.prices)),
        progress=ProgressService(store, clock),
        webhooks=webhooks,
    )
    runtime.sync = build_sync(settings, store, engine, router, clock)
    runtime.load = build_load_signals(settings)
    engine.load_reading = runtime.load.reading  # what background backends' windows follow
    engine.metrics.gauges.append(runtime.load.render)
    runtime.background = BackgroundResponses(
        store,
        blobs,
        runtime.batches,
        ids,
        clock,
        router.serves,
        engine.wake,
        window=settings.background_completion_window,
        keeps_service_tier=service_tier_keeper(settings, router),
    )
    runtime.idempotency = idempotency
    early = settings.early_result_file_ids
    runtime.partial = PartialResults(store, runtime.files, early_result_file_ids=early)
    runtime.retries = RetryService(store, blobs, ids, clock, runtime.batches, runtime.idempotency)
    return runtime


def upload_limits(settings: Settings, store: MetadataStore, clock: Clock) -> UploadLimits:
    """Each upload's size limit by purpose and its project's storage quota (docs/limits.md)."""
    return UploadLimits(store, clock, upload_sizes(settings), storage_quotas(settings))


def build_load_signals(settings: Settings) -> LoadSignals:
    pollers = [
        LoadPoller(
            LoadSource(b.name, b.load_metrics_url, b.load_metrics_kind),
            interval_s=read_interval_s(b.traffic, b.load_metrics_interval_s),
        )
        for b in settings.backends
        if b.load_metrics_url is not None
    ]
    return LoadSignals(pollers)


def service_tier_keeper(settings: Settings, router: Router) -> Callable[[str], bool]:
    """Whether a model's backend gets `service_tier` as sent (`forward_service_tier`, docs/sync.md)."""
    forwarded = frozenset(config.name for config in settings.all_backends() if config.forward_service_tier)

    def keeps(model: str) -> bool:
        backend = router.backend_for(model)
        return backend is not None and backend.name in forwarded

    return keeps
