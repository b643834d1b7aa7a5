"""Warm workspaces: a mirror cache per repository, a fresh git worktree per task.

An agent actor keeps, under its data directory:

    root/mirrors/<repo>/     bare mirror: cloned once, `git fetch --prune` afterwards
    root/spares/<repo>/<id>  spare worktrees checked out ahead of time at the default branch
    root/worktrees/<task>    one worktree per task, on a branch of its own

Why spares: checking out 20,000 files costs about as much as the checkout inside a fresh
clone (the kernel creating files dominates; `checkout.workers`, index v4 or untracked cache
barely move it), so no cold `git worktree add` can be 20x faster than a clone. A spare is
built in the background after the mirror is warm; a task takes it with a rename
(`git worktree move`) and a branch switch that rewrites only the files that differ from
its base. Without a spare the task falls back to a cold `git worktree add`.

Everything runs git as an asyncio subprocess: the manager lives inside Ray actors' event
loops, so nothing here may block the loop (directory walks and deletes go to a thread).

Credentials: a GitHub token is handed to each network command through the environment
(`GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_n`/`GIT_CONFIG_VALUE_n`, an `http.<url>.extraHeader`
scoped to the token's hosts): it never appears on a command line (`ps`), in any config
file, in a remote URL, in logs or in error messages.

Safety: URLs, branch names and bases come from requests. They are validated (no leading
`-`, no control characters, `git check-ref-format --branch`, only known transports) and
always placed after `--` or `--end-of-options`, so git can never read them as options.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, SecretStr

log = logging.getLogger("fixfleet.workspace")

# Upstream branches land in refs/remotes/origin/*, so a task's local branch can never be
# pruned or overwritten by a fetch; HEAD is fetched too so the default branch is known
# without an extra `ls-remote` round trip.
FETCH_REFSPECS = (
    "+refs/heads/*:refs/remotes/origin/*",
    "+refs/tags/*:refs/tags/*",
    "+HEAD:refs/remotes/origin/HEAD",
)
DEFAULT_BRANCH_REF = "refs/remotes/origin/HEAD"

# Given on every command: hooks and fsmonitor are programs the shared mirror config could
# name (an agent can run `git config` in its worktree); the platform must never run them.
HARDENING = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false")

# Written into each new mirror; worktrees share it. manyFiles = index v4 + untracked
# cache: cheaper `git status` for the agent in a large tree.
MIRROR_CONFIG = (
    ("feature.manyFiles", "true"),
    ("core.logAllRefUpdates", "false"),
    ("advice.detachedHead", "false"),
)

ALLOWED_SCHEMES = {"https", "http", "ssh", "git", "file", "git+ssh", "ssh+git"}
ALLOWED_PROTOCOLS = "file:git:http:https:ssh"  # GIT_ALLOW_PROTOCOL: no ext::, fd::, ...
# Inherited variables that would point our commands at another repository or config.
SCRUBBED_ENV = (
    "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_CEILING_DIRECTORIES",
    "GIT_CONFIG", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT", "GIT_ASKPASS", "SSH_ASKPASS",
)
SCP_LIKE = re.compile(r"^(?:(?P<user>[^@/:]+)@)?(?P<host>[^/:]+):(?P<path>.+)$")
CONTROL_CHARS = re.compile(r"[\x00-\x20\x7f]")
AUTH_FAILURE = re.compile(r"Authentication failed|could not read (Username|Password)|"
                          r"terminal prompts disabled|Permission denied \(publickey")
META_FILE = "fixfleet-mirror.json"
NICE = shutil.which("nice")
STDERR_TAIL_CHARS = 2000


class WorkspaceError(RuntimeError):
    """A workspace operation failed; carries the (redacted) tail of git's stderr."""

    def __init__(self, message: str, *, stderr: str = "", returncode: int | None = None):
        self.message = message
        self.stderr = stderr[-STDERR_TAIL_CHARS:]
        self.returncode = returncode
        super().__init__(f"{message}\n{self.stderr}".rstrip() if self.stderr else message)


