"""Settings and wiring of the local models, and the models listing (`GET /v1/models`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from overnight.backends.http import HttpBackend
from overnight.backends.local.backend import LocalBackend
from overnight.backends.local.base import LocalModel
from overnight.backends.router import Router
from overnight.config import BackendConfig, ConfigError, Secrets, load_settings
from overnight.domain.clock import ManualClock
from overnight.domain.errors import NotFound
from overnight.services.models import ModelsService
from overnight.wiring import build_backends, build_local_backend


class Named:
    endpoints = frozenset({"/v1/embeddings"})

    def __init__(self, name: str) -> None:
        self.name = name

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def handle(self, endpoint: str, request: dict[str, Any], model_name: str) -> tuple[int, bytes]:
        return 200, b"{}"


MINILM: list[LocalModel] = [Named("all-minilm-l6-v2")]


def settings_from(tmp_path: Path, toml: str, **environ: str) -> Any:
    path = tmp_path / "overnight.toml"
    path.write_text(toml)
    return load_settings({"config": str(path)}, environ)


@pytest.mark.parametrize(
    ("value", "expected"), [("true", True), ("false", False), ("0", False), ("Yes", True)]
)
def test_local_models_from_the_environment(value: str, expected: bool) -> None:
    assert load_settings({}, {"OVERNIGHT_LOCAL_MODELS": value}).local_models is expected


def test_local_models_rejects_other_words() -> None:
    with pytest.raises(ConfigError, match="'local_models'"):
        load_settings({}, {"OVERNIGHT_LOCAL_MODELS": "maybe"})


def test_model_aliases_come_from_the_file(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, '[model_aliases]\n"text-embedding-3-small" = "all-minilm-l6-v2"\n')
    assert settings.local_models is True
    assert settings.model_aliases == (("text-embedding-3-small", "all-minilm-l6-v2"),)
    local = build_local_backend(settings, MINILM)
    assert local is not None
    assert local.serves("text-embedding-3-small")


@pytest.mark.parametrize(
    ("toml", "setting"),
    [
        ('model_aliases = "x"\n', "'model_aliases'"),
        ("[model_aliases]\nx = 3\n", "'model_aliases.x'"),
        ('[model_aliases]\nx = "gpt-4o"\n', "'model_aliases.x'"),
        ('[model_aliases]\n"smollm2-135m-instruct" = "all-minilm-l6-v2"\n', "'model_aliases.smollm2"),
        ('local_models = false\n[model_aliases]\nx = "all-minilm-l6-v2"\n', "'model_aliases'"),
        ('[[backends]]\nname = "local"\nbase_url = "http://h:1/v1"\n', r"'backends\[0\]\.name'"),
    ],
)
def test_bad_local_settings_name_the_setting(tmp_path: Path, toml: str, setting: str) -> None:
    with pytest.raises(ConfigError, match=setting):
        build_local_backend(settings_from(tmp_path, toml), MINILM)


def test_alias_of_a_model_not_installed_here_is_skipped(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, '[model_aliases]\nchat = "smollm2-135m-instruct"\n')
    local = build_local_backend(settings, MINILM)
    assert local is not None
    assert not local.serves("chat")


def test_local_models_can_be_turned_off() -> None:
    assert build_local_backend(load_settings({}, {"OVERNIGHT_LOCAL_MODELS": "false"})) is None


def test_router_order_is_backends_then_local_then_upstream(tmp_path: Path) -> None:
    toml = '[[backends]]\nname = "vllm"\nbase_url = "http://h:1/v1"\nmodels = ["llama*"]\n'
    settings = settings_from(tmp_path, toml, OVERNIGHT_UPSTREAM="http://h:2/v1")
    local = LocalBackend(MINILM)
    names = [backend.name for backend in build_backends(settings, Secrets(), local=local)]
    assert names == ["vllm", "local", "upstream"]
    assert [backend.name for backend in build_backends(load_settings({}, {}), Secrets(), local=local)] == [
        "local"
    ]


# -- GET /v1/models -------------------------------------------------------------------------------


class Listing:
    """A backend that lists models, as HttpBackend does from its upstream."""

    max_concurrency = 1

    def __init__(self, name: str, patterns: tuple[str, ...], ids: list[str]) -> None:
        self.name = name
        self.http = HttpBackend(
            BackendConfig(name=name, base_url="http://h:1/v1", models=patterns),
            api_key=None,
            timeout_s=1,
        )
        self.ids = ids
        self.calls = 0
        self.down = False

    def serves(self, model: str) -> bool:
        return self.http.serves(model)

    async def list_models(self) -> list[dict[str, Any]]:
        self.calls += 1
        if self.down:
            raise ConnectionError("refused")
        return [{"id": model, "object": "model", "created": 5, "owned_by": "up"} for model in self.ids]


def service(*backends: Any, clock: ManualClock | None = None) -> ModelsService:
    router = Router(backends)
    return ModelsService(router.backends, router.backend_for, clock or ManualClock())


async def test_models_lists_local_models_aliases_and_matching_upstream_models() -> None:
    vllm = Listing("vllm", ("llama*",), ["llama-3", "mistral-7b"])
    local = LocalBackend(MINILM, {"text-embedding-3-small": "all-minilm-l6-v2"})
    upstream = Listing("upstream", ("*",), ["gpt-4o", "llama-3", "all-minilm-l6-v2"])
    cards = await service(vllm, local, upstream).list_models()
    assert [(card.id, card.owned_by) for card in cards] == [
        ("llama-3", "up"),
        ("all-minilm-l6-v2", "overnight"),
        ("text-embedding-3-small", "overnight"),
        ("gpt-4o", "up"),
    ]


async def test_models_are_cached_and_an_unreachable_backend_is_skipped() -> None:
    clock = ManualClock()
    up = Listing("up", ("*",), ["gpt-4o"])
    down = Listing("down", ("*",), ["never"])
    down.down = True
    models = service(down, up, clock=clock)
    assert [card.id for card in await models.list_models()] == []  # "gpt-4o" would go to `down`
    down.down = False
    assert [card.id for card in await models.list_models()] == []  # its failure is remembered a little
    clock.advance(6)
    assert [card.id for card in await models.list_models()] == ["never"]
    clock.advance(30)
    await models.list_models()
    assert (down.calls, up.calls) == (2, 1)
    clock.advance(31)
    await models.list_models()
    assert (down.calls, up.calls) == (3, 2)


async def test_retrieve_unknown_model_is_404() -> None:
    models = service(LocalBackend(MINILM))
    assert (await models.retrieve("all-minilm-l6-v2")).id == "all-minilm-l6-v2"
    with pytest.raises(NotFound):
        await models.retrieve("gpt-5")
