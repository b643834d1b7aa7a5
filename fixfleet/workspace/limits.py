"""What one sandbox may use: processes, temporary space, file sizes, checkout growth.

- Processes: a cgroup of its own with `pids.max`, when this machine lets the platform make one
  (cgroup v1's pids hierarchy, or a delegated cgroup v2 subtree): the sandbox's outermost
  process joins it before it execs bubblewrap, so everything inside is counted, and the cgroup
  goes when the run ends. Else RLIMIT_NPROC, set inside the sandbox (after bubblewrap made its
  user namespace: set outside, the kernel would also hold the platform user's own processes
  against it, and a sandbox would not start once the platform runs that many). RLIMIT_NPROC
  does not bind a platform running as root (the kernel exempts it; measured: 400 processes
  under a limit of 64): that combination says so loudly at start.
- Temporary space: every tmpfs of the sandbox has a size (/tmp and a private home: the
  setting; the mount-point tmpfs /run, /opt and the interpreter's masks: a few MiB).
- Files: RLIMIT_FSIZE inside the sandbox, so no single file outgrows the checkout's quota.
- The writable checkout (and a session's home on disk): watched while the sandbox runs
  (`watch_growth`); past the quota the sandbox is killed and the run says why.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from fixfleet.workspace.trees import disk_usage

if TYPE_CHECKING:
    from fixfleet.config import Settings

log = logging.getLogger(__name__)

GROUP = "fixfleet"  # <pids hierarchy>/<the platform's own cgroup>/fixfleet/<pid>/<run>
AUX_TMPFS_BYTES = 16 * 1024**2  # /run, /opt and the masks: mount points and sockets only
MAX_NEW_ENTRIES = 1_000_000  # files a writable checkout may gain: inodes are a quota too
MIN_WATCH_INTERVAL_S = 2.0
# `sh -c JOIN name procs command...`: the outermost process of the sandbox enters its cgroup,
# then becomes bubblewrap; if it cannot enter, nothing starts. (sh would export its PWD, the
# platform's directory, into bubblewrap's environment, visible inside as /proc/1/environ.)
JOIN = 'echo $$ > "$1" || exit 125; shift; unset PWD OLDPWD; exec "$@"'


class SandboxLimits(BaseModel):
    """The limits of one sandbox (FIXFLEET_SANDBOX_MAX_PROCESSES, _TMP_BYTES, _CHECKOUT_BYTES)."""

    max_processes: int = Field(512, ge=16)
    tmp_bytes: int = Field(1024**3, ge=1024**2)
    checkout_bytes: int = Field(4 * 1024**3, ge=1024**2)

    @classmethod
    def from_settings(cls, settings: Settings) -> SandboxLimits:
        return cls(max_processes=settings.sandbox_max_processes, tmp_bytes=settings.sandbox_tmp_bytes,
                   checkout_bytes=settings.sandbox_checkout_bytes)


# -- processes ---------------------------------------------------------------------------------


class ProcessLimit:
    """How this machine caps a sandbox's processes: `mode` is "cgroup" or "rlimit"."""

    def __init__(self, base: Path | None) -> None:
        self.base = base  # this process's cgroup directory for its sandboxes; None: RLIMIT_NPROC
        self.mode: Literal["cgroup", "rlimit"] = "cgroup" if base is not None else "rlimit"

    def describe(self, max_processes: int) -> str:
        if self.base is not None:
            return f"{max_processes} processes per sandbox (cgroup pids.max under {self.base})"
        if os.geteuid() == 0:
            return (f"NO process limit: the pids cgroup is not writable here and RLIMIT_NPROC ({max_processes}) "
                    "does not bind a platform running as root; run the platform as a non-root user or give it "
                    "a writable pids cgroup")
        return f"{max_processes} processes per sandbox (RLIMIT_NPROC inside the sandbox)"

    def enter(self, run_id: str, max_processes: int) -> list[str]:
        """The command prefix that puts the sandbox's outermost process into a new cgroup
        `run_id` holding at most `max_processes`; [] in rlimit mode."""
        if self.base is None:
            return []
        group = self.base / run_id
        group.mkdir()
        (group / "pids.max").write_text(str(max_processes))
        return ["/bin/sh", "-c", JOIN, "fixfleet-limits", str(group / "cgroup.procs")]

    def inside(self, limits: SandboxLimits) -> list[str]:
        """The prefix of the command inside the sandbox: its file size limit and, in rlimit
        mode, its process limit. prlimit by its absolute path under /usr: a repository's
        environment comes first on PATH and could hold a `prlimit` that sets nothing."""
        nproc = [f"--nproc={limits.max_processes}"] if self.base is None else []
        return [prlimit_path(), f"--fsize={limits.checkout_bytes}", *nproc, "--"]

    async def release(self, run_id: str, timeout_s: float = 5.0) -> None:
        """Kill what is left in the run's cgroup and remove it."""
        if self.base is None:
            return
        group = self.base / run_id
        deadline = time.monotonic() + timeout_s
        while True:
            _kill_members(group)
            try:
                group.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as error:  # busy: killed processes still exiting
                if time.monotonic() > deadline:
                    log.warning("sandbox cgroup %s not removed: %s", group, error.strerror)
                    return
            await asyncio.sleep(0.02)


def _kill_members(group: Path) -> None:
    try:
        members = (group / "cgroup.procs").read_text().split()
    except OSError:
        return
    for pid in members:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@functools.lru_cache(maxsize=1)
