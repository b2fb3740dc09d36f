"""A server with three projects' keys, on SQLite or PostgreSQL: alpha's from the config file, beta's
and an admin's (project ops) made by `overnight keys create`. Shared by the isolation and admin tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from acceptance.conftest import scratch_database, write_config
from acceptance.test_stored_keys import create_key
from support.server import OvernightServer


@dataclass(frozen=True)
class ProjectsServer:
    server: OvernightServer
    beta_key: str
    admin_key: str


@contextlib.contextmanager
def projects_server(root: Path, upstream_url: str, store: str, alpha_key: str) -> Iterator[ProjectsServer]:
    """Start it (`store`: "sqlite" or "postgres", a scratch database) and stop it afterwards."""
    with contextlib.ExitStack() as stack:
        env = (
            {"OVERNIGHT_DATABASE_URL": stack.enter_context(scratch_database())} if store == "postgres" else {}
        )
        config = write_config(root / "overnight.toml", upstream_url, api_keys={alpha_key: "alpha"})
        where = ("--data-dir", str(root / "data"), "--config", str(config))
        beta = create_key("--project", "beta", *where, env=env).secret
        admin = create_key("--project", "ops", "--admin", *where, env=env).secret
        server = OvernightServer(root / "data", config, env=env)
        server.start()
        stack.callback(server.stop)
        yield ProjectsServer(server, beta, admin)
