"""The sandbox: where the agent and the repository's own code run (bubblewrap).

Every Claude session (the CLI and all it starts) and every command the platform runs on the
repository's behalf (setup, RED, GREEN, suite) runs in one of these:

- its own user, PID, IPC, UTS, cgroup and network namespaces; no capabilities; a new session
  (no terminal injection); killed whole with its parent: when the session or the command ends,
  the PID namespace goes and everything in it (a `setsid cmd &` included);
- a filesystem of read-only parts: the toolchain (`/usr` and a curated `/etc`), the Python
  interpreter the repository's environment was made with (its site-packages hidden: that is
  the platform's own), the repository environment at `/env`, platform helpers under `/opt`;
  writable: only the checkout at `/workspace` (unless read-only, as for the planner), a home
  of its own and a private `/tmp`. Nothing else of the host: not FIXFLEET_HOME, other
  checkouts, the mirrors, `/tmp/ray`, `~/.ray`, the platform's interpreter or its secrets;
- no network but loopback. Each allowed way out is a platform-side proxy on a Unix socket
  (fixfleet/workspace/egress.py), bridged inside to 127.0.0.1:<port> by socat;
- limits (fixfleet/workspace/limits.py): a process cap (a pids cgroup of its own, else
  RLIMIT_NPROC), sized tmpfs mounts, a largest file, and a quota on how much a writable
  checkout may grow, watched while it runs;
- an environment built from nothing: bubblewrap itself starts with an empty one (its own
  `/proc/1/environ` is visible inside), every variable is set explicitly.

`FIXFLEET_SANDBOX=off` runs the same commands without bubblewrap, for trusted local
experiments only: the platform says so loudly everywhere (health, `fixfleet up`, PR bodies).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from fixfleet.workspace.limits import (
    AUX_TMPFS_BYTES,
    SandboxLimits,
    growth_watch,
    new_run_id,
    process_limit,
)
from fixfleet.workspace.spawn import without_inherited_fds

log = logging.getLogger(__name__)

WORKSPACE = "/workspace"
ENV_DIR = "/env"
HOME = "/home/agent"
HELPERS = "/opt/fixfleet/helpers"
TOOLS = "/opt/fixfleet/bin"
SOCKETS = "/run/fixfleet"
SANDBOX_UID = 1000
# Only what programs need from /etc: no service configs, credentials or the host's pip/npm/git setup.
ETC_ENTRIES = ("hosts", "resolv.conf", "nsswitch.conf", "host.conf", "gai.conf", "ssl", "ca-certificates",
               "ca-certificates.conf", "alternatives", "localtime", "timezone", "ld.so.cache", "ld.so.conf",
               "ld.so.conf.d", "mime.types", "protocols", "services", "inputrc", "bash.bashrc",
               "debian_version", "os-release", "login.defs", "magic", "magic.mime")
ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
SAFE_PATH = f"{TOOLS}:/usr/local/bin:/usr/bin:/bin"
# The host's CA bundle settings (a TLS-inspecting proxy's CA lives there), when they point at
# files the sandbox can see: registries reached through the egress proxy are verified with them.
CA_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
          "PIP_CERT", "GIT_SSL_CAINFO")
OUTPUT_TAIL = 64 * 1024
# The report channel: a FIFO the platform reads, bound into the run at this path (named by
# FIXFLEET_REPORT). A reporter the platform injects writes the run's test results there, from
# whichever process of the run it lives in (runners spawn children: a descriptor would not reach
# them); nothing in the sandbox can rewrite what was already sent (a file it could reopen and
# truncate), only add to it, which the parsers refuse as a forged report.
REPORT_PATH = "/run/fixfleet/report"
REPORT_LIMIT = 32 * 1024 * 1024
INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap socat) and, in a container, "
                "allow user namespaces (see cluster/GUIDE.md: the agents' sandbox); or set FIXFLEET_SANDBOX=off "
                "for a trusted local experiment")


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create its namespaces here; the message says what to do."""


class Bridge(BaseModel):
    """A platform-side proxy's Unix socket, reachable inside as 127.0.0.1:port."""

    socket: Path
    port: int


@dataclass
class SandboxSpec:
    """What one sandboxed run sees. Host paths on the left, fixed paths inside."""

    workspace: Path  # mounted at /workspace
    workspace_writable: bool = True
    env_dir: Path | None = None  # the repository's environment, at /env
    env_writable: bool = False  # only while the environment is being built
    home: Path | None = None  # a host directory for $HOME (the CLI's state); else a private tmpfs
    read_only: dict[str, Path] = field(default_factory=dict)  # inside path -> host path
    writable: dict[str, Path] = field(default_factory=dict)
    bridges: list[Bridge] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    python_prefix: Path | None = None  # the interpreter the environment was made with
    cwd: str = WORKSPACE


