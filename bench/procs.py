"""The processes the bench starts (Overnight, the fake upstream) and what /proc says about processes."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.server import FAKE_UPSTREAM, free_port, http_json, stop_process, wait_until_healthy

REPO = Path(__file__).resolve().parent.parent
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- /proc -------------------------------------------------------------------------------------------


def status_kb(pid: int, name: str) -> int | None:
    """A `kB` field of /proc/<pid>/status (VmHWM is the peak resident set, VmRSS the current one)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time of a process (all its threads), or of one of its threads, so far;
    0 when it is gone."""
    where = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    try:
        with open(where) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime and stime, fields 14 and 15


def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine have used since boot (the first line of /proc/stat)."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(x) for x in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


def children(pid: int) -> list[int]:
    """Direct children of a process, found by scanning /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid:
            found.append(int(entry))
    return found


@dataclass
class CpuMeter:
    """CPU seconds used by some processes between start() and stop(), as a share of one core.

    `main_thread_of` names groups (one process each) whose main thread is also measured on its own:
    for Overnight that is the event loop, the rest being the SQLite thread and file I/O threads.
    """

    pids: dict[str, list[int]]
    main_thread_of: tuple[str, ...] = ()
    wall_s: float = 0.0
    used_s: dict[str, float] = field(default_factory=dict)
    _start: dict[str, float] = field(default_factory=dict)
    _t0: float = 0.0

    def _sample(self) -> dict[str, float]:
        sample = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in self.pids.items()}
        sample["bench client"] = time.process_time()
        sample["everything"] = machine_busy_seconds()
        for name in self.main_thread_of:
            pid = self.pids[name][0]
            sample[f"{name} event loop thread"] = cpu_seconds(pid, pid)
        return sample

    def start(self) -> CpuMeter:
        self._start = self._sample()
        self._t0 = time.perf_counter()
        return self

    def stop(self) -> CpuMeter:
        self.wall_s = time.perf_counter() - self._t0
        end = self._sample()
        self.used_s = {name: end[name] - self._start[name] for name in end}
        everything = self.used_s.pop("everything")
        mine = sum(used for name, used in self.used_s.items() if not name.endswith(" event loop thread"))
        self.used_s["other processes"] = max(0.0, everything - mine)
        return self

    def cores(self) -> dict[str, float]:
        """Average cores used by each process over the measured interval."""
        wall = self.wall_s or 1.0
        return {name: round(used / wall, 2) for name, used in self.used_s.items()}


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    quota = None
    with contextlib.suppress(OSError), open("/sys/fs/cgroup/cpu.max") as handle:
        quota = handle.read().strip()
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "cgroup_cpu_max": quota,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "commit": _git("rev-parse", "--short", "HEAD"),
        "src_modified": bool(_git("status", "--porcelain", "--", "src")),
    }


# -- the processes -----------------------------------------------------------------------------------


