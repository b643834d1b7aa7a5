"""What an agent changed, taken out of its sandbox as data and checked before anything uses it.

The agent's tree is a plain checkout it could write anything into. The platform never runs git
there: it walks the tree itself, compares each file with the base commit's tree (git blob ids,
computed here), and builds a `ChangeSet`: paths and bytes. Then the checks, each one a refusal
with its reason:

- every path stays inside the repository: relative, no `..`, no `.git` component anywhere
  (git metadata of any kind is left out), no change to `.gitmodules`;
- a symbolic link may only point inside the repository;
- only regular files and links; sizes are limited (per file, in all, number of files), and so
  are the tree's depth and how many entries it holds beyond the repository's own;
- files that are not the agent's work are left out and listed: new files ignored by the
  repository's own `.gitignore` rules (caches, build output), mount points the sandbox made,
  and the empty placeholder files a sandboxed CLI leaves behind.

The limits hold while walking, not after: the walk is iterative (no recursion, whatever the
depth), a file is read only once it is known to be part of the change and to fit, never more
than the per-file limit at a time, and the walk stops at the first limit passed. So a tree of
gigabytes or thousands of levels costs the platform a refusal, not its memory.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path, PurePosixPath

import pathspec
from pydantic import BaseModel, ConfigDict, Field

from fixfleet.workspace.mirrors import FileContent, TreeEntry
from fixfleet.workspace.trees import remove_tree

MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_TOTAL_BYTES = 10 * 1024 * 1024
MAX_FILES = 500
MAX_DEPTH = 128  # directories below the root; git repositories stay far below
MAX_PATH_BYTES = 3000  # a relative path, so that root + path stays within PATH_MAX (4096)
MAX_NEW_ENTRIES = 100_000  # entries beyond the base tree's files (directories, ignored output included)
MAX_COMPARED_BYTES = 256 * 1024 * 1024  # a tracked file larger than this is not hashed: it changed
MAX_LISTED_LEFT_OUT = 200  # paths named in `left_out`; the rest are counted
# The CLI's own Bash sandbox (bubblewrap) creates these, empty, to protect them: never a change.
SANDBOX_PLACEHOLDERS = {".env", ".env.local", ".env.development", ".env.production", ".env.test",
                        ".npmrc", ".yarnrc", ".yarnrc.yml", "bunfig.toml", "package.json",
                        "package-lock.json", "yarn.lock", "pnpm-lock.yaml", "bun.lockb", "bun.lock",
                        ".gitmodules", ".gitconfig", ".bashrc", ".zshrc", ".profile"}
ALWAYS_IGNORED = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".claude"}


class ChangeRefused(ValueError):
    """The change breaks a rule; nothing of it may be used. The message says which."""


class FileChange(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str
    content: bytes | None  # None: deleted
    mode: str = "100644"  # 100755 executable, 120000 symbolic link (content = target)

    @property
    def as_content(self) -> FileContent:
        return FileContent(content=self.content, mode=self.mode)


class ChangeSet(BaseModel):
    base_sha: str
    files: list[FileChange] = Field(default_factory=list)
    left_out: dict[str, str] = Field(default_factory=dict)  # path -> why it is not part of the change

    @property
    def paths(self) -> list[str]:
        return [change.path for change in self.files]

    def subset(self, paths: Collection[str]) -> dict[str, FileContent]:
        return {change.path: change.as_content for change in self.files if change.path in paths}

    def everything(self) -> dict[str, FileContent]:
        return {change.path: change.as_content for change in self.files}


def blob_id(data: bytes) -> str:
    """git's object id of a blob with this content (SHA-1 repositories)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's id, not security


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """(size, mtime, mode) of every file right after checkout: unchanged files need no hashing
    later. The mode is there because chmod leaves the mtime alone."""
    return {path: _signature(info) for path, info in _walk(root, max_entries=None)}


def _signature(info: os.stat_result) -> tuple[int, int, int]:
    return info.st_size, info.st_mtime_ns, info.st_mode


