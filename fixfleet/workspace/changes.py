"""What an agent changed, taken out of its sandbox as data and checked before anything uses it.

The agent's tree is a plain checkout it could write anything into. The platform never runs git
there: it walks the tree itself, compares each file with the base commit's tree (git blob ids,
computed here), and builds a `ChangeSet`: paths and bytes. Then the checks, each one a refusal
with its reason:

- every path stays inside the repository: relative, no `..`, no `.git` component anywhere
  (git metadata of any kind is left out), no change to `.gitmodules`;
- a symbolic link may only point inside the repository;
- only regular files and links; sizes are limited (per file, in all, number of files);
- files that are not the agent's work are left out and listed: new files ignored by the
  repository's own `.gitignore` rules (caches, build output), mount points the sandbox made,
  and the empty placeholder files a sandboxed CLI leaves behind.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Collection, Mapping
from pathlib import Path, PurePosixPath

import pathspec
from pydantic import BaseModel, ConfigDict, Field

from fixfleet.workspace.mirrors import FileContent, TreeEntry, remove_tree

MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_TOTAL_BYTES = 10 * 1024 * 1024
MAX_FILES = 500
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
    return {path: _signature(info) for path, info in _walk(root)}


def _signature(info: os.stat_result) -> tuple[int, int, int]:
    return info.st_size, info.st_mtime_ns, info.st_mode


def extract(root: Path, base_sha: str, base: Mapping[str, TreeEntry], *,
            before: Mapping[str, tuple[int, int, int]] | None = None,
            mount_points: Collection[str] = ()) -> ChangeSet:
    """The agent's change to `root` against the base tree, checked; raises ChangeRefused."""
    changes, left_out, seen = [], {}, set()
    ignored = _IgnoreRules(root)
    for path, info in _walk(root, left_out):
        seen.add(path)
        if before is not None and before.get(path) == _signature(info) and path in base:
            continue
        change = _compare(root, path, info, base.get(path))
        if change is None:
            continue
        why = _not_the_agents(path, change, base, ignored, mount_points)
        if why:
            left_out[path] = why
            continue
        changes.append(change)
    changes += [FileChange(path=p, content=None) for p in base
                if p not in seen and not _is_inside(p, mount_points) and not _never_walked(p)]
    shown = {_shown(path): why for path, why in left_out.items()}  # the list is stored as JSON
    changeset = ChangeSet(base_sha=base_sha, files=sorted(changes, key=lambda c: c.path), left_out=shown)
    check(changeset)
    return changeset


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


def _walk(root: Path, left_out: dict[str, str] | None = None):  # noqa: ANN202 - a generator of (path, stat)
    """Every non-directory entry under root, relative and POSIX, never following links;
    `.git` entries and the caches of ALWAYS_IGNORED are not descended into."""
    for directory, dirnames, filenames in os.walk(root, onerror=_unreadable, followlinks=False):
        relative_dir = os.path.relpath(directory, root)
        for name in list(dirnames):
            full = os.path.join(directory, name)
            rel = name if relative_dir == "." else f"{relative_dir}/{name}"
            if _is_git_name(name) or name in ALWAYS_IGNORED:
                dirnames.remove(name)
                if left_out is not None and _is_git_name(name):
                    left_out[rel] = "git metadata is never part of a change"
            elif os.path.islink(full):
                dirnames.remove(name)
                filenames.append(name)  # a link to a directory is a link
        for name in filenames:
            rel = name if relative_dir == "." else f"{relative_dir}/{name}"
            info = os.lstat(os.path.join(directory, name))
            if _is_git_name(name):
                if left_out is not None:
                    left_out[rel] = "git metadata is never part of a change"
                continue
            if name.endswith((".pyc", ".pyo")):
                continue
            yield rel, info


def _unreadable(error: OSError) -> None:
    # A directory that cannot be listed would otherwise look like the deletion of all it holds.
    raise ChangeRefused(f"{error.filename} cannot be read: {error.strerror}")


def _compare(root: Path, path: str, info: os.stat_result, entry: TreeEntry | None) -> FileChange | None:
    full = root / path
    try:
        if stat.S_ISLNK(info.st_mode):
            data, mode = os.readlink(full).encode("utf-8", "surrogateescape"), "120000"
        elif stat.S_ISREG(info.st_mode):
            mode = "100755" if info.st_mode & 0o111 else "100644"
            if info.st_size > MAX_FILE_BYTES:  # never held in memory; untouched, it is no change
                if entry is not None and entry.mode == mode and entry.oid == _file_blob_id(full, info.st_size):
                    return None
                return FileChange(path=path, content=b"\0" * (MAX_FILE_BYTES + 1), mode=mode)
            data = full.read_bytes()
        else:
            raise ChangeRefused(f"{path} is not a regular file or a link (a device, socket or fifo)")
    except OSError as exc:
        raise ChangeRefused(f"{path} cannot be read: {exc.strerror}") from None
    if entry is not None and entry.mode == mode and entry.oid == blob_id(data):
        return None
    return FileChange(path=path, content=data, mode=mode)


def _file_blob_id(full: Path, size: int) -> str:
    digest = hashlib.sha1(b"blob %d\0" % size)  # noqa: S324 - git's id, not security
    with full.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _not_the_agents(path: str, change: FileChange, base: Mapping[str, TreeEntry],
                    ignored: _IgnoreRules, mount_points: Collection[str]) -> str | None:
    if path in base:
        return None  # a tracked file changed: always the agent's work
    if _is_inside(path, mount_points):
        return "a mount point of the sandbox"
    if change.content == b"" and PurePosixPath(path).name in SANDBOX_PLACEHOLDERS:
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
