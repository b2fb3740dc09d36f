"""The official `openai` npm package, to check webhooks with the Node SDK's `client.webhooks.unwrap`.

Installed once from the npm registry into a cache folder (OVERNIGHT_NODE_OPENAI_DIR, default
~/.cache/overnight/node-openai) and kept there; each check runs `node` on a small script in that folder.
Tests skip, saying how to install it by hand, only when node or npm is missing or the registry cannot be
reached.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

PACKAGE = "openai@7.59.0"
INSTALL_TIMEOUT_S = 300
RUN_TIMEOUT_S = 60
SCRIPT_NAME = "unwrap.mjs"
# Reads [{body, headers, secret}] on stdin; writes [{ok, event} or {ok: false, error}] on stdout.
SCRIPT = """
import OpenAI from 'openai';
let text = '';
for await (const chunk of process.stdin) text += chunk;
const client = new OpenAI({ apiKey: 'unused' });
const verdicts = [];
for (const item of JSON.parse(text)) {
  try {
    const event = await client.webhooks.unwrap(item.body, item.headers, item.secret);
    verdicts.push({ ok: true, event });
  } catch (error) {
    verdicts.push({ ok: false, error: String(error && error.message ? error.message : error) });
  }
}
process.stdout.write(JSON.stringify(verdicts));
"""


def folder() -> Path:
    default = Path.home() / ".cache" / "overnight" / "node-openai"
    return Path(os.environ.get("OVERNIGHT_NODE_OPENAI_DIR", default))


def _how_to(reason: str) -> str:
    return (
        f"the Node SDK check needs node and the openai npm package ({reason}); install it with "
        f"`npm install --prefix {folder()} {PACKAGE}`"
    )


def ensure_installed() -> Path:
    """The folder holding node_modules/openai and the script; installs the package on first use."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip(_how_to("node or npm is not on PATH"))
    root = folder()
    root.mkdir(parents=True, exist_ok=True)
    marker = root / f".installed-{PACKAGE}"
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test processes install once
        if not marker.exists():
            try:
                done = subprocess.run(
                    ["npm", "install", "--prefix", str(root), "--no-audit", "--no-fund", PACKAGE],
                    capture_output=True,
                    text=True,
                    timeout=INSTALL_TIMEOUT_S,
                )
            except subprocess.TimeoutExpired:
                pytest.skip(_how_to(f"npm install took over {INSTALL_TIMEOUT_S} s"))
            if done.returncode != 0:
                pytest.skip(_how_to(f"npm install failed: {done.stderr.strip()[-300:]}"))
            marker.touch()
        (root / SCRIPT_NAME).write_text(SCRIPT)
    return root


def unwrap_all(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each case ({body: str, headers: {name: value}, secret: str}) through the Node SDK's unwrap."""
    root = ensure_installed()
    done = subprocess.run(
        ["node", str(root / SCRIPT_NAME)],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        cwd=root,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    verdicts: list[dict[str, Any]] = json.loads(done.stdout)
    return verdicts
