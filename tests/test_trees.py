"""Deleting and measuring trees the sandbox wrote (fixfleet/workspace/trees.py): any depth, any
width, odd modes, links never followed."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fixfleet.workspace.trees import disk_usage, remove_tree
from tests.memory import MiB, make_deep_tree


def test_a_tree_far_deeper_than_path_max_is_removed(tmp_path: Path) -> None:
    """2,000 levels of 10-character names: 20 KB of path, more than PATH_MAX (4 KB), and more
    levels than Python's recursion limit."""
    root = tmp_path / "checkout"
    root.mkdir()
    make_deep_tree(root, 2000, name="directory")
    remove_tree(root)
    assert not root.exists() and tmp_path.exists()


def test_odd_modes_are_no_obstacle(tmp_path: Path) -> None:
    root = tmp_path / "checkout"
    (root / "locked" / "inner").mkdir(parents=True)
    (root / "locked" / "inner" / "file").write_text("x")
    (root / "none").mkdir()
    (root / "none" / "file").write_text("x")
    (root / "readonly.txt").write_text("x")
    (root / "readonly.txt").chmod(0o000)
    (root / "locked" / "inner").chmod(0o500)
    (root / "locked").chmod(0o000)
    (root / "none").chmod(0o000)
    os.mkfifo(root / "fifo")
    remove_tree(root)
    assert not root.exists()


def test_odd_modes_are_no_obstacle_for_a_platform_user_that_is_not_root(tmp_path: Path) -> None:
    """Root passes any mode; the platform's own user must unlock what the sandbox locked."""
    if os.geteuid() != 0:
        pytest.skip("needs root to become another user")  # as non-root, the test above is this test
    home = Path(tempfile.mkdtemp(prefix="fftrees-"))  # pytest's own directory is root's alone (0700)
    home.chmod(0o777)
    root = home / "checkout"
    script = (f"import os, sys; sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
              "from pathlib import Path\nfrom fixfleet.workspace.trees import remove_tree\n"
              f"root = Path({str(root)!r})\n"
              "(root / 'a' / 'b').mkdir(parents=True); (root / 'a' / 'b' / 'f').write_text('x')\n"
              "(root / 'a' / 'b').chmod(0o000); (root / 'a').chmod(0o500); root.chmod(0o500)\n"
              "remove_tree(root); print('gone' if not root.exists() else 'left')\n")
    run = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", script],
                         capture_output=True, text=True, timeout=60, cwd=home, check=False)
    try:
        assert run.stdout.strip() == "gone", run.stderr
    finally:
        remove_tree(home)


def test_links_are_removed_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    root = tmp_path / "checkout"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "to-dir").symlink_to(outside)
    (root / "to-file").symlink_to(outside / "precious")
    link_root = tmp_path / "link-root"
    link_root.symlink_to(outside)
    remove_tree(root)
    remove_tree(link_root)
    assert not root.exists() and not link_root.is_symlink()
    assert (outside / "precious").read_text() == "keep me"


def test_a_wide_tree_is_removed(tmp_path: Path) -> None:
    root = tmp_path / "checkout"
    for i in range(300):
        (root / f"dir{i}").mkdir(parents=True)
        (root / f"dir{i}" / "f").write_text("x")
    remove_tree(root)
    assert not root.exists()


def test_missing_trees_and_plain_files(tmp_path: Path) -> None:
    remove_tree(tmp_path / "never-was")
    (tmp_path / "file").write_text("x")
    remove_tree(tmp_path / "file")
    assert not (tmp_path / "file").exists()


def test_disk_usage_counts_what_is_allocated_and_stops_at_a_limit(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    make_deep_tree(root, 1500)
    (root / "real.bin").write_bytes(os.urandom(4 * MiB))
    with (root / "sparse.bin").open("wb") as handle:
        handle.truncate(1024 * MiB)  # a gigabyte in name, nothing on disk
    try:
        usage = disk_usage(root)
        assert usage.complete and usage.entries == 1500 + 1 + 2  # the directories, the bottom file, two more
        assert 4 * MiB <= usage.bytes < 64 * MiB
        stopped = disk_usage(root, stop_bytes=MiB)
        assert not stopped.complete and stopped.bytes > MiB
        assert not disk_usage(root, stop_entries=100).complete
    finally:
        remove_tree(root)  # pytest's own clean-up recurses: it could not
