"""The backend for any OpenAI-compatible HTTP server (OpenAI itself, vLLM, llama.cpp, Ollama, ...).

URL rule: `attempt` gets endpoints as the batch API names them (`/v1/chat/completions`). When the
configured `base_url` already ends in `/v1`, that leading `/v1` is dropped from the endpoint, so
`http://host:8001/v1` and `http://host:8001` both reach `http://host:8001/v1/chat/completions`.
Any other base path is kept (`https://host/openai/v1` + `/v1/embeddings` -> `.../openai/v1/embeddings`).

Bodies: the request body is sent byte for byte. The answer's body is kept byte for byte when it is
a JSON object on one line; a JSON object spread over several lines (pretty-printed, or ending in a
newline) is re-encoded compactly, because result lines splice it into JSONL. Anything else is
wrapped in an OpenAI-shaped error object. A 2xx answer that is not a JSON object becomes a 502, and
so does a 2xx answer that is only an error (an `error` object with a `message`, and no `object`
member: a Responses API `response` that failed keeps its 200), so the line is retried and, in the end,
written to the error file with the upstream's words rather than to the output file as a success.
Requests that get no HTTP answer end as 502 (`upstream_unreachable`) or 504 (`upstream_timeout`).
Retries and concurrency are the scheduler's (engine/scheduler.py); this backend only reads what the
upstream said about them: `retry-after-ms` / `retry-after` and `x-should-retry`.

Transport: requests go through `overnight.backends.wire.Http1Client`, a lean HTTP/1.1 keep-alive pool
(at most `max_concurrency` connections); aiohttp serves `list_models` and the streamed answers of
`stream` (backends/http_stream.py says why).
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import msgspec
from yarl import URL

from overnight import __version__
from overnight.backends.base import Attempt, StreamAnswer, describe_exception
from overnight.backends.http_stream import open_stream
from overnight.backends.wire import Http1Client, NotConnected, Response
from overnight.config import BackendConfig
from overnight.domain.clock import Clock, SystemClock
from overnight.domain.models import Usage
from overnight.domain.results import object_usage

MAX_ERROR_TEXT = 1000
REDACTED_KEY = b"[the backend's API key]"
KEEPALIVE_S = 4.0
CONNECT_TIMEOUT_S = 10.0


_any_decoder = msgspec.json.Decoder()
_encode = msgspec.json.encode

# How one attempt ended without an HTTP answer: (status for the result line, error code).
_UNREACHABLE = (502, "upstream_unreachable")
_TIMEOUT = (504, "upstream_timeout")


def error_body(message: str, code: str | None, kind: str = "upstream_error") -> bytes:
    """An OpenAI-shaped error object."""
    return _encode({"error": {"message": message, "type": kind, "param": None, "code": code}})


def normalize_body(status: int, data: bytes) -> tuple[int, bytes]:
    """(status, body) with body the bytes of a JSON object on one line; see the module docstring."""
    status, data, _usage = normalize_answer(status, data)
    return status, data


def normalize_answer(status: int, data: bytes) -> tuple[int, bytes, Usage | None]:
    """`normalize_body`, plus the usage the body reports (read in the same pass; None when the
    body had to be replaced)."""
    try:
        usage = object_usage(data)
        if not data.isascii():
            data.decode()  # skipping does not check UTF-8
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        pass
    else:
        refused = _error_instead_of_result(data) if 200 <= status < 300 and b'"error"' in data else None
        if refused is not None:
            message = f"The upstream answered HTTP {status} with an error instead of a result: {refused}"
            return 502, error_body(message, "upstream_invalid_response"), None
        if b"\n" in data or b"\r" in data:
            return status, _encode(_any_decoder.decode(data)), usage
        return status, data, usage
    text = data.decode("utf-8", errors="replace").strip()
    if len(text) > MAX_ERROR_TEXT:
        text = text[:MAX_ERROR_TEXT] + "..."
    if 200 <= status < 300:
        message = f"The upstream answered HTTP {status} with a body that is not a JSON object: {text!r}"
        return 502, error_body(message, "upstream_invalid_response"), None
    if not text:
        text = f"The upstream answered HTTP {status} with an empty body."
    return status, error_body(text, None), None


class _ErrorMessage(msgspec.Struct):
    message: str


class _ErrorOnly(msgspec.Struct, rename={"kind": "object"}):
    error: _ErrorMessage | None = None
    kind: Any = None


_error_only = msgspec.json.Decoder(_ErrorOnly)


def _error_instead_of_result(data: bytes) -> str | None:
    """The message of a body that is an OpenAI error and not a result (see the module docstring)."""
    try:
        probe = _error_only.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if probe.error is None or probe.kind is not None:
        return None
    return " ".join(probe.error.message.split())[:MAX_ERROR_TEXT] or "(no message)"


def _new_request_id() -> str:
    return "req_" + os.urandom(16).hex()


class HttpBackend:
    """An OpenAI-compatible server reached over HTTP through a keep-alive pool."""

    def __init__(
        self,
        config: BackendConfig,
        *,
        api_key: str | None,
        timeout_s: float,
        clock: Clock | None = None,
    ) -> None:
        self.name = config.name
        self.max_concurrency = config.max_concurrency
        self.config = config
        self._patterns = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in config.models))
        self._base = config.base_url.rstrip("/")
        self._strip_v1 = self._base.endswith("/v1")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._key = api_key.encode() if api_key else None  # hidden from the upstream's error answers
        self._timeout_s = timeout_s
        self._clock = clock if clock is not None else SystemClock()
        self._urls: dict[str, URL] = {}
        self._session: aiohttp.ClientSession | None = None
        self._wire: Http1Client | None = None
        self._heads: dict[str, bytes] = {}  # endpoint -> the request's constant bytes

    def __repr__(self) -> str:  # never shows the key
        return f"HttpBackend(name={self.name!r}, base_url={self._base!r})"

    def serves(self, model: str) -> bool:
        return self._patterns.fullmatch(model) is not None

    def url_for(self, endpoint: str) -> URL:
        url = self._urls.get(endpoint)
        if url is None:
            path = endpoint if endpoint.startswith("/") else "/" + endpoint
            if self._strip_v1 and (path == "/v1" or path.startswith("/v1/")):
                path = path[3:]
            url = URL(self._base + path)
            self._urls[endpoint] = url
        return url

    async def start(self) -> None:
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit=self.config.max_concurrency,
            limit_per_host=0,
            # below the 5 s idle limit of uvicorn (vLLM, most Python servers), so we rarely send
            # on a connection the server is closing (that costs an attempt and a retry delay)
            keepalive_timeout=KEEPALIVE_S,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            raise_for_status=False,
        )
        self._wire = Http1Client(
            self._base,
            limit=self.config.max_concurrency,
            headers=self._wire_headers(),
            keepalive_s=KEEPALIVE_S,  # as above; a request that still meets a closing one is resent
            connect_timeout_s=CONNECT_TIMEOUT_S,
        )

    def _wire_headers(self) -> dict[str, str]:
        """The fixed headers of every request (no Accept-Encoding: answers come uncompressed)."""
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"overnight/{__version__}",
        }
        if "Authorization" in self._headers:
            headers["Authorization"] = self._headers["Authorization"]
        return headers

    async def close(self) -> None:
        session, self._session = self._session, None
        wire, self._wire = self._wire, None
        if wire is not None:
            await wire.close()
        if session is not None:
            await session.close()

    def _started(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError(f"backend {self.name!r} is not started")
        return self._session

    def _started_wire(self) -> Http1Client:
        if self._wire is None:
            raise RuntimeError(f"backend {self.name!r} is not started")
        return self._wire

    def _head(self, wire: Http1Client, endpoint: str) -> bytes:
        head = self._heads.get(endpoint)
        if head is None:
            head = self._heads[endpoint] = wire.prepare("POST", self.url_for(endpoint).raw_path_qs)
        return head

    async def attempt(self, endpoint: str, body: bytes) -> Attempt:
        wire = self._started_wire()
        outcome = await self._attempt(wire, self._head(wire, endpoint), body)
        if isinstance(outcome, Attempt):
            return outcome
        return self._whole(outcome.status, outcome.body, outcome.headers)

    async def stream(self, endpoint: str, body: bytes) -> Attempt | StreamAnswer:
        """See `Backend.stream`; the transport is in backends/http_stream.py."""
        return await open_stream(
            self._started(),
            self.url_for(endpoint),
            body,
            read_timeout_s=self._timeout_s,
            connect_timeout_s=CONNECT_TIMEOUT_S,
            whole=self._whole,
            no_answer=self._stream_no_answer,
        )

    def _stream_no_answer(self, timed_out: bool, detail: str, reached: bool) -> Attempt:
        return self._no_answer(_TIMEOUT if timed_out else _UNREACHABLE, detail, reached=reached)

    def _whole(self, status: int, data: bytes, headers: Mapping[str, str]) -> Attempt:
        """The Attempt of a whole answer (its body normalized, see the module docstring)."""
        retry_after = parse_retry_after(headers, self._clock.now()) if status >= 300 else None
        request_id = headers.get("x-request-id") or _new_request_id()
        status, data, usage = normalize_answer(status, data)
        if self._key is not None and status >= 300 and self._key in data:
            data = data.replace(self._key, REDACTED_KEY)  # an upstream that echoes the key it was sent
        return Attempt(
            status,
            data,
            request_id,
            usage=usage,
            retry_after=retry_after,
            should_retry=_retry_verdict(headers),
        )

    async def list_models(self, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """The model objects of the upstream's `GET /v1/models` (raises when it gives no good answer)."""
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with self._started().get(self.url_for("/v1/models"), timeout=timeout) as resp:
            if resp.status != 200:
                raise RuntimeError(f"GET /v1/models answered HTTP {resp.status}")
            listing = _any_decoder.decode(await resp.read())
        data = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(data, list):
            raise RuntimeError("GET /v1/models answered no `data` list")
        return [item for item in data if isinstance(item, dict) and isinstance(item.get("id"), str)]

    # -- internals ---------------------------------------------------------------------------------

    async def _attempt(self, wire: Http1Client, head: bytes, body: bytes) -> Response | Attempt:
        """The upstream's answer, or an unanswered `Attempt` that says why none came."""
        try:
            return await wire.request(head, body, self._timeout_s)
        except NotConnected as exc:
            return self._no_answer(_UNREACHABLE, f"could not connect: {exc}", reached=False)
        except TimeoutError:  # a subclass of OSError: first
            return self._no_answer(_TIMEOUT, f"no answer within {self._timeout_s:g} s")
        except OSError as exc:  # ConnectionError, ssl.SSLError, DNS errors
            return self._no_answer(_UNREACHABLE, describe_exception(exc))

    def _no_answer(self, kind: tuple[int, str], detail: str, *, reached: bool = True) -> Attempt:
        status, code = kind
        message = f"Backend {self.name!r} gave no answer: {detail}"
        return Attempt(status, error_body(message, code), _new_request_id(), answered=False, reached=reached)


def _retry_verdict(headers: Mapping[str, str]) -> bool | None:
    """The upstream's `x-should-retry` verdict, or None when it gave none."""
    override = headers.get("x-should-retry")
    return None if override not in ("true", "false") else override == "true"


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """The delay in seconds the upstream asked for, or None when it asked for none we understand.

    `retry-after-ms` (milliseconds) wins over `retry-after` (seconds, or an HTTP date compared with
    `now`, Unix seconds). A date in the past means 0. Negative, NaN and infinite values are ignored.
    `headers` should be case-insensitive (aiohttp's are); with a plain dict use lower-case names.
    """
    millis = _number(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    raw = headers.get("retry-after")
    if raw is None:
        return None
    seconds = _number(raw)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" gives a naive datetime; HTTP dates are GMT anyway
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - now, 0.0)


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return value