class Worktree(BaseModel):
    """One task's checkout: a git worktree of the repository's mirror, on its own branch."""

    model_config = ConfigDict(frozen=True)

    path: Path
    branch: str
    base_sha: str
    repo_url: str
    from_spare: bool = False  # taken from a pre-built spare rather than checked out cold


@dataclass
class WorkspaceStats:
    """Counters for metrics and tests."""

    clones: int = 0
    fetches: int = 0
    fetches_coalesced: int = 0
    spare_hits: int = 0
    spare_misses: int = 0
    evictions: int = 0


@dataclass
class Spare:
    path: Path
    sha: str
    size: int


@dataclass
class MirrorState:
    """What this process knows about one mirror; the disk stays the source of truth."""

    key: str
    path: Path
    # Held by anything that writes the mirror's refs or worktree registry. git is not safe
    # here: a fetch (connectivity check) or `branch -f` walks every registered worktree
    # and fails on the half-written admin dir of a concurrent `worktree add`.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pins: int = 0  # operations in flight that need the mirror to stay
    live: set[Path] = field(default_factory=set)  # worktrees handed out, not yet removed
    spares: list[Spare] = field(default_factory=list)
    spare_task: asyncio.Task[None] | None = None
    last_fetch_started: float | None = None  # monotonic
    generation: int = 0  # completed clones/fetches
    spares_swept: bool = False

    def busy(self) -> bool:
        building = self.spare_task is not None and not self.spare_task.done()
        return self.pins > 0 or self.lock.locked() or bool(self.live) or building


# ---------------------------------------------------------------------------------------
# Validation: nothing from a request reaches git unless it passed these.


def validate_url(url: str) -> str:
    """A repository URL git may fetch from, credential-free; plain paths made absolute."""
    if not isinstance(url, str) or not url or CONTROL_CHARS.search(url):
        raise WorkspaceError("invalid repository URL: empty or contains whitespace/control")
    if url.startswith("-"):
        raise WorkspaceError("invalid repository URL: starts with '-'")
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", url)
    if scheme:
        return _validate_scheme_url(url, scheme.group(1).lower())
    if "::" in url:  # <transport>::<address> runs a remote helper
        raise WorkspaceError("invalid repository URL: remote-helper syntax is not allowed")
    scp = SCP_LIKE.match(url)
    if scp and "/" not in url.split(":", 1)[0]:
        if scp["host"].startswith("-") or (scp["user"] or "").startswith("-"):
            raise WorkspaceError("invalid repository URL: host starts with '-'")
        return url
    return str(Path(url).expanduser().absolute())


def _validate_scheme_url(url: str, scheme: str) -> str:
    if scheme not in ALLOWED_SCHEMES:
        raise WorkspaceError(f"invalid repository URL: transport {scheme!r} is not allowed")
    parts = urlsplit(url)
    if parts.password is not None or (scheme in ("http", "https") and parts.username):
        raise WorkspaceError(
            "invalid repository URL: credentials in the URL; pass the token separately"
        )
    if scheme != "file" and (not parts.hostname or parts.hostname.startswith("-")):
        raise WorkspaceError("invalid repository URL: missing host or host starts with '-'")
    if (parts.username or "").startswith("-"):
        raise WorkspaceError("invalid repository URL: user starts with '-'")
    return url


def _validate_ref_text(value: str, what: str) -> None:
    if not isinstance(value, str) or not value or len(value) > 255:
        raise WorkspaceError(f"invalid {what}: empty or too long")
    if value.startswith("-"):
        raise WorkspaceError(f"invalid {what}: starts with '-'")
    if CONTROL_CHARS.search(value) or "@{" in value or value in ("HEAD", "@"):
        raise WorkspaceError(f"invalid {what}: {value!r}")


def repo_key(url: str) -> str:
    """A directory name for the repository: readable part plus a hash of the URL."""
    normalized = url.rstrip("/").removesuffix(".git")
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", normalized.split("://", 1)[-1]).strip("-.")
    digest = hashlib.sha256(normalized.encode()).hexdigest()[:10]
    return f"{readable[-60:].lstrip('-.') or 'repo'}-{digest}"


