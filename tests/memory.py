"""How much memory a stretch of work made a process hold at its peak, from the kernel's own
high-water mark (VmHWM, reset through /proc/<pid>/clear_refs), and trees that stress a walk."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024


def _status(pid: int | str, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", text)[1]) * 1024


@dataclass
class PeakGrowth:
    before: int = 0  # resident bytes when the work started
    peak: int = 0  # the highest resident bytes while it ran

    @property
    def grew(self) -> int:
        return max(0, self.peak - self.before)


def reset_peak(pid: int | str = "self") -> int:
    """Reset the process's high-water mark to what it holds now; returns that."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status(pid, "VmRSS")


def peak(pid: int | str = "self") -> int:
    return _status(pid, "VmHWM")


@contextmanager
def peak_growth(pid: int | str = "self") -> Iterator[PeakGrowth]:
    """How far above its resident size at the start the process peaked during the block."""
    growth = PeakGrowth(before=reset_peak(pid))
    try:
        yield growth
    finally:
        growth.peak = peak(pid)


def make_deep_tree(root: Path, depth: int, name: str = "d") -> None:
    """`depth` nested directories under root, made through descriptors (the full path would
    be far longer than PATH_MAX), a file at the bottom."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        bottom = os.open("bottom.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(bottom, b"deep\n")
        os.close(bottom)
    finally:
        os.close(fd)