class RunResult(BaseModel):
    argv: list[str]
    exit_code: int
    seconds: float
    output_tail: str
    timed_out: bool = False
    report: bytes | None = None  # what reached the report channel, when the run had one
    killed_for: str | None = None  # a limit the run passed (its checkout's quota)


class Sandbox:
    """Builds bubblewrap command lines and runs commands in them."""

    def __init__(self, state_dir: Path, *, enabled: bool = True, limits: SandboxLimits | None = None) -> None:
        self.enabled = enabled
        self.state_dir = Path(state_dir)
        self.bwrap = shutil.which("bwrap")
        self.socat = shutil.which("socat")
        self.limits = limits or SandboxLimits()
        self.processes = process_limit()
        self._etc = self._write_identity_files()

    # -- checks --------------------------------------------------------------------------

    async def check(self) -> None:
        """Refuse to go on where the sandbox cannot start; the message says what to install or grant."""
        if not self.enabled:
            return
        if self.bwrap is None:
            raise SandboxUnavailable(f"bubblewrap (bwrap) is not installed: {INSTALL_HINT}")
        if self.socat is None:
            raise SandboxUnavailable(f"socat is not installed (the sandbox's bridge to its proxies): {INSTALL_HINT}")
        if shutil.which("prlimit") is None:
            raise SandboxUnavailable("prlimit is not installed (util-linux: the sandbox's limits)")
        described = self.processes.describe(self.limits.max_processes)
        (log.warning if described.startswith("NO ") else log.info)("sandbox process limit: %s", described)
        probe = await self.run(SandboxSpec(workspace=self.state_dir, workspace_writable=False), ["true"], timeout_s=30)
        if probe.exit_code != 0:
            raise SandboxUnavailable(f"bubblewrap cannot create its namespaces here ({probe.output_tail.strip()[-300:]}): "
                                     f"{INSTALL_HINT}")

    # -- command lines -------------------------------------------------------------------

    def argv(self, spec: SandboxSpec, command: Sequence[str], *, run_id: str) -> list[str]:
        """bubblewrap's argv for `command`; start it with an EMPTY environment. `run_id` names
        its process cgroup (made here): `release(run_id)` when the run has ended."""
        if not self.enabled:
            return list(command)
        assert self.bwrap is not None
        args = [*self.processes.enter(run_id, self.limits.max_processes),
                self.bwrap, "--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
                "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--hostname", "sandbox",
                "--proc", "/proc", "--dev", "/dev", *_tmpfs("/tmp", self.limits.tmp_bytes), *_tmpfs("/run"),
                *_tmpfs("/opt"), "--ro-bind", "/usr", "/usr", "--dir", "/etc", "--dir", "/home"]
        args += self._root_links() + self._etc_binds() + self._python_binds(spec.python_prefix)
        args += ["--bind" if spec.workspace_writable else "--ro-bind", str(spec.workspace), WORKSPACE]
        if spec.env_dir is not None:
            args += ["--bind" if spec.env_writable else "--ro-bind", str(spec.env_dir), ENV_DIR]
        args += ["--bind", str(spec.home), HOME] if spec.home is not None else _tmpfs(HOME, self.limits.tmp_bytes)
        for inside, host in spec.read_only.items():
            args += ["--ro-bind", str(host), inside]
        for inside, host in spec.writable.items():
            args += ["--bind", str(host), inside]
        for bridge in spec.bridges:
            args += ["--ro-bind", str(bridge.socket), self._socket_inside(bridge)]
        args += ["--remount-ro", "/", "--clearenv", *self._setenv(spec), "--chdir", spec.cwd, "--"]
        return args + self.processes.inside(self.limits) + self._with_bridges(spec.bridges, command)

    async def release(self, run_id: str) -> None:
        """After a run: kill what is left of it and remove its process cgroup."""
        if self.enabled:
            await self.processes.release(run_id)

    def environment(self, spec: SandboxSpec) -> dict[str, str]:
        """What the command sees: for bubblewrap these go on its command line (`--setenv`);
        without it (sandbox off) they are the child's whole environment."""
        certificates = {name: os.environ[name] for name in CA_ENV
                        if os.environ.get(name, "").startswith(("/etc/ssl/", "/etc/ca-certificates", "/usr/"))}
        return {"PATH": SAFE_PATH, "HOME": HOME if self.enabled else str(spec.home or spec.workspace),
                "USER": "agent", "LOGNAME": "agent", "LANG": "C.UTF-8", "TMPDIR": "/tmp", "SHELL": "/bin/bash",
                "PYTHONDONTWRITEBYTECODE": "1", "CI": "true", **certificates} | spec.env

    def _setenv(self, spec: SandboxSpec) -> list[str]:
        args = []
        for name, value in self.environment(spec).items():
            args += ["--setenv", name, value]
        return args

    def _root_links(self) -> list[str]:
        """/bin, /lib, ... as on the host: links into /usr on a merged-/usr system, else binds."""
        args = []
        for name in ROOT_LINKS:
            path = Path("/") / name
            if path.is_symlink():
                args += ["--symlink", os.readlink(path), f"/{name}"]
            elif path.is_dir():
                args += ["--ro-bind", str(path), f"/{name}"]
        return args

    def _etc_binds(self) -> list[str]:
        args = []
        for name in ETC_ENTRIES:
            if os.path.lexists(f"/etc/{name}"):
                args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        for name, path in self._etc.items():
            args += ["--ro-bind", str(path), f"/etc/{name}"]
        return args

    @staticmethod
    def _python_binds(prefix: Path | None) -> list[str]:
        """An interpreter outside /usr (pyenv, /opt): its prefix read-only, with its site-packages
        and scripts hidden: they are the platform's, not the repository's."""
        if prefix is None or str(prefix) == "/usr" or str(prefix).startswith("/usr/"):
            return []
        args = ["--ro-bind", str(prefix), str(prefix)]
        for purelib in sorted((prefix / "lib").glob("python3*/site-packages")):
            args += _tmpfs(str(purelib))
        bin_dir = prefix / "bin"
        args += _tmpfs(str(bin_dir))
        for entry in sorted(bin_dir.glob("python*")):
            if re.fullmatch(r"python[0-9.]*", entry.name) and entry.exists():
                args += ["--ro-bind", str(entry.resolve()), str(entry)]
        return args

    @staticmethod
    def _socket_inside(bridge: Bridge) -> str:
        return f"{SOCKETS}/{bridge.port}.sock"

    def _with_bridges(self, bridges: list[Bridge], command: Sequence[str]) -> list[str]:
        """Start one socat per proxy, wait until each listens, then exec the command. Each socat
        dies with the command it was started for (its parent-death signal): left behind, it would
        keep the sandbox's init waiting if the platform side was killed without its cleanup."""
        if not bridges:
            return list(command)
        lines = []
        for bridge in bridges:
            lines.append(f"setpriv --pdeathsig KILL socat TCP-LISTEN:{bridge.port},bind=127.0.0.1,fork,reuseaddr "
                         f"UNIX-CONNECT:{self._socket_inside(bridge)} 2>/dev/null &")
        for bridge in bridges:
            lines.append(f"for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/{bridge.port}) 2>/dev/null "
                         f"&& break; sleep 0.01; done")
        lines.append('exec "$@"')
        return ["/bin/bash", "-c", "\n".join(lines), "fixfleet-sandbox", *command]

    def _write_identity_files(self) -> dict[str, Path]:
        """An /etc/passwd and /etc/group naming only the sandbox's user (tools look it up)."""
        directory = self.state_dir / "etc"
        directory.mkdir(parents=True, exist_ok=True)
        files = {"passwd": f"root:x:0:0:root:/root:/bin/bash\nagent:x:{SANDBOX_UID}:{SANDBOX_UID}:agent:{HOME}:/bin/bash\n"
                           "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
                 "group": f"root:x:0:\nagent:x:{SANDBOX_UID}:\nnogroup:x:65534:\n"}
        paths = {}
        for name, content in files.items():
            path = directory / name
            if not path.exists() or path.read_text() != content:
                path.write_text(content)
            paths[name] = path
        return paths

    # -- running -------------------------------------------------------------------------

    async def run(self, spec: SandboxSpec, command: Sequence[str], *, timeout_s: float,
                  stdin: bytes | None = None, report: bool = False) -> RunResult:
        """Run to completion (or the timeout, or a limit passed, which kill the whole sandbox);
        output merged. `report`: give the run the report channel (REPORT_PATH, named by
        FIXFLEET_REPORT) and return what was written to it."""
        channel = _ReportChannel(self.state_dir) if report else None
        if channel is not None:
            inside = REPORT_PATH if self.enabled else str(channel.path)
            spec = dataclasses.replace(spec, env={**spec.env, "FIXFLEET_REPORT": inside},
                                       read_only={**spec.read_only, REPORT_PATH: channel.path})
            if not self.enabled:  # no mounts: the runners' argv name the channel by its inside path
                command = [part.replace(REPORT_PATH, inside) for part in command]
        run_id = new_run_id()
        argv = self.argv(spec, command, run_id=run_id)
        started = time.monotonic()
        env = {} if self.enabled else self.environment(spec)
        cwd = None if self.enabled else (spec.workspace if spec.cwd == WORKSPACE else Path(spec.cwd))
        if self.enabled:  # bubblewrap's own environment is /proc/1/environ inside: nothing, not even the shim's
            argv = ["/usr/bin/env", "-i", *argv]
        try:
            process = await asyncio.create_subprocess_exec(
                *without_inherited_fds(argv), env=env, cwd=cwd,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True, close_fds=True)
        except BaseException:
            if channel:
                channel.close()
            await asyncio.shield(self.release(run_id))
            raise
        if channel:
            channel.start()
        tail: deque[bytes] = deque()
        timed_out = False
        watched = {"the checkout": spec.workspace} if self.enabled and spec.workspace_writable else {}
        try:
            async with growth_watch(watched, self.limits.checkout_bytes, lambda: _killpg(process)) as over_quota:
                await asyncio.wait_for(self._drain(process, tail, stdin), timeout_s)
        except TimeoutError:
            timed_out = True
        finally:
            await asyncio.shield(kill_sandbox(process))
            await asyncio.shield(self.release(run_id))
        received = await channel.finish() if channel else None
        text = b"".join(tail).decode("utf-8", "replace")[-OUTPUT_TAIL:]
        if timed_out:
            text += f"\n[fixfleet] timed out after {timeout_s:.0f}s; the sandbox was killed"
        if over_quota:
            text += f"\n[fixfleet] {over_quota[0]}"
        return RunResult(argv=list(command), exit_code=124 if timed_out else (process.returncode or 0),
                         seconds=round(time.monotonic() - started, 2), output_tail=text, timed_out=timed_out,
                         report=received, killed_for=over_quota[0] if over_quota else None)

    @staticmethod
    async def _drain(process: asyncio.subprocess.Process, tail: deque[bytes], stdin: bytes | None) -> None:
        if stdin is not None and process.stdin is not None:
            process.stdin.write(stdin)
            with contextlib.suppress(ConnectionError):
                await process.stdin.drain()
            process.stdin.close()
        assert process.stdout is not None
        size = 0
        while chunk := await process.stdout.read(65536):
            tail.append(chunk)
            size += len(chunk)
            while size - len(tail[0]) > OUTPUT_TAIL and len(tail) > 1:
                size -= len(tail.popleft())
        await process.wait()