def safe_name(text: str, salt: str = "") -> str:
    """`fixfleet/42` -> `fixfleet-42-1a2b3c4d`; the hash keeps distinct inputs distinct."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:80] or "task"
    return f"{readable}-{hashlib.sha256(f'{salt}/{text}'.encode()).hexdigest()[:8]}"


# ---------------------------------------------------------------------------------------
# Credentials and redaction.


class Credentials:
    """Turns a GitHub token into per-command environment, and scrubs it from any text."""

    def __init__(self, token: SecretStr | None, hosts: Collection[str]):
        self._token = token.get_secret_value() if token else None
        self._hosts = {host.lower() for host in hosts}
        self._secrets: list[str] = []
        if self._token:
            basic = base64.b64encode(f"x-access-token:{self._token}".encode()).decode()
            self._header = f"Authorization: Basic {basic}"
            self._secrets = [self._token, basic, base64.b64encode(self._token.encode()).decode()]

    def applies_to(self, url: str) -> bool:
        parts = urlsplit(url)
        return bool(self._token) and parts.scheme == "https" and (
            (parts.hostname or "").lower() in self._hosts
        )

    def config_for(self, url: str) -> list[tuple[str, str]]:
        """Config given through the environment of one network command (never a file)."""
        if not self.applies_to(url):
            return []
        parts = urlsplit(url)
        scope = f"https://{parts.netloc}/"  # the header goes to this host only
        return [
            (f"http.{scope}.extraHeader", self._header),
            ("credential.helper", ""),  # no helper may be asked for, or store, a password
            ("http.sslVerify", "true"),  # never send the token over unverified TLS
        ]

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        text = re.sub(r"(?i)(authorization:\s*\w+\s+)\S+", r"\1***", text)
        return re.sub(r"(://[^/@:\s]*:)[^@/\s]+@", r"\1***@", text)


# ---------------------------------------------------------------------------------------
# Filesystem helpers (run in a thread: they walk or delete whole trees).


def disk_usage(path: Path) -> int:
    """Bytes allocated on disk under path (st_blocks, not apparent size)."""
    total = 0
    for directory, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            try:
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
            except FileNotFoundError:
                continue
    return total


def has_live_worktrees(mirror: Path, spares_dir: Path) -> bool:
    """Whether git's own registry lists a worktree (other than a spare) that still exists."""
    try:
        entries = list((mirror / "worktrees").iterdir())
    except OSError:  # none registered (or the mirror vanished meanwhile)
        return False
    for entry in entries:
        try:
            gitdir = Path((entry / "gitdir").read_text().strip())
        except OSError:
            continue
        if gitdir.exists() and not gitdir.is_relative_to(spares_dir):
            return True
    return False


def read_last_used(mirror: Path) -> float:
    try:
        return float(json.loads((mirror / META_FILE).read_text())["last_used"])
    except (OSError, ValueError, KeyError, TypeError):
        try:
            return mirror.stat().st_mtime
        except OSError:
            return 0.0


# ---------------------------------------------------------------------------------------


