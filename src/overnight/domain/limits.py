"""OpenAI's published limits for the Batch and Files APIs, in one place."""

from __future__ import annotations

from collections.abc import Sequence

MAX_REQUESTS_PER_BATCH = 50_000
MAX_EMBEDDING_INPUTS_PER_BATCH = 50_000
MAX_BATCH_INPUT_BYTES = 209_715_200  # 200 MB, the figure in OpenAI's own error message
MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_VALIDATION_ERRORS = 100  # errors.data entries kept for a failed batch; see docs/compatibility.md

METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY_CHARS = 64
METADATA_MAX_VALUE_CHARS = 512

EXPIRES_AFTER_MIN_SECONDS = 3600
EXPIRES_AFTER_MAX_SECONDS = 2_592_000
BATCH_FILE_DEFAULT_TTL_SECONDS = 2_592_000  # batch input files: 30 days, like OpenAI
OUTPUT_FILE_DEFAULT_TTL_SECONDS = 2_592_000  # output/error files: 30 days after they are written

BATCH_LIST_DEFAULT_LIMIT = 20
BATCH_LIST_MAX_LIMIT = 100
FILE_LIST_DEFAULT_LIMIT = 10_000
FILE_LIST_MAX_LIMIT = 10_000

BATCH_ENDPOINTS = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)

UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
DOWNLOAD_FORBIDDEN_PURPOSES = ("assistants", "user_data")

DEFAULT_MODERATION_MODEL = "omni-moderation-latest"


def parse_window(text: str) -> int | None:
    """Seconds in a completion window such as `24h`, `90m`, `7d` or `30s`; None if malformed."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        return None
    seconds = int(text[:-1]) * units[text[-1]]
    return seconds if seconds > 0 else None


def fair_share(limit: int, workers: Sequence[str], worker: str) -> int:
    """`worker`'s share of a backend's `limit` (requests in flight across every worker) among the
    `workers` that want some: an equal part each, the remainder one each to the first in id order.
    The shares of any one list add up to `limit` exactly."""
    ordered = sorted(set(workers) | {worker})
    base, extra = divmod(max(limit, 0), len(ordered))
    return base + (1 if ordered.index(worker) < extra else 0)
