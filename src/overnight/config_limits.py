"""Parsing the settings of the per-project limits (docs/limits.md): storage quotas in bytes.

```toml
default_storage_quota_bytes = 10737418240   # 10 GiB for every project not named below
[storage_quotas]
"team-a" = 107374182400                     # 100 GiB
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from overnight.config_values import ConfigError
from overnight.domain.quotas import StorageQuotas, UploadSizes

if TYPE_CHECKING:
    from overnight.config import Settings


def _bytes(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"setting '{name}': expected a whole number of bytes, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"setting '{name}': expected a whole number of bytes, got {value!r}") from None
    if number <= 0:
        raise ConfigError(f"setting '{name}': a storage quota must be positive, got {value!r}")
    return number


def parse_storage_quotas(name: str, value: Any) -> tuple[tuple[str, int], ...]:
    """A `[storage_quotas]` table of project = bytes."""
    if not isinstance(value, dict):
        raise ConfigError(f"setting '{name}': expected a [{name}] table of \"project\" = bytes")
    quotas = []
    for project, size in value.items():
        if not project:
            raise ConfigError(f"setting '{name}': a project name may not be empty")
        quotas.append((project, _bytes(f"{name}.{project}", size)))
    return tuple(quotas)


def parse_optional_quota(name: str, value: Any) -> int | None:
    """One quota for every project without its own (a number, also from the environment)."""
    return None if value in (None, "") else _bytes(name, value)


def upload_sizes(settings: Settings) -> UploadSizes:
    return UploadSizes(settings.max_upload_bytes, settings.max_batch_upload_bytes)


def storage_quotas(settings: Settings) -> StorageQuotas:
    return StorageQuotas(dict(settings.storage_quotas), settings.default_storage_quota_bytes)
