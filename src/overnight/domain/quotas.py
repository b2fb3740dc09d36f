"""The per-project limits on what a client may ask of the server (pure): the size of one upload, the
storage a project's files may take, and how many batches it may create in an hour (docs/limits.md).

Each refusal is an ApiError whose status the OpenAI SDK maps right: an upload past its size 413 (a plain
`APIStatusError`), an upload past the project's storage 400 (`BadRequestError`), a batch past the
creation rate 429 (`RateLimitError`) with the `retry-after` that is true for it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from overnight.domain import limits
from overnight.domain.errors import InvalidRequest, PayloadTooLarge, TooManyRequests

RATE_WINDOW_S = 3600  # batch_create_rate_per_hour counts the batches of the last hour
STORAGE_QUOTA_CODE = "storage_quota_exceeded"
RATE_LIMIT_CODE = "rate_limit_exceeded"
UPLOAD_TOO_LARGE_CODE = "file_too_large"


@dataclass(frozen=True, slots=True)
class UploadSizes:
    """The largest upload of each kind: a batch input file, and a file of any other purpose."""

    max_file_bytes: int = limits.MAX_FILE_BYTES
    max_batch_bytes: int = limits.MAX_BATCH_INPUT_BYTES

    def limit_for(self, purpose: str | None) -> int:
        """The limit of an upload of `purpose`; unknown (None) is the larger one, to be refined later."""
        if purpose == "batch":
            return self.max_batch_bytes
        if purpose is None:
            return max(self.max_file_bytes, self.max_batch_bytes)
        return self.max_file_bytes

    def too_large(self, purpose: str | None) -> PayloadTooLarge:
        if purpose == "batch":
            message = f"The batch input file is larger than the {self.max_batch_bytes} maximum."
            setting = "max_batch_upload_bytes"
        else:
            message = f"File is too large. The maximum size is {self.limit_for(purpose)} bytes."
            setting = "max_upload_bytes"
        return PayloadTooLarge(f"{message} (setting {setting})", param="file", code=UPLOAD_TOO_LARGE_CODE)


@dataclass(frozen=True, slots=True)
class StorageQuotas:
    """Bytes each project's files may take: its own entry, else `default`; None: no quota."""

    per_project: Mapping[str, int] = field(default_factory=dict)
    default: int | None = None

    def quota_of(self, project: str) -> int | None:
        return self.per_project.get(project, self.default)

    @property
    def any(self) -> bool:
        return bool(self.per_project) or self.default is not None


def room_left(quota: int, stored: int) -> int:
    """Bytes a new upload may have when the project's files take `stored` of `quota` (never negative)."""
    return max(quota - stored, 0)


def storage_quota_exceeded(project: str, quota: int, stored: int) -> InvalidRequest:
    return InvalidRequest(
        f"This upload would take project '{project}' past its storage quota of {quota} bytes "
        f"({stored} bytes are in use); delete files or ask for a larger quota.",
        param="file",
        code=STORAGE_QUOTA_CODE,
    )


def retry_after_s(nth_latest_created_at: int, now: int, window_s: int = RATE_WINDOW_S) -> int:
    """Seconds until a project with `n` batches created in the window may create one more, where
    `nth_latest_created_at` is when the n-th latest of them was: that batch must leave the window
    (at least 1, as `retry-after` 0 would mean at once)."""
    return max(1, nth_latest_created_at + window_s - now)


def batch_rate_exceeded(per_hour: int, retry_after: int) -> TooManyRequests:
    minutes = math.ceil(retry_after / 60)
    return TooManyRequests(
        f"Rate limit reached for batch creation: at most {per_hour} batches per hour (setting "
        f"batch_create_rate_per_hour). Try again in {retry_after} s (about {minutes} min).",
        code=RATE_LIMIT_CODE,
        headers=(("retry-after", str(retry_after)), ("x-should-retry", "true")),
    )
