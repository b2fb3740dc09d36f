"""The `overnight` command: thin; it parses arguments and hands over to the server or the runner."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from overnight import __version__
from overnight.client.commands import add_client_commands, run_client_command
from overnight.config import ConfigError, Secrets, Settings, load_secrets, load_settings
from overnight.domain.limits import parse_window
from overnight.keys_cli import add_keys_commands, run_keys_command
from overnight.store.schema import SchemaTooNew

EXIT_CONFIG_ERROR = 2
DEFAULT_RUN_TIMEOUT = "1h"
QUIET_LOGGERS = ("botocore", "aiobotocore", "asyncpg")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="overnight", description="A self-hosted, OpenAI-compatible Batch API."
    )
    parser.add_argument("--version", action="version", version=f"overnight {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP API and its worker")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", help="port to listen on (default 8000)")
    serve.add_argument(
        "--no-worker", dest="no_worker", action="store_true", help="the API only: workers run elsewhere"
    )
    _common_flags(serve)

    worker = commands.add_parser("worker", help="run the worker only (batches), no API")
    worker.add_argument("--host", help="address of --metrics-port (default 127.0.0.1)")
    worker.add_argument(
        "--metrics-port", dest="metrics_port", type=int, help="serve /metrics and /health on this port"
    )
    _common_flags(worker)

    migrate = commands.add_parser("migrate", help="bring the database schema up to date, then exit")
    _common_flags(migrate)

    run = commands.add_parser("run", help="validate and run a JSONL batch file without a server")
    run.add_argument("input", type=Path, help="batch input file (JSONL)")
    run.add_argument("-o", "--output", type=Path, required=True, help="where successful lines go")
    run.add_argument("--errors", type=Path, help="where failed lines go (default: beside the output)")
    run.add_argument(
        "--timeout",
        default=DEFAULT_RUN_TIMEOUT,
        help="give up on the lines still unfinished after this long, e.g. 90s, 30m, 24h (default "
        f"{DEFAULT_RUN_TIMEOUT}); they go to the errors file as batch_expired and the exit status is 1",
    )
    _common_flags(run)
    add_client_commands(commands)  # submit, batches: a client of any Batch API (src/overnight/client)
    add_keys_commands(commands, _common_flags)  # keys create|list|revoke, against the store
    return parser


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file")
    parser.add_argument(
        "--data-dir", dest="data_dir", help="folder for the SQLite database and files (default ./data)"
    )
    parser.add_argument(
        "--upstream",
        help="base URL of an OpenAI-compatible server for every model that neither a [[backends]] entry "
        "nor a local model serves (those come first)",
    )
    parser.add_argument("--log-level", dest="log_level", help="debug, info, warning or error")


def _settings(args: argparse.Namespace) -> Settings:
    names = ("host", "port", "data_dir", "config", "upstream", "log_level")
    return load_settings({name: getattr(args, name, None) for name in names})


def _run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it installs
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def _errors_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.errors{output.suffix or '.jsonl'}")


async def _run_offline(
    settings: Settings, secrets: Secrets, args: argparse.Namespace, timeout_s: float
) -> int:
    from overnight.offline import run_file
    from overnight.wiring import build_offline

    offline = build_offline(settings, secrets)
    await offline.router.start()
    try:
        errors = args.errors or _errors_path(args.output)
        return await run_file(offline, args.input, args.output, errors, timeout_s=timeout_s)
    finally:
        await offline.router.close()


def _metrics_port(port: int | None) -> int | None:
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"--metrics-port: {port} is not a TCP port")
    return port


def _timeout(text: str) -> float:
    seconds = parse_window(text) if not text.isdigit() else int(text)
    if not seconds:
        raise ConfigError(f"--timeout: {text!r} is not a duration such as 90s, 30m or 24h")
    return float(seconds)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("submit", "batches"):  # clients: no server settings
        return run_client_command(args)
    try:
        settings = _settings(args)
        if args.command == "keys":  # the store only: no upstream key or S3 credential needed
            keys_code: int = _run(run_keys_command(args, settings))
            return keys_code
        secrets = load_secrets(settings)
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
            stream=sys.stderr,
        )
        for chatty in QUIET_LOGGERS:  # their debug lines show request headers (an S3 access key id)
            logging.getLogger(chatty).setLevel(max(logging.INFO, logging.getLogger().level))
        if args.command in ("serve", "worker"):
            from overnight.server import Roles, serve

            if args.command == "serve":
                roles = Roles(api=True, worker=not args.no_worker)
            else:
                roles = Roles(api=False, worker=True, metrics_port=_metrics_port(args.metrics_port))
            _run(serve(settings, secrets, roles))
            return 0
        if args.command == "migrate":
            from overnight.wiring import migrate

            applied: list[int] = _run(migrate(settings))
            print(f"overnight: schema up to date; applied {applied or 'nothing'}", file=sys.stderr)
            return 0
        if not args.input.is_file():
            print(f"overnight: error: input file {str(args.input)!r} does not exist", file=sys.stderr)
            return EXIT_CONFIG_ERROR
        code: int = _run(_run_offline(settings, secrets, args, _timeout(args.timeout)))
        return code
    except ConfigError as error:
        print(f"overnight: error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except SchemaTooNew as error:
        print(f"overnight: error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR


if __name__ == "__main__":
    sys.exit(main())