class _ReportChannel:
    """One run's report channel: a FIFO in a private directory of the platform's, read as the run
    goes (a full FIFO would stall the reporter). The platform holds a write end of its own, so the
    stream cannot end while a process of the run may still open it; it ends after the run."""

    def __init__(self, parent: Path) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="report-", dir=parent))
        self.path = self.directory / "report"
        os.mkfifo(self.path, 0o600)
        self.read_fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        self.hold_fd = os.open(self.path, os.O_WRONLY)
        os.set_blocking(self.read_fd, True)
        self.chunks: list[bytes] = []
        self.size = 0
        self._reading: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reading = asyncio.create_task(asyncio.to_thread(self._read))

    def _read(self) -> None:
        while chunk := os.read(self.read_fd, 65536):
            if self.size < REPORT_LIMIT:
                self.chunks.append(chunk[:REPORT_LIMIT - self.size])
            self.size += len(chunk)

    async def finish(self) -> bytes:
        """What arrived; the sandbox is dead by now, so with the platform's own write end closed
        every writer is gone and the stream ends."""
        self._close(self.hold_fd)
        self.hold_fd = -1
        try:
            if self._reading is not None:
                await asyncio.wait_for(asyncio.shield(self._reading), 10)
        except TimeoutError:  # a writer outlived the sandbox's kill (FIXFLEET_SANDBOX=off): take what came
            log.warning("the report channel stayed open after its run ended")
        finally:
            self.close()
        data = b"".join(self.chunks)
        return data + (b"\n[fixfleet] report truncated" if self.size > REPORT_LIMIT else b"")

    def close(self) -> None:
        for fd in (self.hold_fd, self.read_fd):
            self._close(fd)
        self.hold_fd = self.read_fd = -1
        shutil.rmtree(self.directory, ignore_errors=True)

    @staticmethod
    def _close(fd: int) -> None:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


async def kill_sandbox(process: asyncio.subprocess.Process) -> None:
    """SIGKILL the sandbox's process group: bubblewrap's init dies with it (PR_SET_PDEATHSIG),
    and with the init the kernel kills every process left in the PID namespace."""
    _killpg(process)
    await process.wait()


def _killpg(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _tmpfs(path: str, size: int = AUX_TMPFS_BYTES) -> list[str]:
    """A tmpfs of `size` bytes at most (bubblewrap's --size applies to the next --tmpfs)."""
    return ["--size", str(size), "--tmpfs", path]
