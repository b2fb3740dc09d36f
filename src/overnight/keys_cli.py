"""`overnight keys create|list|revoke`: the API keys kept in the metadata store, managed against the store
directly (like `overnight migrate`), with the same --config, --data-dir and OVERNIGHT_* settings as serve.

A new key's secret is printed once, on its own last line of stdout, and never kept (docs/auth.md)."""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Callable
from typing import TextIO

from overnight.config import ConfigError, Settings
from overnight.domain.api_keys import StoredApiKey, new_api_key
from overnight.domain.clock import SystemClock
from overnight.store.base import MetadataStore

EXIT_OK, EXIT_FAILED = 0, 1
COLUMNS = ("ID", "PROJECT", "NAME", "ADMIN", "HINT", "CREATED", "REVOKED")


def add_keys_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common_flags: Callable[[argparse.ArgumentParser], None],
) -> None:
    keys = commands.add_parser("keys", help="create, list and revoke the API keys kept in the store")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="make a key of a project; its secret is printed once")
    create.add_argument("--project", required=True, help="the project the key acts for")
    create.add_argument("--admin", action="store_true", help="the key sees every project")
    create.add_argument("--name", default="", help="what the key is for, shown by `keys list`")
    listing = actions.add_parser("list", help="every key (never a secret), revoked ones too")
    revoke = actions.add_parser("revoke", help="refuse a key from now on, on every server")
    revoke.add_argument("key_id", metavar="ID", help="the key's id (key_...), as `keys list` shows it")
    for parser in (create, listing, revoke):
        common_flags(parser)


async def run_keys_command(
    args: argparse.Namespace, settings: Settings, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    from overnight.wiring import build_store  # the store only: no backend, no blobs

    clock = SystemClock()
    store = build_store(settings, clock)
    try:
        await store.open()  # migrates, as serve does
    except (ConnectionError, OSError) as exc:
        raise ConfigError(f"setting 'database_url': {exc}") from None
    try:
        now = int(clock.now())
        if args.keys_command == "create":
            return await _create(store, args, now, out, err)
        if args.keys_command == "list":
            return await _list(store, out, err)
        return await _revoke(store, args.key_id, now, out, err)
    finally:
        await store.close()


async def _create(store: MetadataStore, args: argparse.Namespace, now: int, out: TextIO, err: TextIO) -> int:
    try:
        made = new_api_key(args.project, name=args.name, admin=args.admin, now=now)
    except ValueError as exc:
        raise ConfigError(f"--project/--name: {exc}") from None
    await store.add_api_key(made.record)
    key = made.record
    role = "admin (every project)" if key.admin else "member"
    print(f"{key.id}  project={key.project}  {role}  name={key.name or '-'}", file=out)
    print(made.secret, file=out)
    print("overnight: this is the only time the key is shown: keep it now", file=err)
    return EXIT_OK


async def _list(store: MetadataStore, out: TextIO, err: TextIO) -> int:
    keys = await store.list_api_keys()
    if not keys:
        print("overnight: no API keys stored (overnight keys create --project NAME)", file=err)
        return EXIT_OK
    rows = [COLUMNS, *(_row(key) for key in keys)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(COLUMNS))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out
        )
    return EXIT_OK


async def _revoke(store: MetadataStore, key_id: str, now: int, out: TextIO, err: TextIO) -> int:
    key = await store.revoke_api_key(key_id, now)
    if key is None:
        print(f"overnight: error: no API key has the id {key_id!r} (see overnight keys list)", file=err)
        return EXIT_FAILED
    if key.revoked_at is not None and key.revoked_at < now:
        print(f"{key.id} was already revoked at {_when(key.revoked_at)}", file=out)
    else:
        print(f"{key.id} revoked: every server refuses it from now on", file=out)
    return EXIT_OK


def _row(key: StoredApiKey) -> tuple[str, ...]:
    revoked = _when(key.revoked_at) if key.revoked_at is not None else "-"
    admin = "yes" if key.admin else "no"
    return (key.id, key.project, key.name or "-", admin, key.hint, _when(key.created_at), revoked)


def _when(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
