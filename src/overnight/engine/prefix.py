"""Prefix keys: what a request's prompt starts with, in a form cheap to keep and compare.

A model server's prefix cache (vLLM's automatic prefix caching, SGLang's RadixAttention) serves a request
faster when the start of its prompt was computed recently. Overnight cannot see tokens, so it looks at the
prompt material as the server would render it, in order: the model name, the tools, then each message's
role and content (system prompt first, as written); for /v1/completions the prompt; for /v1/responses the
instructions, then the input. Embeddings have no reusable prefix: their key is empty.

The first `HEAD_BYTES` of that material are cut into `CHUNK_BYTES` chunks and each chunk is hashed to 8
bytes: the key is the hashes end to end. Two keys that agree on their first n chunks (8n bytes) come from
prompts that agree on their first n x CHUNK_BYTES bytes, so the key is a hierarchy of every prefix length
at once: sorting keys puts prompts that share a long prefix next to each other, and `shared_chunks` says how
long the shared part is. Hashes are Python's own (seeded per process): keys are only compared within one.
See docs/prefix-ordering.md.
"""

from __future__ import annotations

from array import array
from typing import Any

import msgspec

CHUNK_BYTES = 256  # about 64 tokens
HEAD_BYTES = 8192  # prompt material looked at: 32 chunks, a 256-byte key
HASH_BYTES = 8
EMPTY = b""
_SEPARATOR = "\n"


class _PromptParts(msgspec.Struct):
    """The fields of a request body that make up what a model server puts first in its prompt."""

    model: Any = None
    tools: Any = None
    messages: Any = None  # chat completions
    prompt: Any = None  # completions
    instructions: Any = None  # responses
    input: Any = None  # responses (and embeddings, which have no key)


_DECODER = msgspec.json.Decoder(_PromptParts)
_ENCODER = msgspec.json.Encoder()


def prefix_key(endpoint: str, body: bytes) -> bytes:
    """The key of a request to `endpoint` (its path, e.g. `/v1/chat/completions`) with this body."""
    if endpoint.endswith("/embeddings"):
        return EMPTY
    try:
        parts = _DECODER.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return EMPTY
    return key_of(material(parts))


def material(parts: _PromptParts) -> bytes:
    """The prompt material, in the order the server sees it, cut at HEAD_BYTES."""
    pieces: list[str] = [str(parts.model or "")]
    if parts.tools:
        pieces.append(_ENCODER.encode(parts.tools).decode())
    if isinstance(parts.messages, list):
        pieces.extend(_message_text(message) for message in parts.messages)
    elif parts.prompt is not None:
        pieces.append(_prompt_text(parts.prompt))
    else:
        if isinstance(parts.instructions, str):
            pieces.append(parts.instructions)
        if parts.input is not None:
            pieces.append(_responses_input(parts.input))
    return _head(pieces)


def _head(pieces: list[str]) -> bytes:
    """The pieces joined, up to HEAD_BYTES (stopping early, so a huge prompt costs no more)."""
    out = bytearray()
    for piece in pieces:
        out += piece.encode("utf-8", "surrogatepass")[: HEAD_BYTES - len(out)]
        out += _SEPARATOR.encode()
        if len(out) >= HEAD_BYTES:
            return bytes(out[:HEAD_BYTES])
    return bytes(out)


def _message_text(message: Any) -> str:
    if not isinstance(message, dict):
        return str(message)
    return f"{message.get('role', '')}:{_content_text(message.get('content'))}"


def _content_text(content: Any) -> str:
    """A message's content: a string, or parts (text, an image's url, ...) in order."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "".join(_part_text(part) for part in content)
    return _ENCODER.encode(content).decode()


def _part_text(part: Any) -> str:
    if isinstance(part, dict):
        for field in ("text", "input_text"):
            if isinstance(part.get(field), str):
                return str(part[field])
        return _ENCODER.encode(part).decode()
    return str(part)


def _prompt_text(prompt: Any) -> str:
    """A completions prompt: a string, token ids, or a list of them (the first is what is computed first)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        return _prompt_text(prompt[0])
    return _ENCODER.encode(prompt).decode()


def _responses_input(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _SEPARATOR.join(_message_text(item) for item in value)
    return _ENCODER.encode(value).decode()


def key_of(head: bytes) -> bytes:
    """The hashes of the head's chunks, end to end (a short last chunk is hashed as it is)."""
    chunks = (head[at : at + CHUNK_BYTES] for at in range(0, len(head), CHUNK_BYTES))
    return array("q", map(hash, chunks)).tobytes()


def shared_chunks(a: bytes, b: bytes) -> int:
    """How many leading chunks two keys have in common."""
    if a == b:
        return len(a) // HASH_BYTES
    length = min(len(a), len(b))
    differ = int.from_bytes(a[:length]) ^ int.from_bytes(b[:length])  # big-endian: the first byte leads
    same_bytes = length - (differ.bit_length() + 7) // 8
    return same_bytes // HASH_BYTES