class _Budget:
    """What the change has used so far; passing a limit refuses it on the spot."""

    def __init__(self) -> None:
        self.files = 0
        self.bytes = 0

    def fits(self, path: str, size: int) -> None:
        """Refuse before reading a file that cannot fit."""
        if size > MAX_FILE_BYTES:
            raise ChangeRefused(f"{path} is {size} bytes; the limit per file is {MAX_FILE_BYTES}")
        if self.bytes + size > MAX_TOTAL_BYTES:
            raise ChangeRefused(f"the change is over {MAX_TOTAL_BYTES} bytes (stopped reading at {_shown(path)}); "
                                f"the limit is {MAX_TOTAL_BYTES}")

    def add(self, change: FileChange) -> None:
        self.fits(change.path, len(change.content or b""))
        self.files += 1
        self.bytes += len(change.content or b"")
        if self.files > MAX_FILES:
            raise ChangeRefused(f"the change touches more than {MAX_FILES} files (stopped at {_shown(change.path)}); "
                                f"the limit is {MAX_FILES}")


def extract(root: Path, base_sha: str, base: Mapping[str, TreeEntry], *,
            before: Mapping[str, tuple[int, int, int]] | None = None,
            mount_points: Collection[str] = ()) -> ChangeSet:
    """The agent's change to `root` against the base tree, checked; raises ChangeRefused,
    at the first limit passed."""
    changes, left_out, seen = [], _LeftOut(), set()
    ignored, budget = _IgnoreRules(root), _Budget()
    for path, info in _walk(root, left_out, max_entries=len(base) + MAX_NEW_ENTRIES):
        seen.add(path)
        entry = base.get(path)
        if before is not None and entry is not None and before.get(path) == _signature(info):
            continue
        why = None if entry is not None else _not_the_agents(path, info, ignored, mount_points)
        if why:
            left_out.add(path, why)
            continue
        change = _compare(root, path, info, entry, budget)
        if change is not None:
            budget.add(change)
            changes.append(change)
    deleted = [FileChange(path=p, content=None) for p in base
               if p not in seen and not _is_inside(p, mount_points) and not _never_walked(p)]
    changeset = ChangeSet(base_sha=base_sha, files=sorted(changes + deleted, key=lambda c: c.path),
                          left_out=left_out.shown())
    check(changeset)
    return changeset


class _LeftOut:
    """Paths that are not the agent's work, named up to MAX_LISTED_LEFT_OUT, then counted."""

    def __init__(self) -> None:
        self.listed: dict[str, str] = {}
        self.more = 0

    def add(self, path: str, why: str) -> None:
        if len(self.listed) < MAX_LISTED_LEFT_OUT:
            self.listed[path] = why
        else:
            self.more += 1

    def shown(self) -> dict[str, str]:
        shown = {_shown(path): why for path, why in self.listed.items()}  # the list is stored as JSON
        if self.more:
            shown["..."] = f"{self.more} more paths left out"
        return shown


def check(changeset: ChangeSet) -> None:
    if len(changeset.files) > MAX_FILES:
        raise ChangeRefused(f"the change touches {len(changeset.files)} files; the limit is {MAX_FILES}")
    total = 0
    for change in changeset.files:
        check_path(change.path)
        size = len(change.content or b"")
        if size > MAX_FILE_BYTES:
            raise ChangeRefused(f"{change.path} is {size} bytes; the limit per file is {MAX_FILE_BYTES}")
        total += size
        if change.mode == "120000":
            _check_link(change.path, (change.content or b"").decode("utf-8", "surrogateescape"))
    if total > MAX_TOTAL_BYTES:
        raise ChangeRefused(f"the change is {total} bytes; the limit is {MAX_TOTAL_BYTES}")


def check_path(path: str) -> None:
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or any(part in ("", ".", "..") for part in path.split("/")):
        raise ChangeRefused(f"{path!r} is not a path inside the repository")
    if any(_is_git_name(part) for part in pure.parts):
        raise ChangeRefused(f"{path!r} is git metadata; the platform makes the commits")
    if path.lower() == ".gitmodules":
        raise ChangeRefused(".gitmodules may not be changed: submodules are not part of a fix")
    if any(ord(c) < 32 for c in path):
        raise ChangeRefused(f"{path!r} has control characters in its name")
    if _shown(path) != path:  # a name that is not UTF-8 (walked with surrogateescape) breaks JSON and git's tooling
        raise ChangeRefused(f"{_shown(path)!r} is not a UTF-8 name")


