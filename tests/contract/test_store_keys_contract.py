"""The store's API keys (add_api_key, api_key_by_hash, list_api_keys, revoke_api_key, any_api_keys), on
every implementation (see conftest.py)."""

from __future__ import annotations

import pytest

from contract.conftest import StoreFactory
from overnight.domain.api_keys import StoredApiKey, hash_secret, new_api_key
from overnight.store.base import MetadataStore

NOW = 1_700_000_000


def a_key(project: str = "alpha", *, admin: bool = False, name: str = "", at: int = NOW) -> StoredApiKey:
    return new_api_key(project, name=name, admin=admin, now=at).record


async def test_no_keys_at_first(store: MetadataStore) -> None:
    assert await store.list_api_keys() == []
    assert not await store.any_api_keys()
    assert await store.api_key_by_hash(hash_secret("sk-ovn-nothing")) is None
    assert await store.revoke_api_key("key_missing", NOW) is None


async def test_a_key_is_found_by_its_secrets_hash_only(store: MetadataStore) -> None:
    made = new_api_key("alpha", name="ci runner", admin=True, now=NOW)
    await store.add_api_key(made.record)
    assert await store.any_api_keys()
    found = await store.api_key_by_hash(hash_secret(made.secret))
    assert found == made.record
    assert found is not None
    assert found.admin
    assert found.name == "ci runner"
    assert not found.revoked
    assert await store.api_key_by_hash(made.secret) is None  # the secret itself is no look-up key
    assert await store.api_key_by_hash(hash_secret(made.secret + "x")) is None


async def test_the_store_never_holds_the_secret(store: MetadataStore) -> None:
    made = new_api_key("alpha", now=NOW)
    await store.add_api_key(made.record)
    (listed,) = await store.list_api_keys()
    assert made.secret not in repr(listed)
    assert listed.hint.startswith("sk-ovn-…")
    assert made.secret.endswith(listed.hint[-4:])


async def test_list_is_oldest_first_with_revoked_ones(store: MetadataStore) -> None:
    keys = [a_key("alpha", at=NOW + 2), a_key("beta", at=NOW), a_key("alpha", admin=True, at=NOW + 1)]
    for key in keys:
        await store.add_api_key(key)
    await store.revoke_api_key(keys[0].id, NOW + 5)
    listed = await store.list_api_keys()
    assert [key.id for key in listed] == [keys[1].id, keys[2].id, keys[0].id]
    assert [key.revoked_at for key in listed] == [None, None, NOW + 5]


async def test_revoking_keeps_the_first_time_and_the_row(store: MetadataStore) -> None:
    made = new_api_key("alpha", now=NOW)
    await store.add_api_key(made.record)
    revoked = await store.revoke_api_key(made.record.id, NOW + 10)
    assert revoked is not None
    assert revoked.revoked_at == NOW + 10
    assert revoked.revoked
    again = await store.revoke_api_key(made.record.id, NOW + 20)
    assert again is not None
    assert again.revoked_at == NOW + 10
    found = await store.api_key_by_hash(hash_secret(made.secret))
    assert found is not None
    assert found.revoked_at == NOW + 10
    assert await store.any_api_keys()  # a revoked key still counts: the server stays closed


async def test_keys_survive_reopening(store_factory: StoreFactory) -> None:
    made = new_api_key("alpha", admin=True, now=NOW)
    first = store_factory()
    await first.open()
    await first.add_api_key(made.record)
    await first.close()
    second = store_factory()
    await second.open()
    try:
        assert await second.api_key_by_hash(hash_secret(made.secret)) == made.record
    finally:
        await second.close()


async def test_a_revocation_is_seen_at_once_by_another_store_on_the_same_data(
    store_factory: StoreFactory,
) -> None:
    made = new_api_key("alpha", now=NOW)
    one, other = store_factory(), store_factory()
    await one.open()
    await other.open()
    try:
        await one.add_api_key(made.record)
        assert await other.api_key_by_hash(hash_secret(made.secret)) == made.record
        await one.revoke_api_key(made.record.id, NOW + 1)
        seen = await other.api_key_by_hash(hash_secret(made.secret))
        assert seen is not None
        assert seen.revoked_at == NOW + 1
    finally:
        await one.close()
        await other.close()


async def test_two_keys_never_share_an_id_or_a_hash(store: MetadataStore) -> None:
    key = a_key()
    await store.add_api_key(key)
    with pytest.raises(Exception):  # noqa: B017, PT011 - each driver its own integrity error
        await store.add_api_key(key)
    assert len(await store.list_api_keys()) == 1
