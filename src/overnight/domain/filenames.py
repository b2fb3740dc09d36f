"""The name an uploaded file is kept under: the client's, cleaned, or a refusal.

A file's name is only ever metadata: its content is stored under a key made from its id, so no name can
point anywhere on disk or in a bucket. The name is still shown back (in File objects, the dashboard,
downloads' headers), so it is cleaned the way browsers clean a name they are given:
* only the last path component is kept (after the last `/` or `\\`): `../../etc/passwd` -> `passwd`;
* control characters (NUL, CR, LF, ESC, DEL, the C1 range) and what undecodable bytes leave (lone
  surrogates, the replacement character) are dropped, as are spaces at either end;
* a name left empty, or made only of dots, is refused, and so is one longer than MAX_FILENAME_CHARS.
See docs/compatibility.md.
"""

from __future__ import annotations

import unicodedata
from typing import Final

from overnight.domain.errors import InvalidRequest

__all__ = ["MAX_FILENAME_CHARS", "clean_filename"]

MAX_FILENAME_CHARS: Final = 255


def _shown(char: str) -> bool:
    """Not a control character, nor what undecodable bytes leave (a lone surrogate, or U+FFFD)."""
    return char != "\ufffd" and unicodedata.category(char) not in ("Cc", "Cs")


def clean_filename(name: str) -> str:
    """The name to keep for an upload named `name`; InvalidRequest (param `file`) if none is left."""
    last = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(char for char in last if _shown(char)).strip()
    if not cleaned.strip("."):
        raise InvalidRequest(
            "Invalid file name: it must name a file, not a folder or nothing.",
            param="file",
            code="invalid_value",
        )
    if len(cleaned) > MAX_FILENAME_CHARS:
        raise InvalidRequest(
            f"Invalid file name: longer than {MAX_FILENAME_CHARS} characters ({len(cleaned)}).",
            param="file",
            code="invalid_value",
        )
    return cleaned