def _shown(path: str) -> str:
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _check_link(path: str, target: str) -> None:
    resolved = os.path.normpath(os.path.join(os.path.dirname(path), target))
    if os.path.isabs(target) or resolved == ".." or resolved.startswith("../"):
        raise ChangeRefused(f"{path} links outside the repository ({target})")
    if any(_is_git_name(part) for part in PurePosixPath(resolved).parts):
        raise ChangeRefused(f"{path} links into git metadata ({target})")


def _is_git_name(part: str) -> bool:
    return part.lower().rstrip(". ") == ".git"


def _never_walked(path: str) -> bool:
    """A path `_walk` does not look at: a tracked file there was not seen, yet not deleted."""
    *directories, name = path.split("/")
    return (any(_is_git_name(d) or d in ALWAYS_IGNORED for d in directories) or _is_git_name(name)
            or name.endswith((".pyc", ".pyo")))


def _is_inside(path: str, directories: Collection[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in directories)


def _walk(root: Path, left_out: _LeftOut | None = None, *,
          max_entries: int | None) -> Iterator[tuple[str, os.stat_result]]:
    """Every non-directory entry under root, relative and POSIX, never following links;
    `.git` entries and the caches of ALWAYS_IGNORED are not descended into.

    Iterative (a stack of directories, no recursion): a tree deeper than MAX_DEPTH, a path
    longer than MAX_PATH_BYTES or more than `max_entries` entries (None: no limit) is refused
    as soon as it is met."""
    pending = [("", 0)]  # (relative directory, depth)
    entries = 0
    while pending:
        relative_dir, depth = pending.pop()
        for entry in _listing(root, relative_dir):
            rel = f"{relative_dir}/{entry.name}" if relative_dir else entry.name
            entries += 1
            if max_entries is not None and entries > max_entries:
                raise ChangeRefused(f"the checkout holds more than {max_entries} entries (stopped at "
                                    f"{_shown(rel)[:200]}); the limit is the repository's files and {MAX_NEW_ENTRIES} more")
            if len(os.fsencode(rel)) > MAX_PATH_BYTES:
                raise ChangeRefused(f"{_shown(rel)[:200]}... is a path over {MAX_PATH_BYTES} bytes")
            if _is_git_name(entry.name):
                if left_out is not None:
                    left_out.add(rel, "git metadata is never part of a change")
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError as error:
                raise ChangeRefused(f"{_shown(rel)} cannot be read: {error.strerror}") from None
            if stat.S_ISDIR(info.st_mode):
                if entry.name in ALWAYS_IGNORED:
                    continue
                if depth + 1 > MAX_DEPTH:
                    raise ChangeRefused(f"the tree is more than {MAX_DEPTH} directories deep (at "
                                        f"{_shown(rel)[:200]}...); the limit is {MAX_DEPTH}")
                pending.append((rel, depth + 1))
            elif not entry.name.endswith((".pyc", ".pyo")):
                yield rel, info  # a link to a directory is a link


def _listing(root: Path, relative_dir: str) -> list[os.DirEntry[str]]:
    directory = os.path.join(root, relative_dir) if relative_dir else str(root)
    try:
        with os.scandir(directory) as listing:
            return list(listing)
    except OSError as error:
        # A directory that cannot be listed would otherwise look like the deletion of all it holds.
        raise ChangeRefused(f"{error.filename or directory} cannot be read: {error.strerror}") from None


def _compare(root: Path, path: str, info: os.stat_result, entry: TreeEntry | None,
             budget: _Budget) -> FileChange | None:
    """The file as a change, or None if it is as in the base; reads it only if it can fit."""
    full = root / path
    try:
        if stat.S_ISLNK(info.st_mode):
            data, mode = os.readlink(full).encode("utf-8", "surrogateescape"), "120000"
        elif stat.S_ISREG(info.st_mode):
            mode = "100755" if info.st_mode & 0o111 else "100644"
            if entry is not None and entry.mode == mode and info.st_size > MAX_FILE_BYTES \
                    and info.st_size <= MAX_COMPARED_BYTES and entry.oid == _file_blob_id(full, info.st_size):
                return None  # a large tracked file, untouched: never held in memory
            if entry is None or info.st_size > MAX_FILE_BYTES:  # certainly a change: it must fit first
                budget.fits(path, info.st_size)
            data = _read_at_most(full, path, MAX_FILE_BYTES)
        else:
            raise ChangeRefused(f"{path} is not a regular file or a link (a device, socket or fifo)")
    except OSError as exc:
        raise ChangeRefused(f"{path} cannot be read: {exc.strerror}") from None
    if entry is not None and entry.mode == mode and entry.oid == blob_id(data):
        return None
    return FileChange(path=path, content=data, mode=mode)


def _read_at_most(full: Path, path: str, limit: int) -> bytes:
    """The file's bytes, refused if there are more than `limit` (it may have grown since its stat)."""
    with full.open("rb") as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise ChangeRefused(f"{path} is over {limit} bytes; the limit per file is {limit}")
    return data


def _file_blob_id(full: Path, size: int) -> str:
    digest = hashlib.sha1(b"blob %d\0" % size)  # noqa: S324 - git's id, not security
    with full.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _not_the_agents(path: str, info: os.stat_result, ignored: _IgnoreRules,
                    mount_points: Collection[str]) -> str | None:
    """Why a new file (one the base does not track) is not the agent's work, or None; from its
    name and stat alone, before anything is read."""
    if _is_inside(path, mount_points):
        return "a mount point of the sandbox"
    if stat.S_ISREG(info.st_mode) and info.st_size == 0 and PurePosixPath(path).name in SANDBOX_PLACEHOLDERS:
        return "an empty placeholder left by a sandbox"
    if ignored.matches(path):
        return "ignored by the repository's .gitignore"
    return None


class _IgnoreRules:
    """The repository's .gitignore files, each applying below its own directory; the deepest
    rule that matches decides, as in git."""

    def __init__(self, root: Path) -> None:
        self.specs: dict[str, pathspec.GitIgnoreSpec] = {}
        self.root = root

    def matches(self, path: str) -> bool:
        parts = path.split("/")
        verdict = False
        for depth in range(len(parts)):
            directory = "/".join(parts[:depth])
            spec = self._spec(directory)
            if spec is None:
                continue
            result = spec.check_file("/".join(parts[depth:]))
            if result.include is not None:
                verdict = result.include
        return verdict

    def _spec(self, directory: str) -> pathspec.GitIgnoreSpec | None:
        if directory not in self.specs:
            gitignore = self.root / directory / ".gitignore"
            try:
                if gitignore.is_symlink() or not gitignore.is_file():
                    raise FileNotFoundError
                lines = gitignore.read_text(errors="replace").splitlines()[:5000]
                self.specs[directory] = pathspec.GitIgnoreSpec.from_lines(lines)
            except (OSError, ValueError):
                self.specs[directory] = None  # type: ignore[assignment]
        return self.specs[directory]


def apply_files(root: Path, files: Mapping[str, FileContent]) -> None:
    """Make the tree hold exactly these contents (None: the file is removed)."""
    for relative, change in files.items():
        check_path(relative)
        if change.mode == "120000" and change.content is not None:
            _check_link(relative, change.content.decode("utf-8", "surrogateescape"))
        _check_no_linked_parent(root, relative)
        target = root / relative
        if target.is_dir() and not target.is_symlink():
            remove_tree(target)
        elif target.is_symlink() or target.exists():
            target.unlink()
        if change.content is None:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if change.mode == "120000":
            os.symlink(change.content.decode("utf-8", "surrogateescape"), target)
            continue
        target.write_bytes(change.content)
        target.chmod(0o755 if change.mode == "100755" else 0o644)


def _check_no_linked_parent(root: Path, relative: str) -> None:
    # Writing or deleting below a linked directory would act wherever the link points.
    parent = root
    for part in PurePosixPath(relative).parts[:-1]:
        parent = parent / part
        if parent.is_symlink():
            raise ChangeRefused(f"{relative} lies below the link {parent.relative_to(root)}")
