"""Which backend runs a request for a model: the first configured backend whose patterns match."""

from __future__ import annotations

from collections.abc import Sequence

from overnight.backends.base import Backend

_CACHE_LIMIT = 4096  # model names come from users; don't let the cache grow without bound


class Router:
    """Picks a backend per model, in configuration order, and starts/closes them all."""

    def __init__(self, backends: Sequence[Backend]) -> None:
        self.backends: tuple[Backend, ...] = tuple(backends)
        self._cache: dict[str, Backend | None] = {}

    def backend_for(self, model: str) -> Backend | None:
        """The first backend that serves `model`, or None when none does."""
        try:
            return self._cache[model]
        except KeyError:
            pass
        found = next((backend for backend in self.backends if backend.serves(model)), None)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[model] = found
        return found

    def serves(self, model: str) -> bool:
        """Whether some backend takes requests for `model`."""
        return self.backend_for(model) is not None

    async def start(self) -> None:
        """Start every backend; if one fails, close those already started and re-raise."""
        started: list[Backend] = []
        try:
            for backend in self.backends:
                await backend.start()
                started.append(backend)
        except BaseException:
            await _close_all(started)
            raise

    async def close(self) -> None:
        """Close every backend, even when some fail; the first failure is re-raised at the end."""
        await _close_all(self.backends)


async def _close_all(backends: Sequence[Backend]) -> None:
    first: BaseException | None = None
    for backend in reversed(backends):
        try:
            await backend.close()
        except Exception as exc:
            first = first or exc
    if first is not None:
        raise first
