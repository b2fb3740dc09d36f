"""Streamed answers from an OpenAI-compatible server: `HttpBackend.stream`'s transport.

Why aiohttp here and not the lean `wire.Http1Client` of `attempt`: that client hands over whole bodies,
which is what a batch line wants. A stream must reach the caller chunk by chunk as it arrives, with
chunked transfer decoding, and it lasts as long as the model takes to write it; aiohttp's per-request
cost (tens of microseconds) is nothing beside that, and its session (one per backend, at most
`max_concurrency` connections) is already there. The scheduler bounds the requests in flight across
both pools together.

A 2xx `text/event-stream` answer becomes a `StreamAnswer`; any other answer is read whole and becomes
the `Attempt` that `attempt` would have given. Between two chunks the upstream may stay silent for up
to the backend's `request_timeout_s`; connecting is bounded separately.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping

import aiohttp
from yarl import URL

from overnight.backends.base import Attempt, StreamAnswer, describe_exception

EVENT_STREAM = "text/event-stream"
_STREAM_HEADERS = {"Accept": EVENT_STREAM}

WholeAnswer = Callable[[int, bytes, Mapping[str, str]], Attempt]  # status, body, headers -> Attempt
NoAnswer = Callable[[bool, str, bool], Attempt]  # timed out?, what happened, reached? -> Attempt


async def open_stream(
    session: aiohttp.ClientSession,
    url: URL,
    body: bytes,
    *,
    read_timeout_s: float,
    connect_timeout_s: float,
    whole: WholeAnswer,
    no_answer: NoAnswer,
) -> Attempt | StreamAnswer:
    """POST `body` to `url` asking for an event stream (see the module docstring)."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s)
    try:
        response = await session.post(url, data=body, headers=_STREAM_HEADERS, timeout=timeout)
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        return no_answer(False, f"could not connect: {describe_exception(exc)}", False)
    except TimeoutError:
        return no_answer(True, f"no answer within {read_timeout_s:g} s", True)
    except (aiohttp.ClientError, OSError) as exc:
        return no_answer(False, describe_exception(exc), True)
    content_type = response.headers.get("Content-Type", "")
    if 200 <= response.status < 300 and content_type.startswith(EVENT_STREAM):
        request_id = response.headers.get("x-request-id") or f"req_{secrets.token_hex(16)}"
        chunks = _chunks(response)
        return StreamAnswer(response.status, request_id, content_type, chunks, _closer(response, chunks))
    try:
        data = await response.read()
    except TimeoutError:
        return no_answer(True, f"the answer did not end within {read_timeout_s:g} s", True)
    except (aiohttp.ClientError, OSError) as exc:
        return no_answer(False, describe_exception(exc), True)
    finally:
        response.release()
    return whole(response.status, data, response.headers)


async def _chunks(response: aiohttp.ClientResponse) -> AsyncGenerator[bytes, None]:
    try:
        async for chunk in response.content.iter_any():
            yield chunk
    except TimeoutError:
        raise
    except (aiohttp.ClientError, OSError) as exc:
        raise ConnectionError(f"the upstream's stream broke off: {describe_exception(exc)}") from exc


def _closer(
    response: aiohttp.ClientResponse, chunks: AsyncGenerator[bytes, None]
) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        await chunks.aclose()
        if response.content.at_eof():
            response.release()  # read to its end: the connection may be reused
        else:
            response.close()

    return close
