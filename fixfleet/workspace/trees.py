"""Deleting and measuring trees the sandbox wrote: whatever their depth, width or modes.

An agent or a repository's tests can leave a checkout thousands of directories deep (deeper
than PATH_MAX lets a path name), with directories made unreadable or unwritable. `shutil.rmtree`
recurses (RecursionError past ~1,000 levels) and names entries by their paths. Here a walk is a
loop over directory descriptors: no recursion, no path longer than one name, two directories
open at a time (down into a subdirectory, back up through `..`), links never followed, and a
directory the platform cannot enter or empty is unlocked (chmod) first.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class _Problems:
    """What could not be done, counted; the first one named."""

    root: Path
    count: int = 0
    first: str = ""

    def add(self, name: str, error: OSError) -> None:
        self.count += 1
        if not self.first:
            self.first = f"{name[-200:]}: {error.strerror}"


def _depth_first(top: Path, visit: Callable[[int], list[str]], leave: Callable[[int, str], None],
                 problems: _Problems) -> None:
    """Call `visit(fd)` on the directory `top` and every directory below it, parents first:
    it handles the directory's own entries and returns its subdirectories' names; then
    `leave(parent_fd, name)` once all below a directory is done."""
    try:
        current = os.open(top.parent, _DIRECTORY)
    except OSError as error:
        problems.add(str(top.parent), error)
        return
    levels: list[tuple[str, list[str]]] = [("", [top.name])]  # per level: name, subdirectories to go
    try:
        while True:
            name, pending = levels[-1]
            if pending:
                child_name = pending.pop()
                child = _enter(current, child_name, problems)
                if child is not None:
                    os.close(current)
                    current = child
                    levels.append((child_name, visit(current)))
                continue
            levels.pop()
            if not levels:
                return
            parent = os.open("..", _DIRECTORY, dir_fd=current)
            os.close(current)
            current = parent
            leave(current, name)
    except OSError as error:  # `..` cannot be opened again: nothing more can be reached
        problems.add("..", error)
    finally:
        os.close(current)


def _enter(parent: int, name: str, problems: _Problems) -> int | None:
    """A descriptor of the directory `name` in `parent`; one the platform may not enter is
    made enterable first (chmod 700: it is the sandbox's, and it is going)."""
    try:
        return os.open(name, _DIRECTORY, dir_fd=parent)
    except PermissionError:
        pass
    except OSError as error:
        problems.add(name, error)
        return None
    try:
        os.chmod(name, 0o700, dir_fd=parent)  # opened with O_NOFOLLOW above: a directory, not a link
        return os.open(name, _DIRECTORY, dir_fd=parent)
    except OSError as error:
        problems.add(name, error)
        return None


def _listing(directory: int, problems: _Problems) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except OSError as error:
        problems.add("a directory", error)
        return []


def remove_tree(path: Path) -> None:
    """Delete `path` and all below it, never following a link (a link at `path` itself is
    removed, not its target). What cannot be removed is logged, not raised: this runs in
    cleanups that must go on."""
    path = Path(path).absolute()
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            path.unlink()
            return
    except FileNotFoundError:
        return
    except OSError as error:
        log.warning("cannot remove %s: %s", path, error.strerror)
        return
    problems = _Problems(path)
    _depth_first(path, lambda fd: _remove_files(fd, problems), lambda fd, name: _remove_empty(fd, name, problems),
                 problems)
    if problems.count:
        log.warning("could not remove %d entries of %s (first: %s)", problems.count, path, problems.first)


def _remove_files(directory: int, problems: _Problems) -> list[str]:
    """Unlink everything in `directory` but its subdirectories, which it returns. The directory
    is made writable first: the sandbox may have left it read-only."""
    try:
        os.fchmod(directory, 0o700)
    except OSError as error:
        problems.add("a directory", error)
    subdirectories = []
    for entry in _listing(directory, problems):
        try:
            if entry.is_dir(follow_symlinks=False):
                subdirectories.append(entry.name)
            else:
                os.unlink(entry.name, dir_fd=directory)
        except FileNotFoundError:
            continue
        except OSError as error:
            problems.add(entry.name, error)
    return subdirectories


def _remove_empty(parent: int, name: str, problems: _Problems) -> None:
    try:
        os.rmdir(name, dir_fd=parent)
    except FileNotFoundError:
        pass
    except OSError as error:
        problems.add(name, error)


@dataclass
class Usage:
    bytes: int = 0  # allocated on disk: a sparse file counts what it really holds
    entries: int = 0
    complete: bool = True  # False: counting stopped at a limit


class _Enough(Exception):
    pass


def disk_usage(path: Path, *, stop_bytes: int | None = None, stop_entries: int | None = None) -> Usage:
    """What the tree at `path` takes on disk (allocated bytes, entries), at any depth; counting
    stops as soon as `stop_bytes` or `stop_entries` is passed. What cannot be read is skipped:
    this measures, it does not judge."""
    usage, problems = Usage(), _Problems(Path(path))

    def count(directory: int) -> list[str]:
        subdirectories = []
        for entry in _listing(directory, problems):
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            usage.bytes += info.st_blocks * 512
            usage.entries += 1
            if stat.S_ISDIR(info.st_mode):
                subdirectories.append(entry.name)
            if (stop_bytes is not None and usage.bytes > stop_bytes) or \
                    (stop_entries is not None and usage.entries > stop_entries):
                usage.complete = False
                raise _Enough
        return subdirectories

    try:
        _depth_first(Path(path).absolute(), count, lambda fd, name: None, problems)
    except _Enough:
        pass  # _depth_first closed what it had open
    return usage
