"""Stored API keys: their secrets and hints, the authenticator that takes them beside the config file's,
and the binding rule (no keys beyond loopback, unless allowed)."""

from __future__ import annotations

import dataclasses
import ipaddress
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overnight.binding import is_loopback, refuse_open_binding
from overnight.config import ApiKey, ConfigError
from overnight.domain.api_keys import (
    SECRET_PREFIX,
    StoredApiKey,
    hash_secret,
    hint_of,
    looks_stored,
    new_api_key,
)
from overnight.domain.errors import Unauthorized
from overnight.http.auth import DEFAULT_PROJECT, Authenticator, Identity

NOW = 1_700_000_000


class MemoryKeys:
    """The store's two look-ups, in memory, counting calls."""

    def __init__(self, *keys: StoredApiKey) -> None:
        self.keys = {key.secret_hash: key for key in keys}
        self.lookups = 0

    async def api_key_by_hash(self, secret_hash: str) -> StoredApiKey | None:
        self.lookups += 1
        return self.keys.get(secret_hash)

    async def any_api_keys(self) -> bool:
        return bool(self.keys)


# -- secrets --------------------------------------------------------------------------------------


def test_a_secret_looks_like_openais_and_holds_256_random_bits() -> None:
    made = new_api_key("alpha", name="ci", now=NOW)
    assert re.fullmatch(r"sk-ovn-[A-Za-z0-9_-]{43}", made.secret)
    assert made.record.secret_hash == hash_secret(made.secret)
    assert re.fullmatch(r"[0-9a-f]{64}", made.record.secret_hash)
    assert made.record.id.startswith("key_")
    assert made.record.hint == f"sk-ovn-…{made.secret[-4:]}"
    assert made.secret not in repr(made.record)
    assert looks_stored(made.secret)


def test_secrets_and_ids_never_repeat() -> None:
    made = [new_api_key("alpha", now=NOW) for _ in range(200)]
    assert len({key.secret for key in made}) == len({key.record.id for key in made}) == 200


@pytest.mark.parametrize("project", ["", "   ", "a\nb", "x" * 201])
def test_a_project_must_be_a_short_printable_name(project: str) -> None:
    with pytest.raises(ValueError, match="project"):
        new_api_key(project, now=NOW)


def test_hint_shows_only_the_last_four() -> None:
    assert hint_of(SECRET_PREFIX + "abcdefgh") == "sk-ovn-…efgh"


@pytest.mark.parametrize("token", ["sk-other", "key-a", "sk-ovn-", "sk-ovn-abc"])
def test_other_tokens_are_not_looked_up(token: str) -> None:
    assert not looks_stored(token)


# -- the authenticator ----------------------------------------------------------------------------


async def test_stored_keys_identify_their_project() -> None:
    member, admin = new_api_key("alpha", now=NOW), new_api_key("beta", admin=True, now=NOW)
    auth = Authenticator([], MemoryKeys(member.record, admin.record))
    assert await auth.identify(f"Bearer {member.secret}") == Identity("alpha", admin=False)
    assert await auth.identify_key(admin.secret) == Identity("beta", admin=True)
    assert not await auth.check_open()
    assert not auth.open


async def test_a_revoked_key_is_refused_on_the_next_request() -> None:
    made = new_api_key("alpha", now=NOW)
    keys = MemoryKeys(made.record)
    auth = Authenticator([], keys)
    assert (await auth.identify_key(made.secret)).project == "alpha"
    keys.keys[made.record.secret_hash] = dataclasses.replace(made.record, revoked_at=NOW + 1)
    with pytest.raises(Unauthorized) as refused:
        await auth.identify_key(made.secret)
    assert refused.value.code == "invalid_api_key"
    assert made.secret not in str(refused.value)


async def test_config_keys_and_stored_keys_work_together() -> None:
    made = new_api_key("alpha", now=NOW)
    keys = MemoryKeys(made.record)
    auth = Authenticator([ApiKey("sk-config", "gamma", admin=True)], keys)
    assert await auth.identify_key("sk-config") == Identity("gamma", admin=True)
    assert keys.lookups == 0  # a config key needs no store
    assert (await auth.identify_key(made.secret)).project == "alpha"
    with pytest.raises(Unauthorized):
        await auth.identify_key("not-a-key")
    assert keys.lookups == 1  # tokens that cannot be stored secrets are not looked up


async def test_any_stored_key_closes_an_open_server_and_it_stays_closed() -> None:
    keys = MemoryKeys()
    auth = Authenticator([], keys)
    assert await auth.check_open()
    assert await auth.identify(None) == Identity(DEFAULT_PROJECT, admin=True)
    made = new_api_key("alpha", now=NOW)
    keys.keys[made.record.secret_hash] = made.record
    with pytest.raises(Unauthorized) as refused:
        await auth.identify(None)
    assert refused.value.code == "missing_api_key"
    keys.keys.clear()  # never happens (keys are revoked, not deleted); closed is closed regardless
    assert not await auth.check_open()


async def test_no_store_and_no_keys_is_open() -> None:
    auth = Authenticator([])
    assert await auth.identify("Bearer anything") == Identity(DEFAULT_PROJECT, admin=True)


# -- binding --------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.0.0.5", "192.168.1.2", "example.com", "my-host"])
def test_hosts_others_may_reach(host: str) -> None:
    assert not is_loopback(host)


@given(st.ip_addresses(v=4))
def test_exactly_127_slash_8_is_loopback_in_ipv4(address: ipaddress.IPv4Address) -> None:
    assert is_loopback(str(address)) == (address in ipaddress.ip_network("127.0.0.0/8"))


def test_an_open_server_beyond_loopback_is_refused_with_a_one_line_reason() -> None:
    with pytest.raises(ConfigError) as refused:
        refuse_open_binding("0.0.0.0", open_=True, allow_unauthenticated=False)
    message = str(refused.value)
    assert "\n" not in message
    assert "no API keys" in message
    assert "allow_unauthenticated = true" in message
    assert "overnight keys create" in message


@pytest.mark.parametrize(
    ("host", "open_", "allowed"),
    [("0.0.0.0", True, True), ("0.0.0.0", False, False), ("127.0.0.1", True, False)],
)
def test_allowed_bindings(host: str, open_: bool, allowed: bool) -> None:
    refuse_open_binding(host, open_=open_, allow_unauthenticated=allowed)
