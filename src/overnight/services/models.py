"""Which models this server can serve: `GET /v1/models`.

Each backend that can list its models is asked (an upstream's own `/v1/models`, the local models
and their aliases). A model is listed when the router would send it to the backend that listed it,
so an upstream's models outside its `models` patterns, or taken by an earlier backend, are left
out. Answers are cached for `ttl_s`; a backend that cannot answer is skipped (and asked again after
`failure_ttl_s`), never an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from overnight.domain.clock import Clock
from overnight.domain.errors import NotFound

log = logging.getLogger("overnight.models")


@dataclass(frozen=True, slots=True)
class ModelCard:
    id: str
    created: int
    owned_by: str


@runtime_checkable
class ListsModels(Protocol):
    name: str

    async def list_models(self) -> list[dict[str, Any]]:
        """OpenAI model objects (each a dict with at least a string `id`); raises when unreachable."""
        ...


Route = Callable[[str], object]  # model name -> the backend that serves it, or None


@dataclass
class _Cached:
    cards: list[ModelCard]
    until: float


class ModelsService:
    def __init__(
        self,
        backends: Sequence[object],
        route: Route,
        clock: Clock,
        *,
        ttl_s: float = 60.0,
        failure_ttl_s: float = 5.0,
    ) -> None:
        self._sources = [backend for backend in backends if isinstance(backend, ListsModels)]
        self._route = route
        self._clock = clock
        self._ttl_s = ttl_s
        self._failure_ttl_s = failure_ttl_s
        self._cache: dict[int, _Cached] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    async def list_models(self) -> list[ModelCard]:
        """Every model served, in routing order, each id once."""
        found = await asyncio.gather(*(self._cards(index) for index in range(len(self._sources))))
        seen: set[str] = set()
        cards: list[ModelCard] = []
        for index, source_cards in enumerate(found):
            for card in source_cards:
                if card.id not in seen and self._route(card.id) is self._sources[index]:
                    seen.add(card.id)
                    cards.append(card)
        return cards

    async def retrieve(self, model_id: str) -> ModelCard:
        for card in await self.list_models():
            if card.id == model_id:
                return card
        raise NotFound(
            f"The model '{model_id}' does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )

    async def _cards(self, index: int) -> list[ModelCard]:
        lock = self._locks.setdefault(index, asyncio.Lock())
        async with lock:  # one fetch per backend at a time; the others wait for its answer
            cached = self._cache.get(index)
            if cached is not None and self._clock.now() < cached.until:
                return cached.cards
            source = self._sources[index]
            try:
                items = await source.list_models()
            except Exception as exc:
                detail = str(exc) or type(exc).__name__
                log.warning("cannot list the models of backend=%s: %s", source.name, detail)
                cards, ttl = [], self._failure_ttl_s
            else:
                cards, ttl = [_card(item, source.name) for item in items], self._ttl_s
            self._cache[index] = _Cached(cards, self._clock.now() + ttl)
            return cards


def _card(item: dict[str, Any], owner: str) -> ModelCard:
    created = item.get("created")
    owned_by = item.get("owned_by")
    return ModelCard(
        id=str(item["id"]),
        created=created if isinstance(created, int) and not isinstance(created, bool) else 0,
        owned_by=owned_by if isinstance(owned_by, str) else owner,
    )
