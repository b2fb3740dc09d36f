"""Whether a server may listen where it was told to: never open to a network by accident.

A server with no API keys (none in the config file, none stored) lets anyone in. That is right on
loopback, for one person's machine, and wrong on any address others can reach, unless the operator says
so on purpose with `allow_unauthenticated = true`.
"""

from __future__ import annotations

import ipaddress

from overnight.config import ConfigError

LOOPBACK_NAMES = frozenset({"localhost"})


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (and ::ffff:127.x) and `localhost`; anything else may face a network."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False  # a host name: it may resolve to anything
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def refuse_open_binding(host: str, *, open_: bool, allow_unauthenticated: bool) -> None:
    """A ConfigError (one line: why, and how to go on) when an open server would listen beyond loopback."""
    if open_ and not allow_unauthenticated and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve on {host} with no API keys: anyone who can reach it could use it. "
            "Create a key (overnight keys create --project NAME), add [[api_keys]] to the config file, "
            "or set allow_unauthenticated = true (OVERNIGHT_ALLOW_UNAUTHENTICATED=true) to serve it open "
            "on purpose"
        )
