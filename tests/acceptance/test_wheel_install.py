"""`pip install 'overnight[chat]'` from a built wheel, in a fresh venv, gives everything `make serve` gives.

The wheel is built from a copy of the sources (src, pyproject.toml, README.md) and installed with plain pip
the way docs/local-models.md tells an operator to (llama-cpp-python from the Makefile's wheel folder, since
PyPI has only its source). Then, in that venv and nowhere else: `overnight --version`; `pip check`; the
SQLite and PostgreSQL migrations and the MiniLM tokenizer, byte for byte; `overnight migrate` on an empty
data folder; and `overnight run` on a chat line and on an embeddings line, answered by the local models: the
chat model's weights and llama-cpp-python load and answer.

About 30 s on the 2-core machine with pip's cache warm (wheel 2 s, venv 2 s, install 16-23 s, checks 4 s).
Where the llama-cpp-python wheel is not in its folder yet (a machine where make never ran), it is first
compiled as the Makefile does, into the same folder (4-7 min, once per machine).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("src", "pyproject.toml", "README.md")
STEP_TIMEOUT_S = 600.0
COMPILE_TIMEOUT_S = 1800.0
DIMENSIONS = 384

# Run by the fresh venv's python: where things are and what the wheel carried.
PROBE = """
import hashlib, importlib.util, json, sys
from importlib.resources import files
import overnight
from overnight.backends.local import chat, embeddings

def sql(folder):
    found = files("overnight").joinpath("store", folder).iterdir()
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in found if p.name.endswith(".sql")}

print(json.dumps({
    "prefix": sys.prefix,
    "overnight": overnight.__file__,
    "migrations": sql("migrations"),
    "migrations_postgres": sql("migrations_postgres"),
    "tokenizer": hashlib.sha256(embeddings.TOKENIZER_PATH.read_bytes()).hexdigest(),
    "embeddings": embeddings.is_available(),
    "gguf": str(chat.gguf_path()),
    "llama_cpp": importlib.util.find_spec("llama_cpp").origin,
}))
"""


@dataclass(frozen=True)
class Installed:
    venv: Path
    work: Path
    env: dict[str, str]

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)


def makefile_variable(name: str) -> str:
    match = re.search(rf"^{name}\s*:=\s*(.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, f"the Makefile no longer sets {name}"
    return match.group(1).strip()


def wheels_folder(version: str) -> Path:
    """The Makefile's $(WHEELS): its default, or the WHEELS it was given."""
    if os.environ.get("WHEELS"):
        return Path(os.environ["WHEELS"])
    pytag = f"cp{sys.version_info.major}{sys.version_info.minor}-{platform.machine()}"
    return Path.home() / ".cache" / "overnight" / "wheels" / f"llama-cpp-python-{version}-portable-{pytag}"


def clean_env() -> dict[str, str]:
    """This environment without what would let the venv see the repository or this test's settings."""
    dropped = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"}
    return {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("OVERNIGHT_")}


def run(
    command: list[str], *, env: dict[str, str], cwd: Path, timeout: float = STEP_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
        )
    return result


def copy_sources(target: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    target.mkdir()
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=ignore)
        else:
            shutil.copy2(source, target / name)
    return target


def ensure_llama_wheel(pip: str, version: str, env: dict[str, str], cwd: Path) -> Path:
    """The Makefile's wheel folder, compiled into the same way first where it holds no wheel."""
    folder = wheels_folder(version)
    if any(folder.glob("*.whl")):
        return folder
    print(f"Compiling llama-cpp-python into {folder}, once per machine (4-7 min; docs/local-models.md)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
    try:
        build_env = {**env, "CMAKE_ARGS": makefile_variable("LLAMA_CMAKE_ARGS")}
        command = [pip, "wheel", "--quiet", "--no-deps", "--no-cache-dir", "--wheel-dir", str(staging)]
        run([*command, f"llama-cpp-python=={version}"], env=build_env, cwd=cwd, timeout=COMPILE_TIMEOUT_S)
        folder.mkdir(exist_ok=True)
        for wheel in staging.glob("*.whl"):  # whole wheels only: a later `ls $(WHEELS)/*.whl` trusts them
            wheel.replace(folder / wheel.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """A fresh venv with `overnight[chat]` installed from the wheel, as an operator would with pip."""
    version = makefile_variable("LLAMA_VERSION")
    chat = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["chat"]
    assert f"llama-cpp-python=={version}" in chat, "the Makefile's LLAMA_VERSION and the `chat` extra differ"

    work = tmp_path_factory.mktemp("wheel-install")
    env = clean_env()
    sources = copy_sources(work / "source")
    dist = work / "dist"
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dist)]
    run([*build, str(sources)], env=env, cwd=work)
    (wheel,) = dist.glob("overnight-*.whl")

    venv = work / "venv"
    run([sys.executable, "-m", "venv", str(venv)], env=env, cwd=work)
    pip = str(venv / "bin" / "pip")
    wheels = ensure_llama_wheel(pip, version, env, work)
    install = [pip, "install", "--quiet", "--find-links", str(wheels), "--only-binary", "llama-cpp-python"]
    run([*install, f"{wheel}[chat]"], env=env, cwd=work)
    yield Installed(venv, work, env)
    shutil.rmtree(venv, ignore_errors=True)  # ~520 MB; pytest keeps the last three temporary folders


