"""The backend for models that run in-process (overnight.backends.local): a Backend over LocalModels.

It serves each model's own name and the configured aliases (alias -> model name); the answer's
`model` is the name the request used. Failures never come from the network, so none is worth a
retry: every error answer says `should_retry=False`. Models that can (StreamingModel: the chat model)
stream their answers as server-sent events; the others refuse `stream: true` with a 400.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from overnight.backends.base import Attempt, StreamAnswer
from overnight.backends.local.base import LocalModel, StreamingModel, error_answer

log = logging.getLogger("overnight.local")

NAME = "local"
MAX_CONCURRENCY = 1024  # requests handed to the models at once: room for large micro-batches
OWNED_BY = "overnight"
KNOWN_MODELS = ("all-minilm-l6-v2", "smollm2-135m-instruct")  # names a `model_aliases` entry may target

EVENT_STREAM = "text/event-stream"

_decoder = msgspec.json.Decoder()


@dataclass(frozen=True, slots=True)
class _Resolved:
    model: LocalModel
    request: dict[str, Any]
    name: str  # as asked for: the model's name or an alias


def _new_request_id() -> str:
    return "req_local_" + os.urandom(12).hex()


class LocalBackend:
    name = NAME

    def __init__(
        self,
        models: Sequence[LocalModel],
        aliases: Mapping[str, str] | None = None,
        *,
        max_concurrency: int = MAX_CONCURRENCY,
    ) -> None:
        self.max_concurrency = max_concurrency
        self._models: dict[str, LocalModel] = {model.name: model for model in models}
        self._aliases: dict[str, str] = dict(aliases or {})
        for alias, target in self._aliases.items():
            if target not in self._models:
                raise ValueError(f"alias {alias!r} names {target!r}, which is not a local model here")
        self._created = int(time.time())
        self._started: list[LocalModel] = []

    def __repr__(self) -> str:
        return f"LocalBackend(models={sorted(self._models)!r}, aliases={self._aliases!r})"

    @property
    def model_names(self) -> list[str]:
        """Every name this backend answers to: model names, then aliases."""
        return [*self._models, *self._aliases]

    def model_for(self, name: str) -> LocalModel | None:
        return self._models.get(self._aliases.get(name, name))

    def serves(self, model: str) -> bool:
        return self.model_for(model) is not None

    async def start(self) -> None:
        for model in self._models.values():
            if model not in self._started:
                await model.start()
                self._started.append(model)

    async def close(self) -> None:
        first: BaseException | None = None
        while self._started:
            model = self._started.pop()
            try:
                await model.close()
            except Exception as exc:
                first = first or exc
        if first is not None:
            raise first

    async def list_models(self) -> list[dict[str, Any]]:
        """OpenAI model objects for every name served (never fails)."""
        return [
            {"id": name, "object": "model", "created": self._created, "owned_by": OWNED_BY}
            for name in self.model_names
        ]

    async def attempt(self, endpoint: str, body: bytes) -> Attempt:
        request_id = _new_request_id()
        status, data = await self._answer(endpoint, body)
        return Attempt(status, data, request_id, should_retry=False if status >= 400 else None)

    async def stream(self, endpoint: str, body: bytes) -> Attempt | StreamAnswer:
        """The model's event stream, after the checks every request gets; a model that does not stream
        (embeddings) refuses with a 400 naming `stream`."""
        request_id = _new_request_id()
        found = self._resolve(endpoint, body)
        if isinstance(found, tuple):
            return Attempt(*found, request_id, should_retry=False)
        model = found.model
        if not isinstance(model, StreamingModel):
            return Attempt(*_no_stream(found.name, endpoint), request_id, should_retry=False)
        try:
            answer = await model.stream(endpoint, found.request, found.name)
        except Exception:
            log.exception("local model %s failed on a stream of %s", model.name, endpoint)
            return Attempt(*_failed(model), request_id, should_retry=False)
        if isinstance(answer, tuple):
            return Attempt(*answer, request_id, should_retry=False)
        return StreamAnswer(200, request_id, EVENT_STREAM, answer.events, answer.close, answer.usage)

    def _resolve(self, endpoint: str, body: bytes) -> _Resolved | tuple[int, bytes]:
        """The model, decoded request and name asked for, or the error answer when none serves it."""
        try:
            request = _decoder.decode(body)
        except msgspec.DecodeError:
            return error_answer(400, "The request body is not valid JSON.", code="invalid_json")
        if not isinstance(request, dict):
            return error_answer(400, "The request body must be a JSON object.", code="invalid_json")
        name = request.get("model")
        if not isinstance(name, str) or not name:
            return error_answer(
                400, "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
            )
        model = self.model_for(name)
        if model is None:
            return error_answer(
                404,
                f"The model '{name}' does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        if endpoint not in model.endpoints:
            served = ", ".join(sorted(model.endpoints))
            return error_answer(
                404,
                f"The model '{name}' is not supported by {endpoint}; it serves {served}.",
                param="model",
                code="unsupported_endpoint",
            )
        return _Resolved(model, request, name)

    async def _answer(self, endpoint: str, body: bytes) -> tuple[int, bytes]:
        found = self._resolve(endpoint, body)
        if isinstance(found, tuple):
            return found
        model, request, name = found.model, found.request, found.name
        try:
            return await model.handle(endpoint, request, name)
        except Exception:
            log.exception("local model %s failed on %s", model.name, endpoint)
            return _failed(model)


def _failed(model: LocalModel) -> tuple[int, bytes]:
    message = f"The local model '{model.name}' failed while answering this request."
    return error_answer(500, message, kind="server_error")


def _no_stream(name: str, endpoint: str) -> tuple[int, bytes]:
    return error_answer(
        400,
        f"The model '{name}' does not stream its answers on {endpoint}: send this request without "
        "`stream`, or with `stream: false`.",
        param="stream",
        code="unsupported_value",
    )