class WorkspaceManager:
    """Mirror cache, spares and per-task worktrees under one root directory.

    One manager per root (one per actor): locks and spare bookkeeping are in memory.
    """

    def __init__(
        self,
        root: Path,
        disk_budget_bytes: int,
        github_token: SecretStr | None = None,
        *,
        token_hosts: Collection[str] = ("github.com",),
        warm_spares: int = 1,
        fetch_max_age_s: float = 0.0,
        network_timeout_s: float = 900.0,
        local_timeout_s: float = 300.0,
    ):
        self.root = Path(root).absolute()
        self.mirrors_dir = self.root / "mirrors"
        self.spares_dir = self.root / "spares"
        self.worktrees_dir = self.root / "worktrees"
        self.trash_dir = self.root / "trash"
        self.disk_budget_bytes = disk_budget_bytes
        self.warm_spares = warm_spares
        self.fetch_max_age_s = fetch_max_age_s
        self.network_timeout_s = network_timeout_s
        self.local_timeout_s = local_timeout_s
        self.stats = WorkspaceStats()
        self._credentials = Credentials(github_token, token_hosts)
        self._states: dict[str, MirrorState] = {}
        self._evict_lock = asyncio.Lock()
        for directory in (self.mirrors_dir, self.spares_dir, self.worktrees_dir, self.trash_dir):
            directory.mkdir(parents=True, exist_ok=True)

    # -- public API ----------------------------------------------------------------------

    async def ensure_mirror(self, url: str) -> Path:
        """The repository's mirror, cloned on first use and fetched (coalesced) afterwards."""
        url = validate_url(url)
        state = self._state(url)
        state.pins += 1
        try:
            await self._refresh(state, url)
            await self.enforce_budget()  # while pinned: never evicts the mirror it returns
        finally:
            state.pins -= 1
        self._schedule_spares(state, url)
        return state.path

    async def warm(self, url: str) -> Path:
        """Mirror ready and spares built: what an actor calls ahead of its tasks."""
        path = await self.ensure_mirror(url)
        state = self._state(validate_url(url))
        if state.spare_task is not None:
            await asyncio.shield(state.spare_task)
        return path

    async def create_worktree(
        self,
        url: str,
        branch: str,
        base: str | None = None,
        existing: bool = False,
        *,
        task_id: str | None = None,
    ) -> Worktree:
        """A fresh worktree on `branch`.

        New branch (default): starts at `base` (a branch or tag of the remote, or a commit)
        or the remote's default branch. `existing=True`: the remote branch `branch` (e.g.
        the PR branch the planner pushed), checked out as a local branch of the same name;
        `base` is then ignored. `task_id` names the directory (default: the branch).
        """
        url = validate_url(url)
        await self._check_branch(branch)
        if base is not None:
            _validate_ref_text(base, "base")
        state = self._state(url)
        state.pins += 1
        try:
            if await self._refresh(state, url):
                await self.enforce_budget()  # a clone grew the cache (a fetch, barely)
            base_sha = await self._resolve_base(state, url, branch if existing else base, existing)
            target = self.worktrees_dir / safe_name(task_id or branch, salt=state.key)
            async with state.lock:
                await self._clear_stale(state, target)
                from_spare = await self._checkout(state, target, branch, base_sha)
            state.live.add(target)
        finally:
            state.pins -= 1
        self._touch(state, url)
        self._schedule_spares(state, url)
        return Worktree(path=target, branch=branch, base_sha=base_sha, repo_url=url,
                        from_spare=from_spare)

    async def remove_worktree(self, wt: Worktree) -> None:
        """Remove the worktree directory, its registration and its local branch."""
        url = validate_url(wt.repo_url)
        self._check_owned(wt.path)
        await self._check_branch(wt.branch)
        state = self._state(url)
        if not (state.path / "HEAD").exists():  # mirror gone: only the directory is left
            await asyncio.to_thread(shutil.rmtree, wt.path, True)
            state.live.discard(wt.path)
            return
        state.pins += 1
        try:
            async with state.lock:
                await self._remove_checkout(state, wt.path)
                await self._delete_branch(state, wt.branch)
        finally:
            state.live.discard(wt.path)
            state.pins -= 1
        self._touch(state, url)

    async def push(self, wt: Worktree, branch: str, *, force: bool = False) -> str:
        """Push the worktree's branch to `branch` on the origin URL; returns the pushed sha.

        `force` overwrites only if the remote branch is still where the mirror last saw it
        (`--force-with-lease`), so a human's concurrent push is never lost.
        """
        url = validate_url(wt.repo_url)
        await self._check_branch(wt.branch)
        await self._check_branch(branch)
        state = self._state(url)
        state.pins += 1
        try:
            sha = await self._rev_parse(state, f"refs/heads/{wt.branch}")
            if sha is None:
                raise WorkspaceError(f"local branch {wt.branch!r} does not exist")
            options = ["--porcelain", "--no-verify"]
            if force:
                seen = await self._rev_parse(state, f"refs/remotes/origin/{branch}") or ""
                options.append(f"--force-with-lease=refs/heads/{branch}:{seen}")
            refspec = f"refs/heads/{wt.branch}:refs/heads/{branch}"
            await self._git("push", *options, "--", url, refspec, cwd=state.path, url=url)
            # Pushing to a URL (not a named remote) leaves remote-tracking refs alone.
            await self._git("update-ref", f"refs/remotes/origin/{branch}", sha, cwd=state.path)
        finally:
            state.pins -= 1
        self._touch(state, url)
        return sha

    async def enforce_budget(self) -> list[Path]:
        """Evict least recently used mirrors until the total fits the disk budget.

        Never evicts a mirror in use: pinned by an operation, with a live worktree (in this
        process or in git's registry on disk) or building a spare.
        """
        async with self._evict_lock:
            recorded = {key: sum(spare.size for spare in state.spares)
                        for key, state in self._states.items() if state.spares_swept}
            scan = await asyncio.to_thread(self._scan_mirrors, recorded)
            total = sum(footprint for _, _, footprint, _ in scan)
            evicted: list[Path] = []
            for path, _, footprint, live_on_disk in sorted(scan, key=lambda item: item[1]):
                if total <= self.disk_budget_bytes:
                    break
                state = self._states.get(path.name)
                if live_on_disk or (state is not None and state.busy()):
                    continue
                self._evict(path)
                evicted.append(path)
                total -= footprint
            if total > self.disk_budget_bytes:
                log.warning("workspace over budget: %d > %d bytes, nothing left to evict",
                            total, self.disk_budget_bytes)
        if evicted:
            await asyncio.to_thread(self._empty_trash)
        return evicted

    async def close(self) -> None:
        """Stop background spare builds (their git processes are killed)."""
        tasks = [s.spare_task for s in self._states.values() if s.spare_task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- mirrors -------------------------------------------------------------------------

    def _state(self, url: str) -> MirrorState:
        key = repo_key(url)
        if key not in self._states:
            self._states[key] = MirrorState(key=key, path=self.mirrors_dir / key)
        return self._states[key]

    async def _refresh(self, state: MirrorState, url: str, *, force: bool = False) -> bool:
        """Clone or fetch, shared by every caller that asked while it was queued or running.

        Callers that arrive during a clone or fetch wait for it and use its result rather
        than fetching again; `force` insists on a fetch that started after the call (used
        when a branch is missing). True if it cloned.
        """
        asked_at, seen_generation = time.monotonic(), state.generation
        async with state.lock:
            if self._fresh_enough(state, asked_at, seen_generation, force):
                self.stats.fetches_coalesced += 1
                return False
            state.last_fetch_started = time.monotonic()
            cloned = not (state.path / "HEAD").exists()
            if cloned:
                await self._clone(state, url)
                self.stats.clones += 1
            else:
                await self._fetch(state.path, url)
                self.stats.fetches += 1
            state.generation += 1
        self._touch(state, url)
        return cloned

    def _fresh_enough(
        self, state: MirrorState, asked_at: float, seen_generation: int, force: bool
    ) -> bool:
        started = state.last_fetch_started
        if force:
            return started is not None and started >= asked_at
        if state.generation > seen_generation:  # one finished since we asked: join it
            return True
        return started is not None and started >= asked_at - self.fetch_max_age_s

    async def _clone(self, state: MirrorState, url: str) -> None:
        """Clone into a temporary directory, renamed into place only once complete."""
        partial = self.mirrors_dir / f".partial-{state.key}-{uuid.uuid4().hex[:8]}"
        try:
            await self._git("init", "--quiet", "--bare", "--", str(partial))
            await self._git("config", "--", "remote.origin.url", url, cwd=partial)
            for refspec in FETCH_REFSPECS:
                await self._git("config", "--add", "--", "remote.origin.fetch", refspec,
                                cwd=partial)
            for key, value in MIRROR_CONFIG:
                await self._git("config", "--", key, value, cwd=partial)
            await self._fetch(partial, url)
            if state.path.exists():  # a broken leftover without HEAD: set it aside
                os.rename(state.path, self.trash_dir / f"{state.key}-{uuid.uuid4().hex[:8]}")
            os.rename(partial, state.path)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, partial, True))
            raise
        log.info("cloned mirror %s", state.path.name)

    async def _fetch(self, mirror: Path, url: str) -> None:
        # The URL comes from the caller (validated), never from the mirror's config, which
        # worktrees share with the agent.
        await self._git("fetch", "--quiet", "--prune", "--no-tags", "--no-write-fetch-head",
                        "--", url, *FETCH_REFSPECS, cwd=mirror, url=url)

    def _touch(self, state: MirrorState, url: str) -> None:
        """Record last use (persisted, so LRU order survives a restart)."""
        if not state.path.is_dir():
            return
        meta = state.path / META_FILE
        partial = meta.with_suffix(".tmp")
        partial.write_text(json.dumps({"url": self._credentials.redact(url),
                                       "last_used": time.time()}))
        os.replace(partial, meta)

    # -- worktrees -----------------------------------------------------------------------

    def _check_owned(self, path: Path) -> None:
        """A Worktree may come back from a database or a request: only ours get deleted."""
        if Path(path).resolve().parent != self.worktrees_dir.resolve():
            raise WorkspaceError(f"not a worktree of this workspace: {path}")

    async def _check_branch(self, branch: str) -> None:
        _validate_ref_text(branch, "branch name")
        try:
            await self._git("check-ref-format", "--branch", branch)
        except WorkspaceError as error:
            raise WorkspaceError(f"invalid branch name: {branch!r}") from error

    async def _resolve_base(
        self, state: MirrorState, url: str, base: str | None, existing: bool
    ) -> str:
        if existing:
            assert base is not None
            sha = await self._rev_parse(state, f"refs/remotes/origin/{base}")
            if sha is None:  # pushed after our last fetch (e.g. by another actor)
                await self._refresh(state, url, force=True)
                sha = await self._rev_parse(state, f"refs/remotes/origin/{base}")
            if sha is None:
                raise WorkspaceError(f"branch {base!r} not found on the remote")
            return sha
        for candidate in self._base_candidates(base):
            sha = await self._rev_parse(state, candidate)
            if sha is not None:
                return sha
        raise WorkspaceError(f"base {base or 'default branch'!r} not found in the mirror")

    @staticmethod
    def _base_candidates(base: str | None) -> list[str]:
        if base is None:
            return [DEFAULT_BRANCH_REF]
        candidates = [f"refs/remotes/origin/{base}", f"refs/tags/{base}", f"refs/remotes/{base}"]
        if re.fullmatch(r"[0-9a-fA-F]{4,64}", base):
            candidates.append(base)
        return candidates

    async def _rev_parse(self, state: MirrorState, ref: str) -> str | None:
        try:
            out = await self._git("rev-parse", "--verify", "--quiet", "--end-of-options",
                                  f"{ref}^{{commit}}", cwd=state.path)
        except WorkspaceError:
            return None
        return out.strip() or None

    # The helpers below run with state.lock held.

    async def _clear_stale(self, state: MirrorState, target: Path) -> None:
        """A directory left by a crashed earlier attempt is removed; a live one is refused."""
        if target in state.live:
            raise WorkspaceError(f"worktree {target.name} is in use by another task")
        if target.exists() or target.is_symlink():
            log.warning("removing stale worktree %s", target)
            await self._remove_checkout(state, target)

    async def _checkout(self, state: MirrorState, target: Path, branch: str, sha: str) -> bool:
        """Take a spare if one is ready (rename + switch); else a cold `worktree add`."""
        spare = state.spares.pop(0) if state.spares else None  # no await: no double handout
        if spare is not None:
            try:
                await self._git("worktree", "move", "--", str(spare.path), str(target),
                                cwd=state.path)
            except WorkspaceError as error:
                log.warning("spare unusable, checking out cold: %s", error.message)
                await self._remove_checkout(state, spare.path)
                spare = None
        if spare is None:
            self.stats.spare_misses += 1
            await self._git("worktree", "add", "--quiet", "-B", branch, "--", str(target), sha,
                            cwd=state.path)
            return False
        self.stats.spare_hits += 1
        try:
            await self._switch(state, target, branch, sha, spare.sha)
        except BaseException:
            await asyncio.shield(self._remove_checkout(state, target))
            raise
        return True

    async def _switch(
        self, state: MirrorState, target: Path, branch: str, sha: str, checked_out: str
    ) -> None:
        if sha == checked_out:
            # Same commit: the files and index are already right; only refs change.
            # `branch -f` refuses a branch checked out in another worktree.
            await self._git("branch", "--force", "--no-track", "--", branch, sha, cwd=state.path)
            await self._git("symbolic-ref", "-m", "fixfleet: take spare", "HEAD",
                            f"refs/heads/{branch}", cwd=target)
        else:  # rewrites only the files that differ between the two commits
            await self._git("checkout", "--quiet", "--no-track", "-B", branch, sha, "--",
                            cwd=target)

    async def _remove_checkout(self, state: MirrorState, path: Path) -> None:
        try:
            await self._git("worktree", "remove", "--force", "--force", "--", str(path),
                            cwd=state.path)
        except WorkspaceError:
            # Not registered (or registration broken): delete the directory ourselves.
            await asyncio.to_thread(shutil.rmtree, path, True)
        await self._git("worktree", "prune", cwd=state.path)

    async def _delete_branch(self, state: MirrorState, branch: str) -> None:
        try:
            await self._git("show-ref", "--verify", "--quiet", "--", f"refs/heads/{branch}",
                            cwd=state.path)
        except WorkspaceError:
            return  # already gone
        await self._git("branch", "--delete", "--force", "--", branch, cwd=state.path)

    # -- spares --------------------------------------------------------------------------

    def _schedule_spares(self, state: MirrorState, url: str) -> None:
        if len(state.spares) >= self.warm_spares or not (state.path / "HEAD").exists():
            return
        if state.spare_task is not None and not state.spare_task.done():
            return
        state.spare_task = asyncio.create_task(self._fill_spares(state),
                                               name=f"spares:{state.key}")

    async def _fill_spares(self, state: MirrorState) -> None:
        state.pins += 1
        try:
            while len(state.spares) < self.warm_spares:
                async with state.lock:
                    if not state.spares_swept:
                        await self._sweep_spares(state)
                    state.spares.append(await self._build_spare(state))
            await self.enforce_budget()
        except WorkspaceError as error:
            log.warning("could not build a spare worktree for %s: %s", state.key, error)
        finally:
            state.pins -= 1

    async def _sweep_spares(self, state: MirrorState) -> None:
        """Spares left by an earlier process may be half built: discard them."""
        directory = self.spares_dir / state.key
        known = {spare.path for spare in state.spares}
        if directory.is_dir():
            for path in directory.iterdir():
                if path not in known:
                    await self._remove_checkout(state, path)
        state.spares_swept = True

    async def _build_spare(self, state: MirrorState) -> Spare:
        sha = await self._rev_parse(state, DEFAULT_BRANCH_REF)
        if sha is None:
            raise WorkspaceError("the remote has no default branch")
        path = self.spares_dir / state.key / uuid.uuid4().hex[:12]
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            await self._git("worktree", "add", "--quiet", "--detach", "--", str(path), sha,
                            cwd=state.path, background=True)
            size = await asyncio.to_thread(disk_usage, path)
        except BaseException:  # cancelled (close) or failed: leave nothing half-known
            await asyncio.shield(self._remove_checkout(state, path))
            raise
        return Spare(path=path, sha=sha, size=size)

    # -- eviction ------------------------------------------------------------------------

    def _scan_mirrors(self, spare_bytes: dict[str, int]) -> list[tuple[Path, float, int, bool]]:
        """(mirror, last used, bytes including its spares, has live worktrees) per mirror.

        Spare sizes measured when they were built are reused: walking 20,000 files per
        spare on every check would cost more than the check is worth.
        """
        found = []
        for mirror in self.mirrors_dir.iterdir():
            if mirror.name.startswith(".") or not mirror.is_dir():
                continue
            spares = self.spares_dir / mirror.name
            if mirror.name in spare_bytes:
                footprint = disk_usage(mirror) + spare_bytes[mirror.name]
            else:
                footprint = disk_usage(mirror) + (disk_usage(spares) if spares.is_dir() else 0)
            found.append((mirror, read_last_used(mirror), footprint,
                          has_live_worktrees(mirror, self.spares_dir)))
        return found

    def _evict(self, mirror: Path) -> None:
        """Synchronous on purpose: no other coroutine can start using it half way."""
        log.info("evicting mirror %s (least recently used, over budget)", mirror.name)
        self._states.pop(mirror.name, None)
        for path in (mirror, self.spares_dir / mirror.name):
            if path.exists():
                os.rename(path, self.trash_dir / f"{path.name}-{uuid.uuid4().hex[:8]}")
        self.stats.evictions += 1

    def _empty_trash(self) -> None:
        for path in self.trash_dir.iterdir():
            shutil.rmtree(path, ignore_errors=True)

    # -- running git ---------------------------------------------------------------------

    def _env(self, url: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in SCRUBBED_ENV and not k.startswith("GIT_CONFIG_KEY_")
               and not k.startswith("GIT_CONFIG_VALUE_")}
        # No prompt can block: no terminal prompt, and (own session, stdin closed) no tty
        # for ssh to ask a passphrase on.
        env.update(GIT_TERMINAL_PROMPT="0", GIT_ALLOW_PROTOCOL=ALLOWED_PROTOCOLS, LC_ALL="C")
        config = self._credentials.config_for(url) if url else []
        if config:
            env.pop("GIT_SSL_NO_VERIFY", None)  # would override http.sslVerify
        env["GIT_CONFIG_COUNT"] = str(len(config))
        for index, (key, value) in enumerate(config):
            env[f"GIT_CONFIG_KEY_{index}"] = key
            env[f"GIT_CONFIG_VALUE_{index}"] = value
        return env

    async def _git(
        self, *args: str, cwd: Path | None = None, url: str | None = None,
        background: bool = False,
    ) -> str:
        """Run git; stdout on success, WorkspaceError (redacted stderr tail) otherwise.

        `url` marks a network command: it gets the credentials and the longer timeout.
        `background` work (building spares) runs niced: it starts right when a task takes
        a spare, and must not slow that task's first commands.
        """
        timeout = self.network_timeout_s if url else self.local_timeout_s
        argv = ["git", *HARDENING, *args]
        if background and NICE:
            argv = [NICE, "-n", "10", *argv]
        try:
            process = await self._spawn(argv, cwd or self.root, self._env(url))
        except OSError as error:  # git missing, or cwd gone
            raise WorkspaceError(f"could not run git {args[0]}: {error}") from None
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
        except BaseException as error:
            await asyncio.shield(self._kill(process))
            if isinstance(error, TimeoutError):
                raise WorkspaceError(f"git {args[0]} timed out after {timeout:.0f}s") from None
            raise
        if process.returncode != 0:
            raise self._failure(args, process.returncode, stderr.decode(errors="replace"))
        return stdout.decode(errors="replace")

    def _failure(self, args: tuple[str, ...], returncode: int, stderr: str) -> WorkspaceError:
        what = f"git {args[0]} failed (exit {returncode})"
        if AUTH_FAILURE.search(stderr):
            what = f"git {args[0]}: authentication failed (no token, or it lacks access)"
        return WorkspaceError(
            self._credentials.redact(f"{what}: git {' '.join(args)}"),
            stderr=self._credentials.redact(stderr), returncode=returncode,
        )

    async def _spawn(
        self, argv: list[str], cwd: Path | None, env: dict[str, str]
    ) -> asyncio.subprocess.Process:
        spawn = asyncio.ensure_future(asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: a kill reaches its helpers
        ))
        try:
            return await asyncio.shield(spawn)
        except asyncio.CancelledError:
            # Cancelling a spawn half way can hang forever on CPython 3.11 (the pipes
            # never connect: python/cpython#103847): let it finish, then kill it.
            with contextlib.suppress(Exception):
                await self._kill(await spawn)
            raise

    @staticmethod
    async def _kill(process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        await process.wait()

