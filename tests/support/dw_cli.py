"""Doubleword's `dw` CLI (PyPI `dw-cli`, a Rust binary inside the wheel) pointed at a server: its home
folder as `dw config set-url` and `dw login --api-key` leave it, and a binary this machine can load.

The wheel says manylinux_2_35, but its binary asks for GLIBC_2.39, for two symbols only (`pidfd_spawnp`,
`pidfd_getpid`), which Rust's standard library links weakly and checks for at run time. On an older glibc
(Debian 12 has 2.36) the loader refuses the whole binary for that version. `loadable` then runs a copy
whose requirement of those versions is marked weak (`VER_FLG_WEAK`), once it has checked that every symbol
asking for them is a weak one: the same program, which then runs without those two functions, as Rust's
standard library allows for. Nothing else in the binary changes.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

_SHT_GNU_VERNEED = 0x6FFFFFFE
_SHT_GNU_VERSYM = 0x6FFFFFFF
_SHT_DYNSYM = 11
_VER_FLG_WEAK = 0x2
_STB_WEAK = 2


class NotLoadable(Exception):
    """The binary cannot run on this machine, for the reason given."""


def bundled_binary(clients_python: Path) -> Path | None:
    """The `dw` binary inside the clients environment's `dw_cli` package, if it is installed."""
    found = sorted(clients_python.parent.parent.glob("lib/python3*/site-packages/dw_cli/bin/dw"))
    return found[0] if found else None


def write_home(home: Path, server: str, api_key: str, poll_interval_s: int = 1) -> Path:
    """~/.dw as `dw config set-url SERVER` and `dw login --api-key KEY` write it, with the shortest poll
    interval dw allows. (`dw login --api-key` checks the key at api.doubleword.ai whatever the server
    setting, and stores it anyway when it cannot: writing the file keeps the tests off the network.)"""
    folder = home / ".dw"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.toml").write_text(
        'active_account = "default"\n'
        f'[servers]\nai = "{server}"\nadmin = "{server}"\n'
        f"[client]\npoll_interval_secs = {poll_interval_s}\n"
    )
    credentials = folder / "credentials.toml"
    credentials.write_text(
        '[accounts.default]\ndisplay_name = "API Key"\nuser_id = "unknown"\nemail = "unknown"\n'
        f'inference_key = "{api_key}"\naccount_type = "personal"\n'
    )
    credentials.chmod(0o600)
    return home


def loadable(binary: Path, scratch: Path) -> Path:
    """`binary` if this machine loads it; else a copy with the glibc versions this machine lacks marked
    weak, where only weak symbols need them. Raises NotLoadable otherwise."""
    tried = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60, check=False)
    if tried.returncode == 0:
        return binary
    if "version `GLIBC_" not in tried.stderr:
        raise NotLoadable(f"{binary} --version exited with {tried.returncode}: {tried.stderr.strip()[:300]}")
    copy = scratch / "dw"
    shutil.copyfile(binary, copy)
    weaken_missing_glibc(copy, _glibc_version())
    copy.chmod(0o755)
    again = subprocess.run([copy, "--version"], capture_output=True, text=True, timeout=60, check=False)
    if again.returncode != 0:
        raise NotLoadable(f"even with the weak requirement: {again.stderr.strip()[:300]}")
    return copy


def _glibc_version() -> tuple[int, int]:
    text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    found = re.fullmatch(r"glibc (\d+)\.(\d+).*", text)
    if found is None:
        raise NotLoadable(f"not a glibc system ({text!r})")
    return int(found[1]), int(found[2])


def _needed_version(name: str) -> tuple[int, int] | None:
    found = re.fullmatch(r"GLIBC_(\d+)\.(\d+)(?:\.\d+)?", name)
    return (int(found[1]), int(found[2])) if found else None


def weaken_missing_glibc(path: Path, have: tuple[int, int]) -> list[str]:
    """Mark weak, in the ELF64 file at `path`, each GLIBC_x.y requirement newer than `have` whose symbols
    are all weak; the versions marked. Raises NotLoadable if a strong symbol needs one."""
    data = bytearray(path.read_bytes())
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise NotLoadable(f"{path} is not a little-endian ELF64 file")
    sections = _sections(data)
    by_type = {section[1]: section for section in sections}
    if _SHT_GNU_VERNEED not in by_type:
        return []
    verneed = by_type[_SHT_GNU_VERNEED]
    strings = sections[verneed[6]][4]
    weakened = []
    for entry, name, index in _requirements(data, verneed[4], strings):
        needed = _needed_version(name)
        if needed is None or needed <= have:
            continue
        strong = _strong_symbols_of(data, by_type, index)
        if strong:
            raise NotLoadable(f"{name} is needed by strong symbols too: {', '.join(strong[:5])}")
        flags = struct.unpack_from("<H", data, entry + 4)[0]
        struct.pack_into("<H", data, entry + 4, flags | _VER_FLG_WEAK)
        weakened.append(name)
    path.write_bytes(bytes(data))
    return weakened


def _sections(data: bytearray) -> list[tuple[int, ...]]:
    """(name, type, flags, addr, offset, size, link, info, align, entsize) of each section."""
    offset = struct.unpack_from("<Q", data, 0x28)[0]
    size, count = struct.unpack_from("<HH", data, 0x3A)
    return [struct.unpack_from("<IIQQQQIIQQ", data, offset + i * size) for i in range(count)]


def _text(data: bytearray, offset: int) -> str:
    return data[offset : data.index(b"\0", offset)].decode()


def _requirements(data: bytearray, offset: int, strings: int) -> list[tuple[int, str, int]]:
    """(offset of the Vernaux entry, version name, version index) of each version the file needs."""
    found = []
    while True:
        _, count, _, aux, following = struct.unpack_from("<HHIII", data, offset)
        entry = offset + aux
        for _ in range(count):
            _, _, index, name, step = struct.unpack_from("<IHHII", data, entry)
            found.append((entry, _text(data, strings + name), index))
            entry += step
        if not following:
            return found
        offset += following


def _strong_symbols_of(data: bytearray, by_type: dict[int, tuple[int, ...]], index: int) -> list[str]:
    """The names of the dynamic symbols bound to version `index` that are not weak."""
    symbols, versions = by_type[_SHT_DYNSYM], by_type[_SHT_GNU_VERSYM]
    sections = _sections(data)
    strings = sections[symbols[6]][4]
    strong = []
    for number in range(symbols[5] // 24):
        version = struct.unpack_from("<H", data, versions[4] + 2 * number)[0] & 0x7FFF
        if version != index:
            continue
        name, info = struct.unpack_from("<IB", data, symbols[4] + 24 * number)
        if info >> 4 != _STB_WEAK:
            strong.append(_text(data, strings + name))
    return strong
