"""API keys kept in the store: how a secret is made, what is kept of it (its SHA-256), and what is shown.

A secret is `sk-ovn-` and 43 url-safe characters: 32 bytes (256 bits) from the operating system's CSPRNG.
It is shown once, when the key is made, and never kept: the store holds its SHA-256 only.

Why a plain SHA-256, with no salt and no slow KDF (bcrypt, scrypt, Argon2): those protect passwords, which
people choose from a small space, against guessing (a KDF makes each guess slow) and against tables
computed ahead (a salt makes each hash unique). A key here is 256 uniformly random bits: nobody can guess
one, slowly or fast (2**256 tries), no table can cover them, and no two keys share a hash. The hash only has
to be one-way, which SHA-256 is. It also lets a server find a key by its hash, one indexed look-up per
request, where a salted hash would need the key's id beside the secret. (GitHub and Stripe keep their
tokens this way.)
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

SECRET_PREFIX = "sk-ovn-"
SECRET_BYTES = 32  # 256 bits; token_urlsafe gives 43 characters
KEY_ID_PREFIX = "key_"
HINT_TAIL = 4
MAX_NAME_CHARS = 200
MAX_PROJECT_CHARS = 200


@dataclass(frozen=True, slots=True)
class StoredApiKey:
    """A key as the store keeps it: never its secret."""

    id: str
    secret_hash: str  # SHA-256 of the secret, hex
    project: str
    name: str
    admin: bool
    hint: str  # what may be shown of the secret: sk-ovn-…abcd
    created_at: int
    revoked_at: int | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True, slots=True)
class NewApiKey:
    """A key just made: its record and its secret, which is shown this once."""

    record: StoredApiKey
    secret: str


def hash_secret(secret: str) -> str:
    """What the store keeps of a secret, and looks it up by."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def hint_of(secret: str) -> str:
    """The part of a secret that may be shown (in `overnight keys list`, in log lines)."""
    return f"{SECRET_PREFIX}…{secret[-HINT_TAIL:]}"


def looks_stored(token: str) -> bool:
    """Whether a bearer token could be a stored key's secret (others are not looked up)."""
    return token.startswith(SECRET_PREFIX) and len(token) > len(SECRET_PREFIX) + HINT_TAIL


def check_project(project: str) -> str:
    project = project.strip()
    if not project or len(project) > MAX_PROJECT_CHARS or not project.isprintable():
        raise ValueError(f"a project is 1 to {MAX_PROJECT_CHARS} printable characters, not {project!r}")
    return project


def check_name(name: str) -> str:
    name = name.strip()
    if len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise ValueError(f"a key's name is at most {MAX_NAME_CHARS} printable characters")
    return name


def new_api_key(project: str, *, name: str = "", admin: bool = False, now: int) -> NewApiKey:
    """A fresh key of `project`: a random secret and the record that keeps its hash."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)
    record = StoredApiKey(
        id=KEY_ID_PREFIX + secrets.token_hex(12),
        secret_hash=hash_secret(secret),
        project=check_project(project),
        name=check_name(name),
        admin=admin,
        hint=hint_of(secret),
        created_at=now,
    )
    return NewApiKey(record, secret)
