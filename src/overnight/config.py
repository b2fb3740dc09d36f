"""Typed settings, declared once. Precedence: CLI flag > OVERNIGHT_* environment > config file > default.

docs/settings.md documents every field below; tests/unit/test_settings_doc.py keeps it true.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from overnight import config_values as plain
from overnight.config_backends import BackendConfig as BackendConfig  # what callers import
from overnight.config_backends import parse_backends
from overnight.config_limits import parse_optional_quota, parse_storage_quotas
from overnight.config_prices import parse_optional_budget, parse_prices, parse_token_budgets
from overnight.config_values import ConfigError as ConfigError  # what callers catch
from overnight.config_webhooks import WebhookConfig, parse_webhooks, read_webhook_secrets
from overnight.domain.limits import parse_window
from overnight.domain.pricing import Price
from overnight.probes import POINTS

ENV_PREFIX = "OVERNIGHT_"


@dataclass(frozen=True, slots=True)
class ApiKey:
    key: str
    project: str
    admin: bool = False  # sees every project on the dashboard and in the cost figures


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class Settings:
    host: str = field(default="127.0.0.1", metadata=_help("Address the HTTP API listens on."))
    port: int = field(default=8000, metadata=_help("Port the HTTP API listens on."))
    data_dir: Path = field(
        default=Path("data"),
        metadata=_help("Folder for the SQLite database and file contents; created if missing."),
    )
    config: Path | None = field(default=None, metadata=_help("TOML config file to read settings from."))
    database_url: str | None = field(
        default=None,
        repr=False,  # it may hold a password
        metadata=_help(
            "PostgreSQL for metadata and coordination, `postgresql://user@host:5432/db`, shared by every "
            "API server and worker. Unset: SQLite in `data_dir`, one server."
        ),
    )
    blob_url: str | None = field(
        default=None,
        metadata=_help(
            "Object storage for file contents, `s3://bucket/prefix`; credentials come from "
            "`AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`. Unset: `data_dir`/blobs."
        ),
    )
    s3_endpoint_url: str | None = field(
        default=None,
        metadata=_help(
            "The S3 endpoint for `blob_url` (an S3-compatible server); default `AWS_ENDPOINT_URL`, else AWS."
        ),
    )
    s3_region: str | None = field(
        default=None, metadata=_help("The S3 region for `blob_url`; default `AWS_REGION`.")
    )
    upstream: str | None = field(
        default=None,
        metadata=_help(
            "Base URL of an OpenAI-compatible server (e.g. http://127.0.0.1:8001/v1) for every model that "
            "neither a `[[backends]]` entry nor a local model serves (those come first)."
        ),
    )
    upstream_api_key_env: str | None = field(
        default=None, metadata=_help("Name of the environment variable holding the key for `upstream`.")
    )
    upstream_max_concurrency: int = field(
        default=64, metadata=_help("Requests in flight to `upstream` at once.")
    )
    api_keys: tuple[ApiKey, ...] = field(
        default=(),
        metadata=_help(
            "API keys accepted beside those `overnight keys create` stores (docs/auth.md), and the project "
            "each belongs to. None here and none stored: any bearer token is accepted (local development). "
            "Environment form: `key1=project1,key2=project2`; file form: "
            "`[[api_keys]]` tables with `key`, `project` and optionally `admin = true` (an admin key "
            "sees every project on the API, the dashboard and in the costs)."
        ),
    )
    allow_unauthenticated: bool = field(
        default=False,
        metadata=_help(
            "Serve on a non-loopback `host` even with no API keys (none in `api_keys`, none made by "
            "`overnight keys create`), letting in anyone who can reach it. Off: such a server refuses to "
            "start (docs/auth.md)."
        ),
    )
    completion_windows: tuple[str, ...] = field(
        default=("24h",),
        metadata=_help(
            "Completion windows a batch may ask for, e.g. `24h,1h,7d` (units s, m, h, d). OpenAI accepts "
            "only `24h`."
        ),
    )
    background_completion_window: str = field(
        default="24h",
        metadata=_help(
            "How long a background response (`POST /v1/responses` with `background: true`) may wait and "
            "run before it fails; like a batch's completion window (docs/background.md)."
        ),
    )
    request_timeout_s: float = field(
        default=600.0, metadata=_help("Seconds one upstream attempt may take before it is abandoned.")
    )
    max_attempts: int = field(
        default=5, metadata=_help("Attempts per request (first try included) on 408/409/429/5xx/timeouts.")
    )
    retry_base_delay_s: float = field(
        default=0.5, metadata=_help("First retry delay; doubled on each attempt, with jitter.")
    )
    retry_max_delay_s: float = field(
        default=30.0, metadata=_help("Upper bound on one retry delay, `retry-after` included.")
    )
    result_flush_interval_s: float = field(
        default=0.05, metadata=_help("How often finished results are committed together (group commit).")
    )
    early_result_file_ids: bool = field(
        default=False,
        metadata=_help(
            "Show a batch's `output_file_id` and `error_file_id` from its creation, as Doubleword does, so "
            "clients built for Doubleword (`dw stream`, autobatcher) read its lines while it runs "
            "(docs/partial-results.md). Off: the Batch object is exactly OpenAI's (a stock client takes an "
            "output file id as finished). `true` or `false`."
        ),
    )
    worker_poll_interval_s: float = field(
        default=1.0, metadata=_help("How often the worker looks for work it was not woken for.")
    )
    file_sweep_interval_s: float = field(
        default=60.0, metadata=_help("How often files past their `expires_at` are deleted.")
    )
    lease_s: int = field(
        default=30,
        metadata=_help(
            "How long a worker's claim on a batch lasts without renewal (it renews it every "
            "`worker_poll_interval_s`); after that another worker may take the batch over."
        ),
    )
    shard_lines: int = field(
        default=5000,
        metadata=_help(
            "Lines per shard: a validated batch is divided into ranges of this many lines, which any worker "
            "may claim, so that many workers share one batch."
        ),
    )
    worker_max_shards: int = field(
        default=4, metadata=_help("Shards one worker runs at once (of any batches).")
    )
    shutdown_grace_s: float = field(
        default=10.0,
        metadata=_help(
            "On SIGTERM, how long requests in flight may take to answer before they are abandoned "
            "(and run again after a restart)."
        ),
    )
    log_level: str = field(default="info", metadata=_help("debug, info, warning or error."))
    crash_at: str | None = field(
        default=None,
        metadata=_help(
            "For crash tests only: kill the server (SIGKILL) the N-th time it reaches a named point, "
            "`point` or `point:N` (points are listed in src/overnight/probes.py)."
        ),
    )
    backends: tuple[BackendConfig, ...] = field(
        default=(),
        metadata=_help(
            "Model servers, as `[[backends]]` tables in the config file (`name`, `base_url`, `models`, "
            "`api_key_env`, `max_concurrency`, `requests_per_minute`, `tokens_per_minute`, "
            "`forward_service_tier`, `load_metrics_url`, `load_metrics_kind`, `load_metrics_interval_s`: "
            "docs/load-signal.md; "
            "`prefix_ordering`, `prefix_lookahead`, `prefix_lookahead_mb`: docs/prefix-ordering.md; "
            "`traffic`, `target_queue_delay_ms`, `priority`, `occupancy_headroom`: "
            "docs/background-traffic.md). Config file only."
        ),
    )
    local_models: bool = field(
        default=True,
        metadata=_help(
            "Serve the models Overnight carries (`all-minilm-l6-v2` for /v1/embeddings; "
            "`smollm2-135m-instruct` for chat where it is installed) in-process on the CPU, after the "
            "configured backends and before `upstream`. `true` or `false`."
        ),
    )
    model_aliases: tuple[tuple[str, str], ...] = field(
        default=(),
        metadata=_help(
            "Other names for the local models, as a `[model_aliases]` table in the config file "
            '(e.g. `"text-embedding-3-small" = "all-minilm-l6-v2"`); answers report the name asked for. '
            "Config file only."
        ),
    )
    webhooks: tuple[WebhookConfig, ...] = field(
        default=(),
        metadata=_help(
            "Endpoints that receive a signed event when a batch ends, as `[[webhooks]]` tables in the config "
            "file: `url`, `secret_env` (the variable holding its `whsec_` secret), and optionally `events` "
            "(default all four), `project` (default every project) and `name` (default from the url) "
            "(docs/webhooks.md). Config file only."
        ),
    )
    webhook_timeout_s: float = field(
        default=10.0, metadata=_help("Seconds one webhook delivery attempt may take before it has failed.")
    )
    webhook_retry_for_s: int = field(
        default=86400,
        metadata=_help(
            "How long after its event a webhook delivery that gets no 2xx is tried again (at least); then "
            "it is given up."
        ),
    )
    webhook_retry_base_s: float = field(
        default=5.0,
        metadata=_help(
            "Wait before a webhook's second attempt; doubled after each failed one (at most 1 h), with "
            "jitter."
        ),
    )
    prices: tuple[Price, ...] = field(
        default=(),
        metadata=_help(
            "What tokens cost, as `[[prices]]` tables in the config file: `model` (a glob; the first entry "
            "that matches a model wins), `input`, `output` and optionally `cached_input` in USD per million "
            "tokens, and `batch_discount` (default 0.5) or explicit `batch_input`, `batch_cached_input`, "
            "`batch_output`. A model without an entry shows no cost, never 0 (docs/costs.md). "
            "Config file only."
        ),
    )
    token_budgets: tuple[tuple[str, int], ...] = field(
        default=(),
        metadata=_help(
            "Enqueued-token budgets per project, as a `[token_budgets]` table in the config file "
            '(`"team-a" = 2000000`): a batch whose estimated input tokens would take those of the '
            "project's unfinished batches past it fails at once with `token_limit_exceeded` "
            "(docs/costs.md). Config file only."
        ),
    )
    default_token_budget: int | None = field(
        default=None,
        metadata=_help(
            "The enqueued-token budget of every project that `token_budgets` does not name. Unset: those "
            "projects have no budget."
        ),
    )
    flex_timeout_s: float = field(
        default=300.0,
        metadata=_help(
            'How long a synchronous request with `service_tier: "flex"` may wait for a slot on its backend '
            "(it queues with the batch work, this long being its deadline) before it is answered 429 "
            "`resource_unavailable` (docs/sync.md)."
        ),
    )
    sync_max_body_bytes: int = field(
        default=32 * 1024 * 1024,
        metadata=_help("The largest body a synchronous request may have (larger ones get a 413)."),
    )
    max_body_bytes: int = field(
        default=4 * 1024 * 1024,
        metadata=_help(
            "The largest JSON body of any other request (POST /v1/batches, retries, ...); larger ones get a "
            "413 `request_too_large`, before they are read when they say their size (docs/limits.md)."
        ),
    )
    max_upload_bytes: int = field(
        default=512 * 1024 * 1024,
        metadata=_help(
            "The largest file a `POST /v1/files` may upload (other purposes than `batch`); the upload is cut "
            "off as it streams, past it, with a 413 `file_too_large`, and nothing of it is kept."
        ),
    )
    max_batch_upload_bytes: int = field(
        default=209_715_200,
        metadata=_help("The largest file with `purpose=batch` (OpenAI's 200 MB); as `max_upload_bytes`."),
    )
    storage_quotas: tuple[tuple[str, int], ...] = field(
        default=(),
        metadata=_help(
            "Bytes each project's files may take, as a `[storage_quotas]` table in the config file "
            '(`"team-a" = 107374182400`): an upload that would take the project past it is refused with a '
            "400 `storage_quota_exceeded`; a batch's output and error files are never refused "
            "(docs/limits.md). Config file only."
        ),
    )
    default_storage_quota_bytes: int | None = field(
        default=None,
        metadata=_help(
            "The storage quota of every project that `storage_quotas` does not name. Unset: those projects "
            "have no quota."
        ),
    )
    batch_create_rate_per_hour: int | None = field(
        default=None,
        metadata=_help(
            "Batches one project may create in any hour (OpenAI allows 2000); more get a 429 "
            "`rate_limit_exceeded` with the `retry-after` until one may. Counted in the store, so across "
            "every API server. Unset: no limit."
        ),
    )
    client_header_timeout_s: float = field(
        default=30.0,
        metadata=_help(
            "Seconds a client has to send a request's line and headers once it has begun; a slower one is "
            "disconnected."
        ),
    )
    client_idle_timeout_s: float = field(
        default=60.0,
        metadata=_help(
            "Seconds a request's body may go without a byte arriving (an upload that stalls); then the "
            "request is refused with a 408 and the connection closed."
        ),
    )
    keepalive_timeout_s: float = field(
        default=75.0,
        metadata=_help("Seconds an idle kept-alive connection stays open, waiting for its next request."),
    )
    sync_usage_flush_interval_s: float = field(
        default=1.0,
        metadata=_help(
            "How often the usage of synchronous requests, added up in memory, is written to the store (a "
            "kill -9 loses at most this long's worth)."
        ),
    )

    def all_backends(self) -> tuple[BackendConfig, ...]:
        """The configured backends, then `upstream` as a catch-all if given."""
        if self.upstream is None:
            return self.backends
        catch_all = BackendConfig(
            name="upstream",
            base_url=self.upstream,
            models=("*",),
            api_key_env=self.upstream_api_key_env,
            max_concurrency=self.upstream_max_concurrency,
        )
        return (*self.backends, catch_all)


def env_name(setting: str) -> str:
    return ENV_PREFIX + setting.upper()


# -- parsing ------------------------------------------------------------------------------------


def _optional_database_url(name: str, value: Any) -> str | None:
    if value in (None, ""):
        return None
    text = plain.text(name, value)
    parsed = urlparse(text)
    has_host = bool(parsed.hostname) or "host=" in parsed.query  # ?host=/run/postgresql: a Unix socket
    if parsed.scheme not in ("postgresql", "postgres") or not has_host or not parsed.path.strip("/"):
        # the value may hold a password: the message shows only its scheme and where it points
        shown = f"{parsed.scheme or '?'}://{parsed.hostname or '?'}"
        raise ConfigError(
            f"setting '{name}': expected postgresql://user@host:5432/database, got one like {shown}..."
        )
    return text


def _optional_blob_url(name: str, value: Any) -> str | None:
    if value in (None, ""):
        return None
    text = plain.text(name, value)
    parsed = urlparse(text)
    if parsed.scheme != "s3" or not parsed.netloc or parsed.query or parsed.fragment:
        raise ConfigError(f"setting '{name}': {text!r} is not s3://bucket or s3://bucket/prefix")
    return text.rstrip("/")


def _log_level(name: str, value: Any) -> str:
    text = plain.text(name, value).lower()
    if text not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"setting '{name}': expected debug, info, warning or error, got {value!r}")
    return text


def _crash_point(name: str, value: Any) -> str | None:
    spec = plain.optional_text(name, value)
    if spec is not None:
        point, _, times = spec.partition(":")
        if point not in POINTS or (times and not times.isdigit()):
            raise ConfigError(f"setting '{name}': {spec!r} is not `point` or `point:N` with a known point")
    return spec


def _windows(name: str, value: Any) -> tuple[str, ...]:
    windows = plain.string_list(name, value)
    if not windows:
        raise ConfigError(f"setting '{name}': at least one completion window is needed")
    for window in windows:
        if parse_window(window) is None:
            raise ConfigError(f"setting '{name}': {window!r} is not a window like 24h, 90m, 7d or 30s")
    return windows


def _window(name: str, value: Any) -> str:
    (window,) = _windows(name, [plain.text(name, value)])
    return window


def _api_keys(name: str, value: Any) -> tuple[ApiKey, ...]:
    if isinstance(value, str):
        pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
        value = [{"key": p[0].strip(), "project": p[1].strip() if len(p) > 1 else ""} for p in pairs]
    if not isinstance(value, list):
        raise ConfigError(f"setting '{name}': expected a list of {{key, project}} tables")
    keys = []
    for index, entry in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"setting '{where}': expected a table with key and project")
        keys.append(
            ApiKey(
                key=plain.text(f"{where}.key", entry.get("key")),
                project=plain.text(f"{where}.project", entry.get("project")),
                admin=plain.boolean(f"{where}.admin", entry.get("admin", False)),
            )
        )
    return tuple(keys)


def _aliases(name: str, value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise ConfigError(f"setting '{name}': expected a [{name}] table of alias = \"model\"")
    pairs = []
    for alias, target in value.items():
        if not alias:
            raise ConfigError(f"setting '{name}': an alias may not be empty")
        pairs.append((alias, plain.text(f"{name}.{alias}", target)))
    return tuple(pairs)


PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "host": plain.text,
    "port": plain.port,
    "data_dir": plain.path,
    "config": plain.optional_path,
    "database_url": _optional_database_url,
    "blob_url": _optional_blob_url,
    "s3_endpoint_url": plain.optional_url,
    "s3_region": plain.optional_text,
    "upstream": plain.optional_url,
    "upstream_api_key_env": plain.optional_text,
    "upstream_max_concurrency": plain.positive_int,
    "api_keys": _api_keys,
    "allow_unauthenticated": plain.boolean,
    "completion_windows": _windows,
    "background_completion_window": _window,
    "request_timeout_s": plain.positive_float,
    "max_attempts": plain.positive_int,
    "retry_base_delay_s": plain.positive_float,
    "retry_max_delay_s": plain.positive_float,
    "result_flush_interval_s": plain.positive_float,
    "early_result_file_ids": plain.boolean,
    "worker_poll_interval_s": plain.positive_float,
    "file_sweep_interval_s": plain.positive_float,
    "lease_s": plain.positive_int,
    "shard_lines": plain.positive_int,
    "worker_max_shards": plain.positive_int,
    "shutdown_grace_s": plain.positive_float,
    "log_level": _log_level,
    "crash_at": _crash_point,
    "backends": parse_backends,
    "local_models": plain.boolean,
    "model_aliases": _aliases,
    "webhooks": parse_webhooks,
    "webhook_timeout_s": plain.positive_float,
    "webhook_retry_for_s": plain.positive_int,
    "webhook_retry_base_s": plain.positive_float,
    "prices": parse_prices,
    "token_budgets": parse_token_budgets,
    "default_token_budget": parse_optional_budget,
    "flex_timeout_s": plain.positive_float,
    "sync_max_body_bytes": plain.positive_int,
    "max_body_bytes": plain.positive_int,
    "max_upload_bytes": plain.positive_int,
    "max_batch_upload_bytes": plain.positive_int,
    "storage_quotas": parse_storage_quotas,
    "default_storage_quota_bytes": parse_optional_quota,
    "batch_create_rate_per_hour": plain.optional_positive_int,
    "client_header_timeout_s": plain.positive_float,
    "client_idle_timeout_s": plain.positive_float,
    "keepalive_timeout_s": plain.positive_float,
    "sync_usage_flush_interval_s": plain.positive_float,
}
FILE_ONLY = frozenset({"backends", "model_aliases", "prices", "storage_quotas", "token_budgets", "webhooks"})
S3_STANDARD_VARIABLES = {"s3_endpoint_url": "AWS_ENDPOINT_URL", "s3_region": "AWS_REGION"}
S3_KEY_ID_VARIABLE, S3_SECRET_VARIABLE = "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"setting 'config': file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"setting 'config': {str(path)!r} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(PARSERS) - {"config"})
    if unknown:
        raise ConfigError(f"setting '{unknown[0]}' in {str(path)!r}: unknown setting")
    return data


@dataclass(frozen=True)
class Secrets:
    """What the settings name but never hold: keys read from the environment variables they name.
    Never logged, and never shown by repr."""

    upstream_keys: Mapping[str, str] = field(default_factory=dict, repr=False)  # backend name -> key
    s3_access_key_id: str | None = field(default=None, repr=False)
    s3_secret_access_key: str | None = field(default=None, repr=False)
    webhook_secrets: Mapping[str, str] = field(default_factory=dict, repr=False)  # endpoint -> whsec_


def load_secrets(settings: Settings, environ: Mapping[str, str] | None = None) -> Secrets:
    """Read each secret from the environment variable its setting names; a ConfigError naming the
    setting when one is not set."""
    environ = os.environ if environ is None else environ
    keys: dict[str, str] = {}
    for index, backend in enumerate(settings.all_backends()):
        if not backend.api_key_env:
            continue
        key = environ.get(backend.api_key_env)
        if not key:
            where = "upstream_api_key_env" if backend.name == "upstream" else f"backends[{index}].api_key_env"
            raise ConfigError(f"setting '{where}': environment variable {backend.api_key_env} is not set")
        keys[backend.name] = key
    key_id, secret = environ.get(S3_KEY_ID_VARIABLE) or None, environ.get(S3_SECRET_VARIABLE) or None
    if settings.blob_url is not None and (key_id is None) != (secret is None):
        missing = S3_SECRET_VARIABLE if secret is None else S3_KEY_ID_VARIABLE
        raise ConfigError(f"setting 'blob_url': environment variable {missing} is not set")
    return Secrets(
        upstream_keys=keys,
        s3_access_key_id=key_id,
        s3_secret_access_key=secret,
        webhook_secrets=read_webhook_secrets(settings.webhooks, environ),
    )


def load_settings(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Merge flags (None means 'not given'), OVERNIGHT_* variables, the config file and defaults."""
    environ = os.environ if environ is None else environ
    given_flags = {name: value for name, value in flags.items() if value is not None}
    from_env = {
        name: environ[env_name(name)]
        for name in PARSERS
        if name not in FILE_ONLY and env_name(name) in environ
    }
    config_value = given_flags.get("config", from_env.get("config"))
    config_path = plain.optional_path("config", config_value)
    from_file = _read_config_file(config_path) if config_path else {}
    merged: dict[str, Any] = {**from_file, **from_env, **given_flags}
    for setting, standard in S3_STANDARD_VARIABLES.items():  # what every S3 client reads
        if setting not in merged and environ.get(standard):
            merged[setting] = environ[standard]
    values = {name: PARSERS[name](name, raw) for name, raw in merged.items()}
    return Settings(**values)
