"""Files: upload (streamed to blob storage), retrieve, list, delete, content, and expiry."""

from __future__ import annotations

import asyncio
import json
import logging
import posixpath
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

from overnight.blobs.base import BlobStore, BlobTooLarge
from overnight.domain import limits
from overnight.domain.clock import Clock
from overnight.domain.errors import InvalidRequest, file_not_found
from overnight.domain.filenames import clean_filename
from overnight.domain.idempotency import UploadFingerprint
from overnight.domain.ids import IdGenerator, blob_key
from overnight.domain.models import FileObject, Page
from overnight.probes import NO_PROBE, Probe
from overnight.services.idempotency import IdempotentCreates
from overnight.services.upload_limits import Allowance, UploadLimits
from overnight.store.base import MetadataStore, Order

log = logging.getLogger("overnight.files")
TEXT_FIELD_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class StagedContent:
    """File content already streamed to blob storage, waiting for its record."""

    file_id: str
    size: int


@dataclass(frozen=True, slots=True)
class FormPart:
    """One part of an upload's multipart form, as the HTTP layer hands it over."""

    name: str | None
    filename: str | None
    chunks: AsyncIterator[bytes]


@dataclass(frozen=True, slots=True)
class UploadForm:
    filename: str
    purpose: str | None
    expires_after_anchor: str | None = None
    expires_after_seconds: str | None = None


async def _text(part: FormPart) -> str:
    data = bytearray()
    async for chunk in part.chunks:
        data += chunk
        if len(data) > TEXT_FIELD_LIMIT:
            raise InvalidRequest(f"The form field '{part.name}' is too long.", param=part.name)
    return data.decode("utf-8", errors="replace")


async def _hashed(chunks: AsyncIterator[bytes], fingerprint: UploadFingerprint) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        fingerprint.content(chunk)
        yield chunk


def check_purpose(purpose: str | None) -> str:
    if purpose is None:
        raise InvalidRequest(
            "Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter"
        )
    if purpose not in limits.UPLOAD_PURPOSES:
        allowed = ", ".join(f"'{p}'" for p in limits.UPLOAD_PURPOSES)
        raise InvalidRequest(
            f"Invalid value: '{purpose}'. Supported values are: {allowed}.",
            param="purpose",
            code="invalid_value",
        )
    return purpose


def _check_not_repeated(part: FormPart, fields: dict[str, str], has_file: bool) -> None:
    """A form names each field once: a second `file` or `purpose` would leave which one counts to chance."""
    if part.name in fields or (part.name == "file" and has_file):
        raise InvalidRequest(
            f"The form field '{part.name}' is given more than once.", param=part.name, code="invalid_value"
        )


def _expires_after(fields: dict[str, str]) -> dict[str, str | None]:
    """`expires_after` as the SDK sends it (`expires_after[anchor]`, `expires_after[seconds]`) or as one
    JSON part, the object OpenAI's spec describes; both keys are then required."""
    if "expires_after" not in fields:
        return {
            "expires_after_anchor": fields.get("expires_after[anchor]"),
            "expires_after_seconds": fields.get("expires_after[seconds]"),
        }
    try:
        value = json.loads(fields["expires_after"])
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequest(
            "Invalid type for 'expires_after': expected an object.",
            param="expires_after",
            code="invalid_type",
        )
    for key in ("anchor", "seconds"):
        if value.get(key) is None:
            raise InvalidRequest(
                f"Missing required parameter: 'expires_after.{key}'.",
                param=f"expires_after.{key}",
                code="missing_required_parameter",
            )
    seconds = value["seconds"]
    return {
        "expires_after_anchor": str(value["anchor"]),
        "expires_after_seconds": str(seconds) if type(seconds) is int else "not an integer",
    }


