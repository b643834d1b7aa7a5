"""Which processes are really alive, by evidence a reused pid cannot fake.

A pid alone says little after a crash: pids are reused (soon after a container restarts), so
a pid file or a list of pids may name a live process that has nothing to do with us. Here a
process counts as ours only when more than its pid matches: its start time (a `ProcessRef`),
or its program and the data directory it runs in (`server_processes`): a database server's
working directory is its data directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import signal
import socket
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessRef:
    """A process as it was when it was seen: its pid and when it started, in seconds after the
    machine booted (the kernel's own count: a wall-clock step cannot move it)."""

    pid: int
    started: float

    @classmethod
    def current(cls) -> ProcessRef:
        return cls.of(os.getpid())

    @classmethod
    def of(cls, pid: int) -> ProcessRef:
        started = _started(pid)
        if started is None:
            raise psutil.NoSuchProcess(pid)
        return cls(pid, started)

    def alive(self) -> bool:
        """The same process still runs: its pid exists and started at the same moment."""
        started = _started(self.pid)
        return started is not None and abs(started - self.started) < 1e-6


def _started(pid: int) -> float | None:
    """When a live (not zombie) process started, in seconds after boot; None when there is none."""
    try:
        # /proc/<pid>/stat: "pid (comm) state ... starttime" (field 22, in clock ticks after boot);
        # comm may hold spaces and parentheses, so the fields are counted after its last ")".
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return _started_portably(pid)
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _started_portably(pid: int) -> float | None:
    """Where there is no /proc: the start time psutil gives (wall clock)."""
    try:
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else process.create_time()
    except psutil.Error:
        return None


@functools.cache
def this_node() -> str:
    """This machine (or container) as its processes' heartbeats name it: a pid is checked only
    on the node that wrote it. The boot id tells a rebooted machine of the same name apart."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


def server_processes(program: str, directory: Path) -> list[psutil.Process]:
    """Live processes named `program` whose working directory is `directory`: a server of that
    data directory (Postgres's postmaster and backends, redis-server), whoever started it."""
    wanted = directory.resolve()
    found = []
    for process in psutil.process_iter(["name", "cwd", "status"]):
        try:
            if (process.info["name"] == program and process.info["cwd"]
                    and process.info["status"] != psutil.STATUS_ZOMBIE and Path(process.info["cwd"]) == wanted):
                found.append(process)
        except (psutil.Error, OSError):
            continue
    return found


def is_server(pid: int, program: str, directory: Path) -> bool:
    """Whether `pid` (read from a pid file) is a live `program` serving `directory`."""
    return any(process.pid == pid for process in server_processes(program, directory))


def read_pid(path: Path, line: int = 0) -> int | None:
    """The pid on `line` of a pid file, or None when it is missing or unreadable."""
    try:
        return int(path.read_text().splitlines()[line].strip())
    except (OSError, ValueError, IndexError):
        return None


def end_processes(processes: list[psutil.Process], *, first: signal.Signals = signal.SIGTERM,
                  grace_s: float = 10.0) -> None:
    """Signal them, wait up to `grace_s`, then kill the ones left."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(first)
    _, left = psutil.wait_procs(processes, timeout=grace_s)
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(left, timeout=5)


@dataclass(frozen=True)
class Handle:
    """One user of a home's servers: a process (several users may share one) and its own id."""

    process: ProcessRef
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def alive(self) -> bool:
        return self.process.alive()


class Handles:
    """The users of a home's embedded servers, kept in a file under an exclusive lock.

    Each entry names its process by pid and start time, so an entry left by a crashed process
    is known to be stale even when its pid now belongs to someone else: it is dropped on the
    next change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_suffix(".lock")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the home's lock: starting, adopting and stopping its servers happen one at a time."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def live(self) -> list[Handle]:
        """The entries whose process still runs (call under `locked`)."""
        return [handle for handle in self.read() if handle.alive()]

    def add(self, handle: Handle) -> None:
        self.write([h for h in self.live() if h.id != handle.id] + [handle])

    def remove(self, handle: Handle) -> list[Handle]:
        """Drop `handle` and every stale entry; returns the live others."""
        others = [h for h in self.live() if h.id != handle.id]
        self.write(others)
        return others

    def read(self) -> list[Handle]:
        try:
            return [Handle(ProcessRef(int(e["pid"]), float(e["started"])), str(e["id"]))
                    for e in json.loads(self.path.read_text())]
        except (OSError, ValueError, TypeError, KeyError):
            return []

    def write(self, handles: list[Handle]) -> None:
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps([{**asdict(h.process), "id": h.id} for h in handles]))
        temporary.replace(self.path)
