"""The node's cache: the repositories' environments (one per dependency hash) and their git
mirrors (one per repository), shared by every agent process on the node and by verification,
made once, evicted least recently used first under one budget (FIXFLEET_CACHE_MAX_GB) and
never while anyone uses them.

    <root>/envs/<repo>/<digest>/env/        what the sandbox mounts read-only at /env
    <root>/envs/<repo>/<digest>/meta.json   how it was made (written by the platform, outside /env)
    <root>/envs/<repo>/<digest>/generated/  files the setup made that checkouts receive
    <root>/envs/<repo>/<digest>/leases/     one file per holder, locked by its process while it uses it
    <root>/envs/<repo>/<digest>/last_used   its mtime: when a holder last took it
    <root>/envs/<repo>/<digest>.lock        held while it is built, leased or evicted
    <root>/packages/<repo>/                 the repository's download caches (uv, npm, pnpm, yarn,
                                            Poetry), written only by builds of base commits
    <root>/mirrors/<key>/git/               a repository's bare mirror (fixfleet/workspace/mirrors.py)
    <root>/mirrors/<key>/meta.json          written once the clone is complete: the mirror is ready
    <root>/mirrors/<key>/leases/, last_used as for an environment
    <root>/mirrors/<key>.lock               held while it is cloned, fetched, written, leased or evicted
    <root>/tmp/                             builds in progress, private caches, the trash

A lease is a file its holder keeps locked (flock): the kernel drops the lock when the process
dies, however it dies, so a dead holder never pins an environment and a reused pid never looks
alive. Every step that decides whether an environment exists (a build, taking a lease, an
eviction) holds the environment's lock file, so an eviction never races a new holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fixfleet.workspace import trees
from fixfleet.workspace.locks import file_lock, held_if_free, try_flock
from fixfleet.workspace.trees import remove_tree

log = logging.getLogger(__name__)
LOCK_POLL_S = 0.2


@dataclass(frozen=True)
class Entry:
    """Where one environment or mirror lives (whether or not it exists)."""

    repo: str
    digest: str
    directory: Path
    kind: str = "env"  # or "mirror" (digest: the repository's key)

    @property
    def env(self) -> Path:
        return self.directory / "env"

    @property
    def meta_file(self) -> Path:
        return self.directory / "meta.json"

    @property
    def generated(self) -> Path:
        return self.directory / "generated"

    @property
    def leases(self) -> Path:
        return self.directory / "leases"

    @property
    def lock_file(self) -> Path:
        return self.directory.with_name(f"{self.digest}.lock")

    @property
    def ready(self) -> bool:
        return self.meta_file.is_file()

    def meta(self) -> dict[str, Any]:
        return json.loads(self.meta_file.read_text())

    def last_used(self) -> float:
        for path in (self.directory / "last_used", self.meta_file):
            with contextlib.suppress(OSError):
                return os.stat(path).st_mtime
        return 0.0

    def touch(self) -> None:
        (self.directory / "last_used").touch()


class Lease:
    """One holder's use of an environment, until `release()` (or until the object is dropped,
    or the process dies)."""

    def __init__(self, path: Path, descriptor: int) -> None:
        self.path, self._descriptor = path, descriptor

    @property
    def held(self) -> bool:
        return self._descriptor is not None

    def release(self) -> None:
        if self._descriptor is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._descriptor)  # closing drops the lock
        self._descriptor = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit the process's end releases it anyway
            self.release()


class EnvCache:
    def __init__(self, root: Path, max_bytes: int | None = None) -> None:
        self.root = Path(root).absolute()
        self.max_bytes = max_bytes  # None: no budget
        self.envs_dir, self.packages_dir, self.tmp_dir = self.root / "envs", self.root / "packages", self.root / "tmp"
        self.mirrors_dir = self.root / "mirrors"
        for directory in (self.envs_dir, self.packages_dir, self.tmp_dir, self.mirrors_dir):
            directory.mkdir(parents=True, exist_ok=True)

    def entry(self, repo: str, digest: str) -> Entry:
        return Entry(repo, digest, self.envs_dir / repo / digest)

    def mirror_entry(self, key: str) -> Entry:
        return Entry(key, key, self.mirrors_dir / key, kind="mirror")

    def package_cache(self, repo: str) -> Path:
        path = self.packages_dir / repo
        path.mkdir(parents=True, exist_ok=True)
        return path

    def entries(self) -> list[Entry]:
        """Every ready environment and mirror on the node."""
        found = []
        for repo in _subdirectories(self.envs_dir):
            for directory in _subdirectories(repo):
                entry = self.entry(repo.name, directory.name)
                if entry.ready:
                    found.append(entry)
        return found + [m for m in self._mirror_entries() if m.ready]

    def _mirror_entries(self) -> list[Entry]:
        return [self.mirror_entry(directory.name) for directory in _subdirectories(self.mirrors_dir)]

    # -- locks and leases ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def locked(self, entry: Entry) -> AsyncIterator[None]:
        """The environment's lock, waited for without blocking the event loop."""
        entry.lock_file.parent.mkdir(parents=True, exist_ok=True)
        async with file_lock(entry.lock_file, poll_s=LOCK_POLL_S):
            yield

    @staticmethod
    def lease(entry: Entry, holder: str) -> Lease:
        """Take a lease; the caller holds the entry's lock."""
        entry.leases.mkdir(parents=True, exist_ok=True)
        path = entry.leases / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.json"
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(descriptor, fcntl.LOCK_EX)  # a new file: nobody else has it
        os.write(descriptor, json.dumps({"pid": os.getpid(), "holder": holder, "since": time.time()}).encode())
        entry.touch()
        return Lease(path, descriptor)

    @staticmethod
    def holders(entry: Entry) -> list[dict[str, Any]]:
        """The live leases of an environment (who uses it); a dead holder's lease is removed."""
        live = []
        for path in _files_in(entry.leases):
            try:
                descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:  # released meanwhile, or not a plain file
                continue
            try:
                if try_flock(descriptor):  # nobody holds it: its process is gone
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                    continue
                with contextlib.suppress(ValueError, OSError):
                    live.append(json.loads(os.read(descriptor, 4096) or b"{}"))
            finally:
                os.close(descriptor)
        return live

    @contextlib.contextmanager
    def scratch(self, prefix: str) -> Iterator[Path]:
        """A directory under tmp/ for one build, removed when done; a dead process's is removed
        by a later eviction (its lock file is free then: the lock is taken before the directory
        exists, so a sweep never takes one being made)."""
        path = self.tmp_dir / f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        lock = path.with_name(path.name + ".lock")
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        try:
            path.mkdir()
            yield path
        finally:
            try:
                if path.exists():
                    remove_tree(path)
            finally:
                lock.unlink(missing_ok=True)
                os.close(descriptor)

    # -- the budget ----------------------------------------------------------------------

    def evict(self) -> list[Entry]:
        """Remove idle environments and mirrors, least recently used first, until the cache fits
        its budget; then the download caches of repositories with no environment left. Blocking
        (walks and deletes): run it in a thread. Another process evicting: nothing to do."""
        if self.max_bytes is None:
            return []
        with held_if_free(self.root / "evict.lock") as mine:
            if not mine:
                return []
            self._sweep_scratch()
            self._sweep_unready_mirrors()
            return self._evict_over_budget()

    def _evict_over_budget(self) -> list[Entry]:
        entries = sorted(self.entries(), key=Entry.last_used)
        sizes = {e.digest: _size(e) for e in entries}
        packages = {p.name: disk_usage(p) for p in _subdirectories(self.packages_dir)}
        total = sum(sizes.values()) + sum(packages.values())
        evicted: list[Entry] = []
        for entry in entries:
            if total <= self.max_bytes:
                break
            if self._remove_if_idle(entry):
                evicted.append(entry)
                total -= sizes[entry.digest]
        left = {e.repo for e in entries if e not in evicted and e.kind == "env"}
        for repo, size in sorted(packages.items(), key=lambda item: -item[1]):
            if total > self.max_bytes and repo not in left:
                remove_tree(self.packages_dir / repo)
                total -= size
        if total > self.max_bytes:
            log.warning("node cache over budget: %d > %d bytes, every environment and mirror left is in use",
                        total, self.max_bytes)
        return evicted

    def _remove_if_idle(self, entry: Entry) -> bool:
        with held_if_free(entry.lock_file) as mine:  # being built or leased right now: not idle
            if not mine or not entry.ready or self.holders(entry):
                return False
            trash = self.tmp_dir / f"trash-{uuid.uuid4().hex[:8]}"
            os.rename(entry.directory, trash)
        log.info("evicted the %s %s of %s (least recently used, cache over budget)", entry.kind, entry.digest, entry.repo)
        remove_tree(trash)
        return True

    def _sweep_unready_mirrors(self) -> None:
        """Remove mirror directories whose clone never completed (a failed URL, a crash) and
        that nobody holds."""
        for entry in self._mirror_entries():
            if entry.ready:
                continue
            with held_if_free(entry.lock_file) as mine:
                if mine and not entry.ready and not self.holders(entry):
                    remove_tree(entry.directory)

    def _sweep_scratch(self) -> None:
        """Remove what builds of dead processes left in tmp/ (their lock files are free)."""
        for path in _subdirectories(self.tmp_dir):
            if path.name.startswith("trash-"):  # an eviction cut short
                remove_tree(path)
                continue
            lock = path.with_name(path.name + ".lock")
            if not lock.exists():
                continue
            with held_if_free(lock) as mine:
                if mine:
                    remove_tree(path)
                    lock.unlink(missing_ok=True)


def disk_usage(path: Path) -> int:
    """Bytes allocated on disk under `path`."""
    return trees.disk_usage(path).bytes


def _size(entry: Entry) -> int:
    try:
        return int(entry.meta().get("bytes") or 0) or disk_usage(entry.directory)
    except (OSError, ValueError):
        return 0


def _subdirectories(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir() and not p.is_symlink()]
    except FileNotFoundError:
        return []


def _files_in(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except FileNotFoundError:
        return []

