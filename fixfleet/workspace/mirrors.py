"""Warm workspaces: a bare mirror per repository, plain checkouts for the agents, commits made as data.

The mirrors are the node's, shared by its agents (fixfleet/workspace/env_cache.py, beside the
repositories' environments, under the same budget and leases):

    <cache>/mirrors/<repo>/git    bare mirror: cloned once, `git fetch --prune` afterwards

An agent holds a lease on a mirror while it uses it (an operation in flight, a checkout handed
out): the node's eviction leaves it alone then. Whatever writes a mirror's refs or worktree
registry (a clone, a fetch, a worktree added or moved) holds its lock, across processes. An
agent actor keeps, under its own data directory:

    root/spares/<repo>/<id>  spare checkouts made ahead of time at the default branch
    root/checkouts/<name>    plain trees handed to a session or a verification run

The trust boundary: the platform's git only ever runs in its mirrors, which no sandbox mounts.
A checkout is a plain tree, no `.git` in it: made as a git worktree (fast, and a spare can be
taken with a rename and a switch that rewrites only the files that differ), then cut loose
from the mirror before anyone else sees it. What an agent changes comes back as data
(fixfleet/workspace/changes.py); `commit` turns data into a commit with plumbing on the bare
mirror (no working tree, no hooks, no filters), and `push` sends exactly that commit to the
task's branch, refusing any other.

Everything runs git as an asyncio subprocess through the one hardened runner
(fixfleet/workspace/git.py): the manager lives inside Ray actors' event loops, so nothing
here blocks the loop (directory walks and deletes go to a thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr

from fixfleet.repos import InvalidRepo, check_git_url
from fixfleet.workspace import private_git, sweeper
from fixfleet.workspace.env_cache import EnvCache, Entry, Lease
from fixfleet.workspace.git import (
    GitCredentials,
    GitError,
    Git,
    RepositoryUnavailable,
)
from fixfleet.workspace.trees import remove_tree

log = logging.getLogger("fixfleet.workspace")

# Upstream branches land in refs/remotes/origin/*, so nothing of ours can be pruned or
# overwritten by a fetch; HEAD is fetched too so the default branch is known.
FETCH_REFSPECS = (
    "+refs/heads/*:refs/remotes/origin/*",
    "+refs/tags/*:refs/tags/*",
    "+HEAD:refs/remotes/origin/HEAD",
)
DEFAULT_BRANCH_REF = "refs/remotes/origin/HEAD"
# manyFiles = index v4 + untracked cache: cheaper checkouts of a large tree. No automatic gc (it
# may detach a process that keeps the agent's descriptors): `_fetch` runs one itself, in the
# foreground under the mirror's lock, once commits and fetches have left enough behind.
MIRROR_CONFIG = (("feature.manyFiles", "true"), ("core.logAllRefUpdates", "false"),
                 ("advice.detachedHead", "false"), ("gc.auto", "0"))
LOOSE_OBJECTS_MAX = 2000  # then a gc packs them (and drops unreachable ones older than two weeks)
PACKS_MAX = 50
CONTROL_CHARS = re.compile(r"[\x00-\x20\x7f]")
ZERO_OID = "0" * 40
FILE_MODES = {"100644", "100755", "120000"}


# A workspace operation failed; carries the (redacted) tail of git's stderr when git failed.
WorkspaceError = GitError


class Checkout(BaseModel):
    """A plain tree of one commit (no `.git`): what a session or a verification run works in."""

    model_config = ConfigDict(frozen=True)

    path: Path
    sha: str
    repo_url: str
    from_spare: bool = False


class TreeEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    mode: str
    oid: str


class FileContent(BaseModel):
    """A file as the platform commits it: bytes (a symlink's target for mode 120000), or None: deleted."""

    model_config = ConfigDict(frozen=True)

    content: bytes | None
    mode: str = "100644"


@dataclass
class WorkspaceStats:
    clones: int = 0
    fetches: int = 0
    fetches_coalesced: int = 0
    spare_hits: int = 0
    spare_misses: int = 0
    evictions: int = 0
    gcs: int = 0


@dataclass
class Spare:
    path: Path
    sha: str
    size: int
    git_dir: Path | None = None  # the agent's repository, built ahead for `sha` (private_git.py)


@dataclass
class MirrorState:
    """What this process knows about one mirror; the disk stays the source of truth."""

    key: str
    entry: Entry
    # Held (with the entry's file lock) by anything that writes the mirror's refs or worktree
    # registry: git is not safe against a concurrent `worktree add` walking the same registry.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pins: int = 0  # operations in flight that need the mirror to stay
    lease: Lease | None = None  # held while pinned or a checkout is out: eviction leaves it alone
    live: set[Path] = field(default_factory=set)  # checkouts handed out, not yet discarded
    spares: list[Spare] = field(default_factory=list)
    spare_task: asyncio.Task[None] | None = None
    last_fetch_started: float | None = None  # monotonic
    generation: int = 0  # completed clones/fetches
    spares_swept: bool = False

    @property
    def path(self) -> Path:
        return self.entry.directory / "git"

    def idle(self) -> bool:
        """Nothing of this process needs the mirror now (a spare build pins it while it runs)."""
        return self.pins == 0 and not self.lock.locked() and not self.live


def validate_url(url: str) -> str:
    try:
        return check_git_url(url)
    except InvalidRepo as exc:  # the task names a URL git may not be given: no attempt can use it
        raise RepositoryUnavailable(str(exc)) from None


def validate_ref_text(value: str, what: str) -> None:
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
    """`FF-42-exec` -> `FF-42-exec-1a2b3c4d`; the hash keeps distinct inputs distinct."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:80] or "task"
    return f"{readable}-{hashlib.sha256(f'{salt}/{text}'.encode()).hexdigest()[:8]}"


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


class WorkspaceManager:
    """Spares and checkouts under one root directory (one manager per actor), over the node's
    mirrors in `cache` (default: a cache of its own under root/cache, budget `disk_budget_bytes`)."""

    def __init__(self, root: Path, disk_budget_bytes: int | None = None, github_token: SecretStr | None = None, *,
                 cache: EnvCache | None = None, holder: str | None = None,
                 token_hosts: Collection[str] = ("github.com",), warm_spares: int = 1,
                 fetch_max_age_s: float = 0.0, network_timeout_s: float = 900.0,
                 local_timeout_s: float = 300.0, branch_prefix: str = "fixfleet/", history: int = 0):
        self.root = Path(root).absolute()
        self.cache = cache or EnvCache(self.root / "cache", max_bytes=disk_budget_bytes)
        self.holder = holder or f"workspace-{os.getpid()}"
        self.mirrors_dir = self.cache.mirrors_dir
        self.spares_dir = self.root / "spares"
        self.checkouts_dir = self.root / "checkouts"
        self.trash_dir = self.root / "trash"
        self.tmp_dir = self.root / "tmp"
        self.warm_spares = warm_spares
        self.fetch_max_age_s = fetch_max_age_s
        self.branch_prefix = branch_prefix
        self.history = history  # commits in the agent's own repository of a checkout (0: none)
        self.stats = WorkspaceStats()
        self.git = Git(GitCredentials(github_token, token_hosts),
                             network_timeout_s=network_timeout_s, local_timeout_s=local_timeout_s)
        self._states: dict[str, MirrorState] = {}
        for directory in (self.spares_dir, self.checkouts_dir, self.trash_dir, self.tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)

    @property
    def disk_budget_bytes(self) -> int | None:
        """The node cache's budget (mirrors and environments together)."""
        return self.cache.max_bytes

    @disk_budget_bytes.setter
    def disk_budget_bytes(self, value: int | None) -> None:
        self.cache.max_bytes = value

    # -- holding a mirror ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _pinned(self, state: MirrorState) -> AsyncIterator[None]:
        """The mirror is needed until the block ends: leased (eviction leaves it alone)."""
        state.pins += 1
        try:
            await self._hold(state)
            yield
        finally:
            state.pins -= 1
            self._release_if_idle(state)

    async def _hold(self, state: MirrorState) -> None:
        if state.lease is None or not state.lease.held:
            async with self.cache.locked(state.entry):  # no eviction between the check and the lease
                if state.lease is None or not state.lease.held:
                    state.lease = self.cache.lease(state.entry, self.holder)
        with contextlib.suppress(OSError):
            state.entry.touch()  # its last use, for the least-recently-used order

    def _release_if_idle(self, state: MirrorState) -> None:
        if state.idle() and state.lease is not None:
            state.lease.release()
            state.lease = None

    @contextlib.asynccontextmanager
    async def _writing(self, state: MirrorState) -> AsyncIterator[None]:
        """The right to write the mirror's refs and worktree registry: this process's coroutines
        one at a time (the asyncio lock), other processes on the node too (the entry's flock)."""
        async with state.lock, self.cache.locked(state.entry):
            yield

    # -- mirrors and refs ----------------------------------------------------------------

    async def ensure_mirror(self, url: str) -> Path:
        """The repository's mirror, cloned on first use and fetched (coalesced) afterwards."""
        url = validate_url(url)
        state = self._state(url)
        async with self._pinned(state):
            await self._refresh(state, url)
            await self.enforce_budget()  # while leased: never evicts the mirror it returns
        self._schedule_spares(state)
        return state.path

    async def warm(self, url: str) -> Path:
        """Mirror ready and spares built: what an actor calls ahead of its tasks."""
        path = await self.ensure_mirror(url)
        state = self._state(validate_url(url))
        if state.spare_task is not None:
            await asyncio.shield(state.spare_task)
        return path

    def mirror_key(self, url: str) -> str:
        return repo_key(validate_url(url))

    async def resolve(self, url: str, ref: str | None = None, *, branch: bool = False) -> str:
        """The commit of `ref` after a fetch: a remote branch (`branch=True`: only that), a tag,
        a commit, or the remote's default branch (None)."""
        url = validate_url(url)
        if ref is not None:
            validate_ref_text(ref, "branch name" if branch else "base")
        if branch:
            await self._check_branch(ref or "")
        state = self._state(url)
        async with self._pinned(state):
            if await self._refresh(state, url):
                await self.enforce_budget()
            candidates = [f"refs/remotes/origin/{ref}"] if branch else self._base_candidates(ref)
            sha = await self._first_commit(state, candidates)
            if sha is None and ref is not None:  # pushed after our last fetch (by another actor)
                await self._refresh(state, url, force=True)
                sha = await self._first_commit(state, candidates)
        if sha is None:
            what = f"branch {ref!r}" if branch else f"base {ref or 'default branch'!r}"
            raise WorkspaceError(f"{what} not found on the remote")
        self._schedule_spares(state)
        return sha

    async def branch_head(self, url: str, branch: str) -> str | None:
        """Where the remote branch is, or None when it does not exist (yet)."""
        try:
            return await self.resolve(url, branch, branch=True)
        except RepositoryUnavailable:  # the repository itself is missing, not just the branch
            raise
        except WorkspaceError as exc:
            if "not found" in exc.message:
                return None
            raise

    async def list_tree(self, url: str, sha: str) -> dict[str, TreeEntry]:
        """Every file of the commit: path -> mode and blob id (submodules left out)."""
        state = self._state(validate_url(url))
        async with self._pinned(state):
            out = await self.git.run_bytes("ls-tree", "-r", "-z", "--full-tree", "--end-of-options", sha,
                                           cwd=state.path)
        entries = {}
        for record in filter(None, out.split(b"\0")):
            meta, _, path = record.partition(b"\t")
            mode, kind, oid = meta.decode().split()
            if kind == "blob":
                entries[path.decode("utf-8", "surrogateescape")] = TreeEntry(mode=mode, oid=oid)
        return entries

    async def read_files(self, url: str, sha: str, paths: Collection[str]) -> dict[str, bytes]:
        """The content of those files at `sha` that exist (one `cat-file --batch`)."""
        if not paths:
            return {}
        state = self._state(validate_url(url))
        wanted = [p for p in paths if "\n" not in p]
        async with self._pinned(state):
            out = await self.git.run_bytes("cat-file", "--batch", cwd=state.path,
                                           stdin="".join(f"{sha}:{p}\n" for p in wanted).encode())
        found, offset = {}, 0
        for path in wanted:
            end = out.index(b"\n", offset)
            header = out[offset:end].split()
            offset = end + 1
            if len(header) == 3 and header[1] == b"blob":
                size = int(header[2])
                found[path] = out[offset:offset + size]
                offset += size + 1
            elif len(header) == 3:  # a tree or a submodule: skip its body
                offset += int(header[2]) + 1
        return found

    # -- checkouts -----------------------------------------------------------------------

    async def checkout(self, url: str, sha: str, name: str, *, history: int | None = None,
                       branch: str | None = None) -> Checkout:
        """A plain tree of commit `sha` under checkouts/: taken from a spare when one is ready,
        else checked out cold; then cut loose from the mirror. With `history` > 0 (default: the
        manager's) it gets a repository of its own for the agent (private_git.py) on `branch`."""
        history = self.history if history is None else history
        url = validate_url(url)
        validate_ref_text(sha, "commit")
        state = self._state(url)
        target = self.checkouts_dir / safe_name(name, salt=state.key)
        async with self._pinned(state):
            async with self._writing(state):
                await self._clear_stale(state, target)
                spare = None
                try:
                    spare = await self._take_spare(state, target, sha)
                    if spare is None:
                        await self.git.run("worktree", "add", "--quiet", "--detach", "--", str(target), sha,
                                           cwd=state.path)
                    index = await self._detach(state, target)
                    if history > 0:
                        built = spare if spare is not None and history == self.history else None
                        await self._private_git(state, target, sha, history, branch, index, built)
                except BaseException:
                    await asyncio.shield(self._remove_worktree(state, target))
                    raise
                finally:
                    if spare is not None and spare.git_dir is not None:
                        await asyncio.to_thread(remove_tree, spare.git_dir)  # used (moved) or not: gone
            state.live.add(target)  # keeps the lease until it is discarded
            sweeper.claim(target, self.holder)  # this process's: the sweeper leaves it while it lives
        self._schedule_spares(state)
        return Checkout(path=target, sha=sha, repo_url=url, from_spare=spare is not None)

    async def discard(self, checkout: Checkout) -> None:
        """Delete a checkout (only ones under this manager's checkouts/)."""
        self._check_owned(checkout.path)
        state = self._state(validate_url(checkout.repo_url))
        try:
            await asyncio.to_thread(remove_tree, checkout.path)
        finally:
            state.live.discard(checkout.path)
            sweeper.release(checkout.path)
            self._release_if_idle(state)

    def _check_owned(self, path: Path) -> None:
        """A Checkout may come back from a database or a request: only ours get deleted."""
        if Path(path).resolve().parent != self.checkouts_dir.resolve():
            raise WorkspaceError(f"not a checkout of this workspace: {path}")

    # -- commits and pushes --------------------------------------------------------------

    async def commit(self, url: str, parent: str, files: Mapping[str, FileContent], message: str) -> str:
        """A commit of `parent` plus `files`, built with plumbing in the bare mirror from data:
        no working tree, so nothing an agent wrote can run. Returns its sha."""
        state = self._state(validate_url(url))
        validate_ref_text(parent, "commit")
        index = self.tmp_dir / f"index-{uuid.uuid4().hex}"
        env = {"GIT_INDEX_FILE": str(index)}
        try:
            async with self._pinned(state):
                await self.git.run("read-tree", "--end-of-options", parent, cwd=state.path, env=env)
                lines = []
                for path, change in files.items():
                    if change.content is None:
                        lines.append(f"0 {ZERO_OID}\t{path}")
                        continue
                    if change.mode not in FILE_MODES:
                        raise WorkspaceError(f"invalid file mode {change.mode} for {path}")
                    oid = (await self.git.run("hash-object", "-w", "--stdin", cwd=state.path,
                                              stdin=change.content)).strip()
                    lines.append(f"{change.mode} {oid}\t{path}")
                await self.git.run("update-index", "--index-info", cwd=state.path, env=env,
                                   stdin="".join(line + "\n" for line in lines).encode())
                tree = (await self.git.run("write-tree", cwd=state.path, env=env)).strip()
                return (await self.git.run("commit-tree", tree, "-p", parent, "-F", "-", cwd=state.path,
                                           stdin=message.encode())).strip()
        finally:
            index.unlink(missing_ok=True)

    async def push(self, url: str, sha: str, branch: str, *, expected: str | None) -> str:
        """Send commit `sha` to `branch` on the remote, only if the branch is still at `expected`
        (None: it must not exist yet), so a human's concurrent push is never lost. Only the
        platform's own branches (`branch_prefix`) may be pushed."""
        url = validate_url(url)
        await self._check_branch(branch)
        if not branch.startswith(self.branch_prefix):
            raise WorkspaceError(f"refused to push {branch!r}: only {self.branch_prefix}* branches are fixfleet's")
        validate_ref_text(sha, "commit")
        state = self._state(url)
        async with self._pinned(state):
            lease = f"--force-with-lease=refs/heads/{branch}:{expected or ''}"
            await self.git.run("push", "--porcelain", "--no-verify", lease, "--", url,
                               f"{sha}:refs/heads/{branch}", cwd=state.path, url=url)
            # Pushing to a URL (not a named remote) leaves remote-tracking refs alone.
            async with self._writing(state):
                await self.git.run("update-ref", f"refs/remotes/origin/{branch}", sha, cwd=state.path)
        return sha

    # -- eviction ------------------------------------------------------------------------

    async def enforce_budget(self) -> list[Path]:
        """Fit the node cache into its budget (fixfleet/workspace/env_cache.py): least recently
        used environments and mirrors go first, never one that any agent on the node holds.
        Returns the mirrors evicted; this agent's spares of them go too."""
        evicted = [entry for entry in await asyncio.to_thread(self.cache.evict) if entry.kind == "mirror"]
        for entry in evicted:
            state = self._states.pop(entry.digest, None)
            if state is not None:
                state.spares.clear()
            spares = self.spares_dir / entry.digest
            if spares.exists():
                await asyncio.to_thread(remove_tree, spares)
            self.stats.evictions += 1
        return [entry.directory / "git" for entry in evicted]

    async def close(self) -> None:
        """Stop background spare builds (their git processes are killed); give up the leases."""
        tasks = [s.spare_task for s in self._states.values() if s.spare_task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for state in self._states.values():
            if state.lease is not None:
                state.lease.release()
                state.lease = None

    # -- mirrors: clone and fetch --------------------------------------------------------

    def _state(self, url: str) -> MirrorState:
        key = repo_key(url)
        if key not in self._states:
            self._states[key] = MirrorState(key=key, entry=self.cache.mirror_entry(key))
        return self._states[key]


    async def _refresh(self, state: MirrorState, url: str, *, force: bool = False) -> bool:
        """Clone or fetch, shared by every caller that asked while it was queued or running.
        `force` insists on a fetch that started after the call. True if it cloned."""
        asked_at, seen_generation = time.monotonic(), state.generation
        async with self._writing(state):
            present = state.entry.ready and (state.path / "HEAD").exists()
            if present and self._fresh_enough(state, asked_at, seen_generation, force):
                self.stats.fetches_coalesced += 1
                return False
            state.last_fetch_started = time.monotonic()
            if not present:  # never cloned here, or evicted since: another agent's spares are of no use
                state.spares.clear()
                await self._clone(state, url)
                self.stats.clones += 1
            else:
                await self._fetch(state.path, url)
                self.stats.fetches += 1
            state.generation += 1
        return not present

    def _fresh_enough(self, state: MirrorState, asked_at: float, seen_generation: int, force: bool) -> bool:
        started = state.last_fetch_started
        if force:
            return started is not None and started >= asked_at
        if state.generation > seen_generation:  # one finished since we asked: join it
            return True
        return started is not None and started >= asked_at - self.fetch_max_age_s

    async def _clone(self, state: MirrorState, url: str) -> None:
        """Clone into a temporary directory, renamed into place only once complete (with the
        mirror's lock held: any other partial one is a dead process's)."""
        for leftover in state.entry.directory.glob(".partial-*"):
            await asyncio.to_thread(remove_tree, leftover)
        state.entry.meta_file.unlink(missing_ok=True)
        partial = state.entry.directory / f".partial-{uuid.uuid4().hex[:8]}"
        try:
            await self.git.run("init", "--quiet", "--bare", "--", str(partial))
            for key, value in MIRROR_CONFIG:
                await self.git.run("config", "--", key, value, cwd=partial)
            await self._fetch(partial, url)
            if state.path.exists():  # a broken leftover without HEAD: set it aside
                os.rename(state.path, self.cache.tmp_dir / f"trash-{uuid.uuid4().hex[:8]}")
            os.rename(partial, state.path)
            meta = state.entry.meta_file.with_suffix(".tmp")
            meta.write_text(json.dumps({"url": self.git.credentials.redact(url), "cloned": time.time()}))
            os.replace(meta, state.entry.meta_file)  # ready: the node's eviction counts it from now
        except BaseException:
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, partial, True))
            raise
        log.info("cloned mirror %s", state.path.name)

    async def _fetch(self, mirror: Path, url: str) -> None:
        await self.git.run("fetch", "--quiet", "--prune", "--no-tags", "--no-write-fetch-head",
                           "--", url, *FETCH_REFSPECS, cwd=mirror, url=url)
        await self._collect_garbage(mirror)

    async def _collect_garbage(self, mirror: Path) -> None:
        """A mirror lives for months: each task's commits and each fetch leave loose objects and
        small packs. Past a bound, one gc (with the mirror's lock held) packs them."""
        try:
            counts = dict(line.split(": ", 1) for line in
                          (await self.git.run("count-objects", "-v", cwd=mirror)).splitlines() if ": " in line)
            if int(counts.get("count", 0)) <= LOOSE_OBJECTS_MAX and int(counts.get("packs", 0)) <= PACKS_MAX:
                return
            await self.git.run("gc", "--quiet", cwd=mirror, background=True)
            self.stats.gcs += 1
        except (GitError, ValueError) as error:  # a mirror that could not be packed still serves
            log.warning("gc of mirror %s failed: %s", mirror.parent.name, error)

    async def _check_branch(self, branch: str) -> None:
        validate_ref_text(branch, "branch name")
        try:
            await self.git.run("check-ref-format", "--branch", branch)
        except GitError as error:
            raise WorkspaceError(f"invalid branch name: {branch!r}") from error

    @staticmethod
    def _base_candidates(base: str | None) -> list[str]:
        if base is None:
            return [DEFAULT_BRANCH_REF]
        candidates = [f"refs/remotes/origin/{base}", f"refs/tags/{base}"]
        if re.fullmatch(r"[0-9a-fA-F]{4,64}", base):
            candidates.append(base)
        return candidates

    async def _first_commit(self, state: MirrorState, refs: list[str]) -> str | None:
        for ref in refs:
            try:
                out = await self.git.run("rev-parse", "--verify", "--quiet", "--end-of-options",
                                         f"{ref}^{{commit}}", cwd=state.path)
            except GitError:
                continue
            if out.strip():
                return out.strip()
        return None

    # -- checkouts: spares and detaching (with state.lock held) --------------------------

    async def _clear_stale(self, state: MirrorState, target: Path) -> None:
        """A directory left by a crashed earlier attempt is removed; a live one is refused."""
        if target in state.live:
            raise WorkspaceError(f"checkout {target.name} is in use by another task")
        if target.exists() or target.is_symlink():
            log.warning("removing stale checkout %s", target)
            await asyncio.to_thread(remove_tree, target)
        await self.git.run("worktree", "prune", cwd=state.path)

    async def _take_spare(self, state: MirrorState, target: Path, sha: str) -> Spare | None:
        spare = state.spares.pop(0) if state.spares else None  # no await: no double handout
        if spare is None:
            self.stats.spare_misses += 1
            return None
        try:
            await self.git.run("worktree", "move", "--", str(spare.path), str(target), cwd=state.path)
            if sha != spare.sha:  # rewrites only the files that differ between the two commits
                await self.git.run("checkout", "--quiet", "--detach", sha, cwd=target)
        except GitError as error:
            log.warning("spare unusable, checking out cold: %s", error.message)
            await self._remove_worktree(state, spare.path)
            await self._remove_worktree(state, target)
            if spare.git_dir is not None:
                await asyncio.to_thread(remove_tree, spare.git_dir)
            self.stats.spare_misses += 1
            return None
        self.stats.spare_hits += 1
        return spare

    async def _detach(self, state: MirrorState, target: Path) -> bytes:
        """Cut a fresh worktree loose: drop its `.git` file and its registration in the mirror.
        Returns its index (valid for the tree as checked out)."""
        admin = (target / ".git").read_text().removeprefix("gitdir:").strip()
        admin_dir = Path(admin)
        if admin_dir.parent.resolve() != (state.path / "worktrees").resolve():
            raise WorkspaceError(f"unexpected worktree registration {admin}")
        index = (admin_dir / "index").read_bytes()
        (target / ".git").unlink()
        await asyncio.to_thread(shutil.rmtree, admin_dir, True)
        return index

    async def _private_git(self, state: MirrorState, target: Path, sha: str, depth: int, branch: str | None,
                           index: bytes, spare: Spare | None) -> None:
        """The agent's repository in the checkout: the spare's, built ahead, when it fits."""
        staging = self.tmp_dir / f"git-{uuid.uuid4().hex}"
        try:
            reused = spare is not None and spare.git_dir is not None and spare.git_dir.is_dir()
            if reused:
                os.rename(spare.git_dir, staging)  # type: ignore[union-attr]
                reused = await private_git.extend(self.git, state.path, staging, spare.sha, sha)  # type: ignore[union-attr]
            if not reused:
                await asyncio.to_thread(remove_tree, staging)
                await private_git.build(self.git, state.path, staging, sha, depth)
            private_git.install(staging, target, sha, branch, index)
        except BaseException:
            await asyncio.to_thread(remove_tree, staging)
            raise

    async def _remove_worktree(self, state: MirrorState, path: Path) -> None:
        try:
            await self.git.run("worktree", "remove", "--force", "--force", "--", str(path), cwd=state.path)
        except GitError:
            await asyncio.to_thread(remove_tree, path)
        await self.git.run("worktree", "prune", cwd=state.path)

    def _schedule_spares(self, state: MirrorState) -> None:
        if len(state.spares) >= self.warm_spares or not (state.path / "HEAD").exists():
            return
        if state.spare_task is not None and not state.spare_task.done():
            return
        state.spare_task = asyncio.create_task(self._fill_spares(state), name=f"spares:{state.key}")

    async def _fill_spares(self, state: MirrorState) -> None:
        try:
            async with self._pinned(state):
                while len(state.spares) < self.warm_spares:
                    async with self._writing(state):
                        if not state.spares_swept:
                            await self._sweep_spares(state)
                        state.spares.append(await self._build_spare(state))
                await self.enforce_budget()
        except GitError as error:
            log.warning("could not build a spare checkout for %s: %s", state.key, error)

    async def _sweep_spares(self, state: MirrorState) -> None:
        """Spares left by an earlier process may be half built: discard them."""
        directory = self.spares_dir / state.key
        known = {spare.path for spare in state.spares} | {spare.git_dir for spare in state.spares if spare.git_dir}
        if directory.is_dir():
            for path in directory.iterdir():
                if path not in known:
                    await self._remove_worktree(state, path)
        state.spares_swept = True

    async def _build_spare(self, state: MirrorState) -> Spare:
        sha = await self._first_commit(state, [DEFAULT_BRANCH_REF])
        if sha is None:
            raise WorkspaceError("the remote has no default branch")
        path = self.spares_dir / state.key / uuid.uuid4().hex[:12]
        path.parent.mkdir(parents=True, exist_ok=True)
        git_dir = path.with_suffix(".git") if self.history > 0 else None
        try:
            await self.git.run("worktree", "add", "--quiet", "--detach", "--", str(path), sha,
                               cwd=state.path, background=True)
            if git_dir is not None:
                await private_git.build(self.git, state.path, git_dir, sha, self.history, background=True)
            size = await asyncio.to_thread(disk_usage, path)
        except BaseException:  # cancelled (close) or failed: leave nothing half-known
            await asyncio.shield(self._remove_worktree(state, path))
            if git_dir is not None:
                await asyncio.shield(asyncio.to_thread(remove_tree, git_dir))
            raise
        return Spare(path=path, sha=sha, size=size, git_dir=git_dir)
