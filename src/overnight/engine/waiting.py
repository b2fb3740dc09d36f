"""Waiting on an event with a timeout, safely on Python 3.11.

`asyncio.wait_for` on 3.10 and 3.11 swallows a cancellation that arrives in the same loop iteration as
the end of its wait (CPython gh-86296, fixed only by 3.12's rewrite). A cancelled loop such as the result
recorder's flusher then went on waiting for ever, and its batch never left `in_progress` (seen in the
dispatch bench, 50,000 requests). `asyncio.timeout` does not have that flaw.
"""

from __future__ import annotations

import asyncio
import contextlib


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until `event` is set, for at most `timeout_s`; whether it is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
    return event.is_set()