def sql_files(folder: str) -> dict[str, str]:
    found = (ROOT / "src" / "overnight" / "store" / folder).glob("*.sql")
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in found}


def overnight_run(installed: Installed, name: str, line: dict[str, Any]) -> dict[str, Any]:
    """`overnight run` on one line, offline; that line's result."""
    source = installed.work / f"{name}.jsonl"
    output = installed.work / f"{name}.out.jsonl"
    source.write_text(json.dumps(line) + "\n")
    command = [installed.bin("overnight"), "run", str(source), "-o", str(output)]
    result = run(
        [*command, "--data-dir", str(installed.work / f"{name}-data")], env=installed.env, cwd=installed.work
    )
    assert "1 succeeded, 0 failed" in result.stderr + result.stdout
    (answer,) = [json.loads(text) for text in output.read_text().splitlines() if text.strip()]
    assert answer["custom_id"] == name
    assert answer["response"]["status_code"] == 200, answer
    body: dict[str, Any] = answer["response"]["body"]
    return body


def test_the_overnight_command_runs(installed: Installed) -> None:
    result = run([installed.bin("overnight"), "--version"], env=installed.env, cwd=installed.work)
    assert result.stdout.strip() == "overnight 0.1.0"


def test_nothing_conflicts(installed: Installed) -> None:
    run([installed.bin("pip"), "check"], env=installed.env, cwd=installed.work)


def test_package_data_and_models_come_from_the_venv(installed: Installed) -> None:
    result = run([installed.bin("python"), "-c", PROBE], env=installed.env, cwd=installed.work)
    probe = json.loads(result.stdout)
    prefix = Path(probe["prefix"]).resolve()
    assert prefix == installed.venv.resolve()
    for key in ("overnight", "gguf", "llama_cpp"):
        assert Path(probe[key]).resolve().is_relative_to(prefix), (key, probe[key])
    assert probe["migrations"] == sql_files("migrations") != {}
    assert probe["migrations_postgres"] == sql_files("migrations_postgres") != {}
    tokenizer = ROOT / "src" / "overnight" / "backends" / "local" / "model_data" / "minilm" / "tokenizer.json"
    assert probe["tokenizer"] == hashlib.sha256(tokenizer.read_bytes()).hexdigest()
    assert probe["embeddings"] is True


def test_migrate_applies_every_sqlite_migration(installed: Installed) -> None:
    data = installed.work / "migrate-data"
    result = run(
        [installed.bin("overnight"), "migrate", "--data-dir", str(data)],
        env=installed.env,
        cwd=installed.work,
    )
    applied = list(range(1, len(sql_files("migrations")) + 1))
    assert f"applied {applied}" in result.stderr


def test_the_chat_model_answers(installed: Installed) -> None:
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    body = {"model": "smollm2-135m-instruct", "max_tokens": 8, "temperature": 0, "messages": messages}
    line = {"custom_id": "chat", "method": "POST", "url": "/v1/chat/completions", "body": body}
    answer = overnight_run(installed, "chat", line)
    (choice,) = answer["choices"]
    assert choice["message"]["content"].strip()
    assert answer["usage"]["completion_tokens"] > 0


def test_the_embeddings_model_answers(installed: Installed) -> None:
    body = {"model": "all-minilm-l6-v2", "input": "hello, world!"}
    line = {"custom_id": "embeddings", "method": "POST", "url": "/v1/embeddings", "body": body}
    answer = overnight_run(installed, "embeddings", line)
    assert len(answer["data"][0]["embedding"]) == DIMENSIONS