def _expiry_seconds(anchor: str | None, seconds: str | None) -> int | None:
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequest(
            f"Invalid value: '{anchor}'. Supported values are: 'created_at'.",
            param="expires_after.anchor",
            code="invalid_value",
        )
    try:
        value = int(seconds or "")
    except ValueError:
        raise InvalidRequest(
            "Invalid type for 'expires_after.seconds': expected an integer.",
            param="expires_after.seconds",
            code="invalid_type",
        ) from None
    low, high = limits.EXPIRES_AFTER_MIN_SECONDS, limits.EXPIRES_AFTER_MAX_SECONDS
    if not low <= value <= high:
        raise InvalidRequest(
            f"'expires_after.seconds' must be between {low} and {high}.",
            param="expires_after.seconds",
            code="invalid_value",
        )
    return value


class FilesService:
    def __init__(
        self,
        store: MetadataStore,
        blobs: BlobStore,
        ids: IdGenerator,
        clock: Clock,
        probe: Probe = NO_PROBE,
        idempotency: IdempotentCreates | None = None,
        upload_limits: UploadLimits | None = None,
    ) -> None:
        self._idempotency = idempotency or IdempotentCreates(store, clock)
        self._limits = upload_limits or UploadLimits(store, clock)
        self._probe = probe
        self._store = store
        self._blobs = blobs
        self._ids = ids
        self._clock = clock

    async def upload(
        self,
        project: str,
        parts: AsyncIterator[FormPart],
        declared_bytes: int | None = None,
        idempotency_key: str | None = None,
    ) -> FileObject:
        """The whole upload: read the form's parts, stream the file's content to storage, record it.
        With `idempotency_key`, the request's fingerprint (its fields and content) is taken as it streams,
        and a key already used gives its file instead (services/idempotency.py).

        The content is staged under an upload record, so content that a crash leaves unrecorded is
        found again by `sweep_abandoned_uploads`; any refusal (a bad field, a second file part, an
        oversize body, a client gone) discards what was staged before the error leaves.
        """
        fields: dict[str, str] = {}
        staged: StagedContent | None = None
        filename = "upload"
        fingerprint = UploadFingerprint("POST /v1/files") if idempotency_key is not None else None
        try:
            async for part in parts:
                _check_not_repeated(part, fields, staged is not None)
                if part.name == "file":
                    filename = clean_filename(part.filename) if part.filename else "upload"
                    allowance = await self._limits.allowance(project, fields.get("purpose"))
                    self._limits.check_declared(allowance, declared_bytes)  # before a byte is stored
                    chunks = part.chunks if fingerprint is None else _hashed(part.chunks, fingerprint)
                    staged = await self._stage(chunks, allowance)
                elif part.name:
                    fields[part.name] = await _text(part)
            if staged is None:
                raise InvalidRequest(
                    "Missing required parameter: 'file'.", param="file", code="missing_required_parameter"
                )
            form = UploadForm(
                filename=filename,
                purpose=fields.get("purpose"),
                **_expires_after(fields),
            )
            file = self._describe(project, staged, form)
            self._probe.reached("upload.stored")
            if fingerprint is not None and idempotency_key is not None:
                for name, value in (*sorted(fields.items()), ("filename", filename)):
                    fingerprint.field(name, value)
                known = await self._add_once(project, idempotency_key, fingerprint.digest(), file)
                if known is not file:  # the key's file, uploaded before: this content is not needed
                    await asyncio.shield(self._discard(staged.file_id))
                    return known
            else:
                await self._store.add_file(file)  # also ends the upload record
        except BaseException:
            if staged is not None:
                await asyncio.shield(self._discard(staged.file_id))
            raise
        log.info(
            "file uploaded id=%s project=%s purpose=%s bytes=%d", file.id, project, file.purpose, file.bytes
        )
        return file

    async def _add_once(self, project: str, key: str, fingerprint: str, file: FileObject) -> FileObject:
        """Record `file` as the key's file, or give the file the key already has."""

        async def add(_: str) -> FileObject:
            await self._store.add_file(file)  # also ends the upload record
            return file

        outcome = await self._idempotency.create(
            project,
            key,
            fingerprint,
            new_id=lambda: file.id,
            create=add,
            find=lambda file_id: self._store.get_file(project, file_id),
            gone=file_not_found,
        )
        return outcome.value

    async def _stage(self, chunks: AsyncIterable[bytes], allowance: Allowance) -> StagedContent:
        """Stream content to storage under an upload record, refusing it once it passes the
        allowance (its purpose's size limit, or the room left in its project's storage quota)."""
        file_id = self._ids.file_id()
        await self._store.begin_upload(file_id, int(self._clock.now()))
        try:
            size = await self._blobs.put(blob_key(file_id), chunks, max_bytes=allowance.max_bytes)
        except BlobTooLarge:
            await self._store.end_upload(file_id)
            raise self._limits.refusal(allowance) from None
        except BaseException:
            await asyncio.shield(self._store.end_upload(file_id))
            raise
        return StagedContent(file_id, size)

    async def _discard(self, file_id: str) -> None:
        await self._blobs.delete(blob_key(file_id))
        await self._store.end_upload(file_id)

    async def sweep_abandoned_uploads(self, started_before: int, batch_size: int = 500) -> int:
        """Delete the content of uploads begun before `started_before` that never got their record
        (the process that took them died); returns how many went."""
        removed = 0
        while True:
            abandoned = await self._store.abandoned_uploads(started_before, batch_size)
            for file_id in abandoned:
                await self._discard(file_id)
            removed += len(abandoned)
            if len(abandoned) < batch_size:
                return removed

    def _describe(self, project: str, staged: StagedContent, form: UploadForm) -> FileObject:
        purpose = check_purpose(form.purpose)
        if staged.size > self._limits.sizes.limit_for(purpose):  # `purpose` came after the file
            raise self._limits.sizes.too_large(purpose)
        extension = posixpath.splitext(form.filename)[1].lower()
        if purpose == "batch" and extension not in ("", ".jsonl"):
            raise InvalidRequest("Invalid file format for Batch API. Must be .jsonl")
        now = int(self._clock.now())
        ttl = _expiry_seconds(form.expires_after_anchor, form.expires_after_seconds)
        if ttl is None and purpose == "batch":
            ttl = limits.BATCH_FILE_DEFAULT_TTL_SECONDS
        return FileObject(
            id=staged.file_id,
            project=project,
            bytes=staged.size,
            created_at=now,
            filename=form.filename,
            purpose=purpose,
            expires_at=None if ttl is None else now + ttl,
        )

    async def retrieve(self, project: str | None, file_id: str) -> FileObject:
        """The file, if it is the project's; `project` None: of any project (for an admin)."""
        file = await self._store.get_file(project, file_id)
        if file is None:
            raise file_not_found(file_id)
        return file

    async def list(
        self, project: str | None, *, purpose: str | None, after: str | None, limit: int, order: Order
    ) -> Page[FileObject]:
        """The project's files; `project` None: every project's (for an admin)."""
        return await self._store.list_files(project, purpose=purpose, after=after, limit=limit, order=order)

    async def delete(self, project: str | None, file_id: str) -> None:
        if not await self._store.delete_file(project, file_id):
            raise file_not_found(file_id)
        await self._forget_content(file_id)

    async def _forget_content(self, file_id: str) -> None:
        # A running batch still reads its input: the engine removes the content when the batch ends.
        if not await self._store.file_in_use(file_id):
            await self._blobs.delete(blob_key(file_id))

    async def content(self, project: str | None, file_id: str) -> tuple[FileObject, AsyncIterator[bytes]]:
        file = await self.retrieve(project, file_id)
        if file.purpose in limits.DOWNLOAD_FORBIDDEN_PURPOSES:
            raise InvalidRequest(f"Not allowed to download files of purpose: {file.purpose}")
        if not await self._blobs.exists(blob_key(file_id)):
            raise file_not_found(file_id)
        return file, self._blobs.read(blob_key(file_id))

    async def sweep_expired(self, batch_size: int = 500) -> int:
        """Delete files past their expires_at; returns how many went."""
        removed = 0
        while True:
            due = await self._store.files_expired_before(int(self._clock.now()), batch_size)
            for file in due:
                if await self._store.delete_file(file.project, file.id):
                    await self._forget_content(file.id)
                    removed += 1
            if len(due) < batch_size:
                return removed