class FakeUpstream:
    """tests/support/fake_upstream.py as a subprocess (an aiohttp server; knobs as CLI flags)."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(FAKE_UPSTREAM), "--port", "0", *args], stdout=subprocess.PIPE
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"fake upstream failed to start: {line!r}")
        self.base_url = line.split(" ", 1)[1]  # ends in /v1
        self.root = self.base_url.removesuffix("/v1")

    @property
    def pids(self) -> list[int]:
        return [self.process.pid]

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = http_json("GET", f"{self.root}/_stats", timeout=30.0)
        return result

    def stop(self) -> None:
        stop_process(self.process, timeout=10)

    def __enter__(self) -> FakeUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Profiler:
    """`py-spy record` on a running server while in the block (a speedscope file); off when `output`
    is None. py-spy is not a dependency: `.venv/bin/pip install py-spy` to use it (it costs the server
    a few percent, so the run's figures are not comparable with unprofiled ones)."""

    def __init__(self, server: Overnight, output: Path | None) -> None:
        self._server = server
        self._output = output
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profiler:
        if self._output is None:
            return self
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(spy).is_file():
            raise RuntimeError("--py-spy needs py-spy: .venv/bin/pip install py-spy")
        command = [spy, "record", "-p", str(self._server.pid), "-f", "speedscope", "-o", str(self._output)]
        command += ["--rate", "200", "--nonblocking", "--threads"]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # py-spy attaches
        if self._process.poll() is not None:
            error = self._process.stderr.read().decode() if self._process.stderr else ""
            raise RuntimeError(f"py-spy failed: {error.strip()}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            self._process.wait(timeout=60)
            if self._process.stderr is not None:
                self._process.stderr.close()
            print(f"bench: py-spy profile of the server written to {self._output}", file=sys.stderr)


ROLES = ("serve", "api", "worker")


class Overnight:
    """`overnight serve` as a subprocess with its own data folder, config file and log file; or, by `role`,
    an API server alone (`serve --no-worker`) or a worker alone (`worker --metrics-port`)."""

    def __init__(
        self,
        work: Path,
        name: str,
        upstream: str | None,
        max_concurrency: int,
        *,
        env: Mapping[str, str | None] | None = None,
        role: str = "serve",
        **settings: float | str,
    ) -> None:
        """`upstream` None: no backend, so only the local models (on by default) serve. `env`: variables
        to set (a string) or to remove (None) in the server's environment, which is otherwise this one.
        `role`: "serve" (API and worker in one process), "api" or "worker" (its port serves /metrics
        and /health only)."""
        if role not in ROLES:
            raise ValueError(f"role {role!r}: one of {ROLES}")
        self.role = role
        self.data_dir = work / f"{name}-data"
        self.config = work / f"{name}.toml"
        self.log_path = work / f"{name}.log"
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.root}/v1"
        self.settings: dict[str, float | str] = dict(settings)
        lines = [f"{key} = {json.dumps(value)}" for key, value in self.settings.items()]
        if upstream is not None:
            lines += [
                "[[backends]]",
                'name = "bench"',
                f"base_url = {json.dumps(upstream)}",
                'models = ["*"]',
                f"max_concurrency = {max_concurrency}",
            ]
        self.config.write_text("\n".join(lines) + "\n")
        self.env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def environment(self) -> dict[str, str] | None:
        """The server's environment: None (this process's) unless `env` changes it."""
        if not self.env:
            return None
        merged = {**os.environ, **self.env}
        return {name: value for name, value in merged.items() if value is not None}

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "overnight"]
        if self.role == "worker":
            command += ["worker", "--metrics-port", str(self.port)]
        else:
            command += ["serve", "--port", str(self.port), *(["--no-worker"] if self.role == "api" else [])]
        return [*command, "--data-dir", str(self.data_dir), "--config", str(self.config)]

    def start(self) -> Overnight:
        return self.launch().wait_healthy()

    def launch(self) -> Overnight:
        """Start the process without waiting for it (start() = launch() + wait_healthy())."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=self.environment()
            )
        return self

    def wait_healthy(self) -> Overnight:
        assert self.process is not None
        wait_until_healthy(f"{self.root}/health", self.process)
        return self

    def migrate(self, timeout: float = 120.0) -> str:
        """`overnight migrate` on this server's settings and environment (its log goes to the server's
        log file); what it printed last. RuntimeError when it fails."""
        command = [sys.executable, "-m", "overnight", "migrate"]
        command += ["--data-dir", str(self.data_dir), "--config", str(self.config)]
        done = subprocess.run(
            command, capture_output=True, text=True, cwd=REPO, env=self.environment(), timeout=timeout
        )
        with self.log_path.open("a") as log:
            log.write(done.stdout + done.stderr)
        last = (done.stderr.strip().splitlines() or [""])[-1]
        if done.returncode != 0:
            raise RuntimeError(f"overnight migrate exited with {done.returncode}: {last}")
        return last

    def peak_rss_mb(self) -> float:
        """VmHWM: the most memory the process has held at once since it started."""
        return (status_kb(self.pid, "VmHWM") or 0) / 1024

    def rss_mb(self) -> float:
        return (status_kb(self.pid, "VmRSS") or 0) / 1024

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Overnight:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