def process_limit() -> ProcessLimit:
    """This process's way of limiting sandboxes, found once: a cgroup if one can be made and
    joined here, else RLIMIT_NPROC."""
    for hierarchy, own in _pids_hierarchies():
        base = hierarchy / own.lstrip("/") / GROUP / str(os.getpid())
        try:
            _sweep_dead_parents(base.parent)
            _make_parents(hierarchy, base)
            if _probe(base):
                atexit.register(_remove_quietly, base)  # empty by then: every run released its own
                return ProcessLimit(base)
        except OSError as error:
            log.debug("pids cgroup at %s not usable: %s", base, error)
    return ProcessLimit(None)


def _pids_hierarchies() -> list[tuple[Path, str]]:
    """(mount point, this process's cgroup in it) of each cgroup hierarchy with the pids
    controller: v1's pids mount, or v2's unified one if it offers pids."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
        memberships = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    own_v1 = {c: line.split(":", 2)[2] for line in memberships for c in line.split(":", 2)[1].split(",") if c}
    own_v2 = next((line.split(":", 2)[2] for line in memberships if line.startswith("0::")), None)
    found = []
    for line in mountinfo:
        fields, _, rest = line.partition(" - ")
        fstype, _, options = (rest.split(" ") + ["", "", ""])[:3]
        mount = Path(fields.split(" ")[4])
        if fstype == "cgroup" and "pids" in options.split(",") and "pids" in own_v1:
            found.append((mount, own_v1["pids"]))
        elif fstype == "cgroup2" and own_v2 is not None and _offers_pids(mount / own_v2.lstrip("/")):
            found.append((mount, own_v2))
    return found


def _offers_pids(directory: Path) -> bool:
    try:
        return "pids" in (directory / "cgroup.controllers").read_text().split()
    except OSError:
        return False


def _make_parents(hierarchy: Path, base: Path) -> None:
    """Create `base` (own/fixfleet/pid); in cgroup v2 each level hands the pids controller down."""
    base.mkdir(parents=True, exist_ok=True)
    if (hierarchy / "cgroup.controllers").exists():
        for directory in [base.parent.parent, base.parent, base]:
            control = directory / "cgroup.subtree_control"
            if "pids" not in control.read_text().split():
                control.write_text("+pids")


def _probe(base: Path) -> bool:
    """Can a child process join a cgroup made here, under a pids.max? (Once per process.)"""
    group = base / f"probe-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
        (group / "pids.max").write_text("8")
        joined = subprocess.run(["/bin/sh", "-c", JOIN, "probe", str(group / "cgroup.procs"), "true"],
                                capture_output=True, timeout=10, check=False)
        return joined.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        with contextlib.suppress(OSError):
            group.rmdir()


def _sweep_dead_parents(parent: Path) -> None:
    """Remove what processes that are gone (an actor killed -9) left: their empty cgroups."""
    if not parent.is_dir():
        return
    for directory in parent.iterdir():
        if not directory.name.isdigit() or _alive(int(directory.name)):
            continue
        for group in directory.iterdir():
            if group.is_dir():
                _kill_members(group)
                with contextlib.suppress(OSError):
                    group.rmdir()
        _remove_quietly(directory)


def _remove_quietly(directory: Path) -> None:
    with contextlib.suppress(OSError):
        directory.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@functools.lru_cache(maxsize=1)
def prlimit_path() -> str:
    return os.path.realpath(shutil.which("prlimit") or "/usr/bin/prlimit")


def new_run_id() -> str:
    return f"run-{uuid.uuid4().hex[:16]}"


# -- checkout growth ---------------------------------------------------------------------------


async def watch_growth(paths: Mapping[str, Path], limit_bytes: int, on_exceeded: Callable[[str], None]) -> None:
    """Until cancelled: measure how much each of `paths` ("the checkout": path) grew on disk
    since the first look; past `limit_bytes` (or MAX_NEW_ENTRIES more entries), call
    `on_exceeded(reason)` once and stop. A look stops counting at the limit, and the pause
    between looks grows with their cost."""
    baseline = {name: await asyncio.to_thread(disk_usage, path) for name, path in paths.items()}
    while True:
        started = time.monotonic()
        for name, path in paths.items():
            before = baseline[name]
            now = await asyncio.to_thread(disk_usage, path, stop_bytes=before.bytes + limit_bytes,
                                          stop_entries=before.entries + MAX_NEW_ENTRIES)
            if now.bytes - before.bytes > limit_bytes:
                on_exceeded(f"{name} grew by more than {limit_bytes} bytes on disk (FIXFLEET_SANDBOX_CHECKOUT_BYTES); "
                            "the sandbox was killed")
                return
            if now.entries - before.entries > MAX_NEW_ENTRIES:
                on_exceeded(f"{name} gained more than {MAX_NEW_ENTRIES} files; the sandbox was killed")
                return
        await asyncio.sleep(max(MIN_WATCH_INTERVAL_S, 20 * (time.monotonic() - started)))


@contextlib.asynccontextmanager
async def growth_watch(paths: Mapping[str, Path], limit_bytes: int,
                       kill: Callable[[], object]) -> AsyncIterator[list[str]]:
    """For the length of the block, `watch_growth`; past the quota, `kill()` the sandbox. The
    list it yields holds the reason once that happened."""
    reasons: list[str] = []

    def exceeded(reason: str) -> None:
        reasons.append(reason)
        log.warning("sandbox quota: %s", reason)
        kill()

    watcher = asyncio.create_task(watch_growth(paths, limit_bytes, exceeded)) if paths else None
    try:
        yield reasons
    finally:
        if watcher is not None:
            watcher.cancel()
            (failure,) = await asyncio.gather(watcher, return_exceptions=True)
            if isinstance(failure, Exception):  # the quota went unwatched: say so (a kill that raised, once)
                log.error("the disk quota watcher failed", exc_info=failure)
