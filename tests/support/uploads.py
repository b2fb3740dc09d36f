"""Upload forms for FilesService.upload, as the HTTP layer would hand them over."""

from __future__ import annotations

from collections.abc import AsyncIterator

from overnight.services.files import FormPart


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def form_parts(
    content: bytes, *, filename: str = "input.jsonl", **fields: str
) -> AsyncIterator[FormPart]:
    """The text fields (`purpose="batch"`, ...), then the file part."""
    for name, value in fields.items():
        yield FormPart(name, None, _once(value.encode()))
    yield FormPart("file", filename, _once(content))
