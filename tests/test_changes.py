"""The agent's change taken out of a plain checkout as data (fixfleet/workspace/changes.py).

Every test builds a real tree on disk, takes its base tree (git blob ids) from the files as
they were, lets "the agent" change the tree, and looks at what `extract` makes of it. One test
checks the helper against git itself, so the base trees here are what `list_tree` would give.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from fixfleet.workspace import changes
from fixfleet.workspace.changes import (
    ChangeRefused,
    ChangeSet,
    FileChange,
    apply_files,
    blob_id,
    check,
    check_path,
    extract,
    snapshot,
)
from fixfleet.workspace.mirrors import FileContent, TreeEntry
from fixfleet.workspace.trees import remove_tree
from tests.memory import MiB, make_deep_tree, peak_growth

SHA = "0" * 40
OLD = 1_000_000_000  # a checkout long ago: anything the agent writes afterwards has a newer mtime


# -- helpers ------------------------------------------------------------------------------


def write(root: Path, files: dict[str, bytes | str | tuple[str, str | bytes]]) -> None:
    """Lay out files: bytes/str a regular file, ("x", data) an executable, ("link", target) a link."""
    for relative, spec in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(spec, tuple) and spec[0] == "link":
            os.symlink(spec[1], path)
            continue
        data = spec[1] if isinstance(spec, tuple) else spec
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        path.chmod(0o755 if isinstance(spec, tuple) else 0o644)


def tree_of(root: Path) -> dict[str, TreeEntry]:
    """The base tree of `root` as `list_tree` returns it: path -> (mode, blob id)."""
    return {path: TreeEntry(mode=mode, oid=blob_id(data)) for path, (mode, data) in contents(root).items()}


def contents(root: Path) -> dict[str, tuple[str, bytes]]:
    """path -> (git mode, bytes) of every file and link under root; .git is not looked at."""
    found = {}
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(directory, d))]:
            full = os.path.join(directory, name)
            relative = os.path.relpath(full, root).replace(os.sep, "/")
            info = os.lstat(full)
            if stat.S_ISLNK(info.st_mode):
                found[relative] = ("120000", os.readlink(full).encode())
            else:
                found[relative] = ("100755" if info.st_mode & 0o111 else "100644", Path(full).read_bytes())
    return found


def age(root: Path) -> None:
    """Give every file an old mtime, as a checkout made long before the agent's session."""
    for directory, _dirnames, filenames in os.walk(root):
        for name in filenames:
            os.utime(os.path.join(directory, name), (OLD, OLD), follow_symlinks=False)


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def by_path(changeset: ChangeSet) -> dict[str, FileChange]:
    return {change.path: change for change in changeset.files}


BASE_FILES = {
    "README.md": "# project\n",
    "src/app.py": "def main():\n    return 1\n",
    "src/util.py": "X = 1\n",
    "scripts/run.sh": ("x", "#!/bin/sh\necho run\n"),
    "docs/link.md": ("link", "../README.md"),
}


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, dict[str, TreeEntry]]:
    """A checkout of BASE_FILES and its base tree."""
    root = tmp_path / "checkout"
    write(root, BASE_FILES)
    age(root)
    return root, tree_of(root)


# -- the helpers agree with git -----------------------------------------------------------


def test_blob_ids_and_modes_are_gits_own(tmp_path: Path) -> None:
    root = tmp_path / "g"
    root.mkdir()
    git("init", "-q", cwd=root)
    write(root, BASE_FILES | {"bin/data": b"\0\xff binary"})
    git("add", "-A", cwd=root)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "base", cwd=root)
    listed = {}
    for line in git("ls-tree", "-r", "HEAD", cwd=root).splitlines():
        meta, path = line.split("\t", 1)
        mode, _kind, oid = meta.split()
        listed[path] = TreeEntry(mode=mode, oid=oid)
    assert listed == tree_of(root)
    assert blob_id(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"  # git's empty blob


def test_a_real_git_checkout_extracts_against_ls_tree(tmp_path: Path) -> None:
    root = tmp_path / "g"
    root.mkdir()
    git("init", "-q", cwd=root)
    write(root, BASE_FILES)
    git("add", "-A", cwd=root)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "base", cwd=root)
    base = {}
    for line in git("ls-tree", "-r", "HEAD", cwd=root).splitlines():
        meta, path = line.split("\t", 1)
        mode, _kind, oid = meta.split()
        base[path] = TreeEntry(mode=mode, oid=oid)
    (root / "src/app.py").write_text("def main():\n    return 2\n")
    result = extract(root, SHA, base)
    assert result.paths == ["src/app.py"]
    assert result.left_out == {".git": "git metadata is never part of a change"}


# -- what changed, and what did not -------------------------------------------------------


def test_modified_added_and_deleted_files_are_found(repo: tuple[Path, dict[str, TreeEntry]]) -> None:
    root, base = repo
    (root / "src/app.py").write_text("def main():\n    return 2\n")
    (root / "src/new.py").write_text("NEW = True\n")
    (root / "src/util.py").unlink()
    result = extract(root, SHA, base)
    assert result.base_sha == SHA
    assert result.paths == ["src/app.py", "src/new.py", "src/util.py"]  # sorted
    found = by_path(result)
    assert found["src/app.py"] == FileChange(path="src/app.py", content=b"def main():\n    return 2\n")
    assert found["src/new.py"].content == b"NEW = True\n" and found["src/new.py"].mode == "100644"
    assert found["src/util.py"].content is None
    assert result.everything()["src/util.py"] == FileContent(content=None)
    assert result.subset({"src/new.py"}) == {"src/new.py": FileContent(content=b"NEW = True\n")}
    assert result.left_out == {}


@pytest.mark.parametrize("with_snapshot", [False, True])
def test_unchanged_files_are_not_reported(repo: tuple[Path, dict[str, TreeEntry]], with_snapshot: bool) -> None:
    root, base = repo
    before = snapshot(root) if with_snapshot else None
    assert extract(root, SHA, base, before=before).files == []


def test_a_file_rewritten_with_the_same_bytes_is_not_a_change(repo: tuple[Path, dict[str, TreeEntry]]) -> None:
    root, base = repo
    before = snapshot(root)
    (root / "src/app.py").write_bytes((root / "src/app.py").read_bytes())  # new mtime, same bytes
    assert extract(root, SHA, base, before=before).files == []


def test_snapshot_skips_a_file_whose_size_and_mtime_are_unchanged(repo: tuple[Path, dict[str, TreeEntry]]) -> None:
    """Documented behaviour: with a snapshot, a tracked file with the same size, mtime (and mode)
    as right after checkout is not read at all. An agent that rewrites a file to the same size
    and then forges the old mtime (touch -d) hides that change from extraction."""
    root, base = repo
    before = snapshot(root)
    (root / "src/util.py").write_text("X = 2\n")  # same size
    os.utime(root / "src/util.py", ns=(OLD * 10**9, OLD * 10**9))
    assert extract(root, SHA, base, before=before).files == []
    assert extract(root, SHA, base).paths == ["src/util.py"]  # without a snapshot it is hashed


def test_snapshot_still_sees_a_changed_file(repo: tuple[Path, dict[str, TreeEntry]]) -> None:
    root, base = repo
    before = snapshot(root)
    (root / "src/util.py").write_text("X = 2\n")  # same size, newer mtime
    assert extract(root, SHA, base, before=before).paths == ["src/util.py"]


@pytest.mark.parametrize("with_snapshot", [False, True])
def test_the_executable_bit_is_the_mode(repo: tuple[Path, dict[str, TreeEntry]], with_snapshot: bool) -> None:
    root, base = repo
    before = snapshot(root) if with_snapshot else None
    (root / "src/app.py").chmod(0o755)  # chmod leaves the mtime alone
    (root / "scripts/run.sh").chmod(0o644)
    write(root, {"scripts/new.sh": ("x", "#!/bin/sh\n")})
    found = by_path(extract(root, SHA, base, before=before))
    assert {path: change.mode for path, change in found.items()} == {
        "scripts/new.sh": "100755", "scripts/run.sh": "100644", "src/app.py": "100755"}
    assert found["src/app.py"].content == (root / "src/app.py").read_bytes()


# -- symbolic links -----------------------------------------------------------------------


def test_a_link_inside_the_repository_is_accepted(repo: tuple[Path, dict[str, TreeEntry]]) -> None:
    root, base = repo
    write(root, {"src/alias.py": ("link", "app.py"), "top": ("link", "src"),
                 "docs/deep/up.md": ("link", "../../README.md")})
    found = by_path(extract(root, SHA, base))
    assert set(found) == {"src/alias.py", "top", "docs/deep/up.md"}  # `top` is not descended into
    assert found["src/alias.py"] == FileChange(path="src/alias.py", content=b"app.py", mode="120000")
    assert found["top"].content == b"src" and found["top"].mode == "120000"


def test_a_link_retargeted_is_a_change(repo: tuple[Path, dict[str, TreeEntry]]) -> None:
    root, base = repo
    (root / "docs/link.md").unlink()
    os.symlink("../src/app.py", root / "docs/link.md")
    assert by_path(extract(root, SHA, base))["docs/link.md"].content == b"../src/app.py"


@pytest.mark.parametrize(("link", "target"), [
    ("evil", "../../etc/passwd"),
    ("evil", "/etc/passwd"),
    ("evil", ".."),
    ("sub/evil", "../../outside"),
    ("sub/evil", "../sub/../../outside"),
    ("hook", ".git/hooks/pre-commit"),
    ("sub/hook", "../.git/config"),
    ("hook", ".GIT/config"),
    ("hook", ".git"),
])
def test_a_link_out_of_the_repository_or_into_git_is_refused(
        repo: tuple[Path, dict[str, TreeEntry]], link: str, target: str) -> None:
    root, base = repo
    write(root, {link: ("link", target)})
    with pytest.raises(ChangeRefused, match="links"):
        extract(root, SHA, base)


def test_a_tracked_file_turned_into_a_link_outside_is_refused(repo: tuple[Path, dict[str, TreeEntry]]) -> None:
    root, base = repo
    (root / "src/app.py").unlink()
    os.symlink("/etc/passwd", root / "src/app.py")
    with pytest.raises(ChangeRefused, match="outside"):
        extract(root, SHA, base)


# -- git metadata -------------------------------------------------------------------------


def test_git_metadata_anywhere_is_left_out_never_a_crash(repo: tuple[Path, dict[str, TreeEntry]]) -> None:
    root, base = repo
    write(root, {".git/config": "[core]\n", ".git/hooks/pre-commit": ("x", "#!/bin/sh\n"),
                 "sub/.git/hooks/x": ("x", "evil"), ".GIT/config": "x", ".git.": "x", "vendor/.git": "gitdir: ../x\n",
                 "a/.Git /HEAD": "x", "lnk/.git": ("link", "../src")})
    result = extract(root, SHA, base)
    assert result.files == []
    assert set(result.left_out) == {".git", "sub/.git", ".GIT", ".git.", "vendor/.git", "a/.Git ", "lnk/.git"}
    assert all("git metadata" in why for why in result.left_out.values())


@pytest.mark.parametrize("path", [".git/config", "sub/.git/hooks/x", ".GIT/config", ".git./x", "a/.Git/b", ".git"])
def test_check_path_refuses_git_metadata(path: str) -> None:
    with pytest.raises(ChangeRefused, match="git metadata"):
        check_path(path)


def test_a_changed_gitmodules_is_refused(repo: tuple[Path, dict[str, TreeEntry]]) -> None:
    root, base = repo
    write(root, {".gitmodules": '[submodule "x"]\n\tpath = x\n\turl = https://evil.example/x\n'})
    with pytest.raises(ChangeRefused, match=".gitmodules"):
        extract(root, SHA, base)


def test_a_tracked_gitmodules_may_not_be_deleted(tmp_path: Path) -> None:
    write(tmp_path, {".gitmodules": "[submodule]\n", "a.py": "A\n"})
    base = tree_of(tmp_path)
    (tmp_path / ".gitmodules").unlink()
    with pytest.raises(ChangeRefused, match=".gitmodules"):
        extract(tmp_path, SHA, base)


# -- limits and kinds of file -------------------------------------------------------------


def test_a_file_over_the_limit_is_refused(repo: tuple[Path, dict[str, TreeEntry]], monkeypatch: pytest.MonkeyPatch) -> None:
    root, base = repo
    monkeypatch.setattr(changes, "MAX_FILE_BYTES", 100)
    (root / "big.bin").write_bytes(b"x" * 101)
    with pytest.raises(ChangeRefused, match="big.bin is .* the limit per file is 100"):
        extract(root, SHA, base)
    (root / "big.bin").write_bytes(b"x" * 100)
    assert extract(root, SHA, base).paths == ["big.bin"]


def test_an_unchanged_tracked_file_over_the_limit_is_no_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A repository may track large files (fixtures, data); untouched, they are not the agent's."""
    monkeypatch.setattr(changes, "MAX_FILE_BYTES", 100)
    write(tmp_path, {"data/big.csv": "row\n" * 1000, "a.py": "A\n"})
    base = tree_of(tmp_path)
    (tmp_path / "data/big.csv").write_bytes((tmp_path / "data/big.csv").read_bytes())  # touched, same bytes
    (tmp_path / "a.py").write_text("B\n")
    assert extract(tmp_path, SHA, base).paths == ["a.py"]
    (tmp_path / "data/big.csv").write_text("row\n" * 1001)
    with pytest.raises(ChangeRefused, match="limit per file"):
        extract(tmp_path, SHA, base)


def test_a_change_over_the_total_is_refused(repo: tuple[Path, dict[str, TreeEntry]], monkeypatch: pytest.MonkeyPatch) -> None:
    root, base = repo
    monkeypatch.setattr(changes, "MAX_TOTAL_BYTES", 250)
    write(root, {"a": b"x" * 100, "b": b"x" * 100})
    assert extract(root, SHA, base).paths == ["a", "b"]
    write(root, {"c": b"x" * 51})
    with pytest.raises(ChangeRefused, match="the limit is 250"):
        extract(root, SHA, base)


def test_too_many_files_are_refused(repo: tuple[Path, dict[str, TreeEntry]], monkeypatch: pytest.MonkeyPatch) -> None:
    root, base = repo
    monkeypatch.setattr(changes, "MAX_FILES", 3)
    write(root, {f"new{i}.py": "x\n" for i in range(3)})
    assert len(extract(root, SHA, base).files) == 3
    (root / "src/util.py").unlink()  # a deletion counts too
    with pytest.raises(ChangeRefused, match="touches 4 files; the limit is 3"):
        extract(root, SHA, base)


def test_a_fifo_is_refused(repo: tuple[Path, dict[str, TreeEntry]]) -> None:
    root, base = repo
    os.mkfifo(root / "src/pipe")
    with pytest.raises(ChangeRefused, match="not a regular file"):
        extract(root, SHA, base)


def test_a_socket_is_refused(repo: tuple[Path, dict[str, TreeEntry]], monkeypatch: pytest.MonkeyPatch) -> None:
    root, base = repo
    monkeypatch.chdir(root / "src")  # a short relative name: socket paths are limited to ~100 bytes
    with socket.socket(socket.AF_UNIX) as server:
        server.bind("sock")
        with pytest.raises(ChangeRefused, match="not a regular file"):
            extract(root, SHA, base)


# -- what is not the agent's work ---------------------------------------------------------


def test_new_files_the_gitignore_ignores_are_left_out(repo: tuple[Path, dict[str, TreeEntry]]) -> None:
    root, base = repo
    write(root, {".gitignore": "*.log\n!keep.log\nbuild/\n", "sub/.gitignore": "*.tmp\n!keep.tmp\n!nested.log\n"})
    base = base | tree_of(root)  # the ignore files are tracked
    write(root, {"debug.log": "x", "keep.log": "kept", "build/out.o": "x", "build/deep/a.js": "x",
                 "sub/x.tmp": "x", "sub/keep.tmp": "kept", "sub/y.log": "x", "sub/nested.log": "kept",
                 "x.tmp": "not ignored at the root"})
    result = extract(root, SHA, base)
    assert result.paths == ["keep.log", "sub/keep.tmp", "sub/nested.log", "x.tmp"]
    ignored = {"debug.log", "build/out.o", "build/deep/a.js", "sub/x.tmp", "sub/y.log"}
    assert result.left_out == {path: "ignored by the repository's .gitignore" for path in ignored}


def test_the_ignore_rules_agree_with_git(tmp_path: Path) -> None:
    root = tmp_path / "g"
    root.mkdir()
    git("init", "-q", cwd=root)
    write(root, {".gitignore": "*.log\n!keep.log\n/dist\nbuild/\ncache/*\n!cache/.keep\n*.o\n",
                 "lib/.gitignore": "!important.o\n/local\n", "README": "r"})
    git("add", "-A", cwd=root)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "base", cwd=root)
    base = tree_of(root)
    new = {"a.log": "x", "keep.log": "x", "dist/app.js": "x", "lib/dist/x": "x", "build/x": "x", "lib/build/y": "x",
           "cache/x": "x", "cache/.keep": "", "a.o": "x", "lib/important.o": "x", "lib/b.o": "x",
           "lib/local/x": "x", "local/x": "x", "src/ok.py": "x"}
    write(root, new)
    untracked = set(git("ls-files", "--others", "--exclude-standard", cwd=root).split())
    result = extract(root, SHA, base)
    assert set(result.paths) == untracked
    assert set(result.paths) | set(result.left_out) == set(new) | {".git"}


def test_a_tracked_file_that_matches_an_ignore_pattern_is_still_the_agents(tmp_path: Path) -> None:
    write(tmp_path, {".gitignore": "*.cfg\n", "settings.cfg": "a=1\n"})
    base = tree_of(tmp_path)
    (tmp_path / "settings.cfg").write_text("a=2\n")
    assert extract(tmp_path, SHA, base).paths == ["settings.cfg"]
    (tmp_path / "settings.cfg").unlink()
    assert by_path(extract(tmp_path, SHA, base))["settings.cfg"].content is None


def test_empty_placeholders_a_sandbox_leaves_are_left_out(repo: tuple[Path, dict[str, TreeEntry]]) -> None:
    root, base = repo
    write(root, {".env": "", ".npmrc": "", "package.json": "", ".gitmodules": "", "yarn.lock": ""})
    result = extract(root, SHA, base)
    assert result.files == []
    assert result.left_out == {name: "an empty placeholder left by a sandbox"
                               for name in (".env", ".npmrc", "package.json", ".gitmodules", "yarn.lock")}


def test_a_new_package_json_with_content_is_the_agents(repo: tuple[Path, dict[str, TreeEntry]]) -> None:
    root, base = repo
    write(root, {"package.json": '{"name": "x"}\n', "empty.py": ""})
    assert extract(root, SHA, base).paths == ["empty.py", "package.json"]  # an empty non-placeholder counts


def test_a_tracked_placeholder_name_emptied_is_the_agents(tmp_path: Path) -> None:
    write(tmp_path, {"package.json": "{}\n"})
    base = tree_of(tmp_path)
    (tmp_path / "package.json").write_text("")
    assert by_path(extract(tmp_path, SHA, base))["package.json"].content == b""


def test_mount_points_are_left_out(repo: tuple[Path, dict[str, TreeEntry]]) -> None:
    root, base = repo
    write(root, {"node_modules/left-pad/index.js": "x", "node_modules/.bin/jest": ("link", "../jest/bin"),
                 "src/generated.py": "GEN = 1\n", "node_modules_not/x.js": "mine"})
    result = extract(root, SHA, base, mount_points=["node_modules", "src/generated.py"])
    assert result.paths == ["node_modules_not/x.js"]
    assert result.left_out == {p: "a mount point of the sandbox" for p in
                               ("node_modules/left-pad/index.js", "node_modules/.bin/jest", "src/generated.py")}


def test_a_tracked_file_under_a_mount_point_is_not_reported_deleted(tmp_path: Path) -> None:
    write(tmp_path, {"node_modules/vendored.js": "x", "a.js": "a"})
    base = tree_of(tmp_path)
    shutil.rmtree(tmp_path / "node_modules")
    (tmp_path / "node_modules").mkdir()  # the empty mount point, as the platform sees it from outside
    assert extract(tmp_path, SHA, base, mount_points=["node_modules/"]).files == []


def test_caches_are_never_part_of_the_change(repo: tuple[Path, dict[str, TreeEntry]]) -> None:
    root, base = repo
    write(root, {"src/__pycache__/app.cpython-311.pyc": b"\0pyc", ".pytest_cache/v/cache/nodeids": "[]",
                 "legacy.pyc": b"\0", "src/old.pyo": b"\0", ".mypy_cache/x.json": "{}",
                 "tests/__pycache__/t.pyc": b"\0"})
    result = extract(root, SHA, base)
    assert result.files == [] and result.left_out == {}


def test_tracked_files_in_never_walked_places_are_not_reported_deleted(tmp_path: Path) -> None:
    """Files the walk never looks at (.claude, caches, *.pyc) cannot be compared: they are not deletions."""
    write(tmp_path, {".claude/settings.json": "{}", ".claude/commands/fix.md": "fix",
                     "tools/compiled.pyc": b"\0", "a.py": "A\n"})
    base = tree_of(tmp_path)
    (tmp_path / "a.py").write_text("B\n")
    assert extract(tmp_path, SHA, base).paths == ["a.py"]


# -- paths --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../x", "a/../../x", "a/..", "./a", "a/./b", "a//b", "a/",
                                  "new\nline", "tab\there", "esc\x1b[0m", "nul\0x", "cr\r"])
def test_check_path_refuses_paths_outside_or_with_control_characters(path: str) -> None:
    with pytest.raises(ChangeRefused):
        check_path(path)


@pytest.mark.parametrize("path", ["a", "src/app.py", "dir/sub/file.txt", ".github/workflows/ci.yml",
                                  "sub/.gitmodules", ".gitignore", "..hidden", "a..b", "spa ce/ü.txt", ".gitkeep"])
def test_check_path_accepts_ordinary_paths(path: str) -> None:
    check_path(path)


def test_a_new_file_with_a_control_character_in_its_name_is_refused(repo: tuple[Path, dict[str, TreeEntry]]) -> None:
    root, base = repo
    (root / "src/evil\nname.py").write_text("x")
    with pytest.raises(ChangeRefused, match="control characters"):
        extract(root, SHA, base)


def test_check_refuses_a_changeset_made_elsewhere() -> None:
    with pytest.raises(ChangeRefused):
        check(ChangeSet(base_sha=SHA, files=[FileChange(path="../x", content=b"")]))
    with pytest.raises(ChangeRefused, match="links outside"):
        check(ChangeSet(base_sha=SHA, files=[FileChange(path="l", content=b"/etc", mode="120000")]))
    check(ChangeSet(base_sha=SHA, files=[FileChange(path="a/l", content=b"../b", mode="120000")]))


# -- files and directories trading places --------------------------------------------------


def test_a_directory_replacing_a_file(repo: tuple[Path, dict[str, TreeEntry]], tmp_path: Path) -> None:
    root, base = repo
    pristine = tmp_path / "pristine"
    shutil.copytree(root, pristine, symlinks=True)
    (root / "src/util.py").unlink()
    write(root, {"src/util.py/__init__.py": "X = 1\n"})
    result = extract(root, SHA, base)
    assert [(c.path, c.content) for c in result.files] == [("src/util.py", None),
                                                           ("src/util.py/__init__.py", b"X = 1\n")]
    apply_files(pristine, result.everything())
    assert contents(pristine) == contents(root)


def test_a_file_replacing_a_directory(repo: tuple[Path, dict[str, TreeEntry]], tmp_path: Path) -> None:
    root, base = repo
    pristine = tmp_path / "pristine"
    shutil.copytree(root, pristine, symlinks=True)
    shutil.rmtree(root / "src")
    (root / "src").write_text("now a file\n")
    result = extract(root, SHA, base)
    assert result.paths == ["src", "src/app.py", "src/util.py"]
    apply_files(pristine, result.everything())
    assert contents(pristine) == contents(root)


def test_a_read_only_directory_the_agent_left_is_extracted(repo: tuple[Path, dict[str, TreeEntry]]) -> None:
    root, base = repo
    before = snapshot(root)
    write(root, {"locked/inner/new.py": "N\n"})
    (root / "src/app.py").write_text("changed\n")
    for directory in (root / "locked/inner", root / "locked", root / "src"):
        directory.chmod(0o500)
    try:
        assert extract(root, SHA, base, before=before).paths == ["locked/inner/new.py", "src/app.py"]
    finally:
        for directory in (root / "locked", root / "locked/inner", root / "src"):
            directory.chmod(0o700)


def test_a_directory_that_cannot_be_read_is_refused_not_deleted(
        repo: tuple[Path, dict[str, TreeEntry]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory the platform cannot list (chmod 000 by the agent, as a non-root platform
    user) must not look like the deletion of every file in it."""
    root, base = repo
    real_scandir = os.scandir

    def scandir(path: object) -> object:
        if str(path).endswith("src"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(ChangeRefused, match="src"):
        extract(root, SHA, base)


def test_a_file_that_cannot_be_read_is_refused(repo: tuple[Path, dict[str, TreeEntry]], monkeypatch: pytest.MonkeyPatch) -> None:
    root, base = repo
    (root / "src/app.py").write_text("changed\n")
    real = Path.open

    def open_(self: Path, *args: object, **kwargs: object) -> object:
        if self.name == "app.py":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_)
    with pytest.raises(ChangeRefused, match="src/app.py"):
        extract(root, SHA, base)


# -- apply_files --------------------------------------------------------------------------


def test_apply_files_writes_contents_modes_and_links(tmp_path: Path) -> None:
    write(tmp_path, {"old.py": "old", "keep.py": "keep", "dir/inner.txt": "x", "link": ("link", "keep.py")})
    apply_files(tmp_path, {
        "old.py": FileContent(content=None),
        "missing.py": FileContent(content=None),  # deleting what is not there is fine
        "new/deep/file.py": FileContent(content=b"new"),
        "run.sh": FileContent(content=b"#!/bin/sh\n", mode="100755"),
        "dir": FileContent(content=b"a file now"),
        "link": FileContent(content=b"new/deep/file.py", mode="120000"),
        "keep.py": FileContent(content=b"was a file, now plain", mode="100644"),
    })
    assert contents(tmp_path) == {
        "keep.py": ("100644", b"was a file, now plain"), "new/deep/file.py": ("100644", b"new"),
        "run.sh": ("100755", b"#!/bin/sh\n"), "dir": ("100644", b"a file now"),
        "link": ("120000", b"new/deep/file.py")}


def test_apply_files_replaces_a_link_without_writing_through_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched")
    root = tmp_path / "root"
    write(root, {"l": ("link", str(outside))})
    apply_files(root, {"l": FileContent(content=b"mine")})
    assert outside.read_text() == "untouched"
    assert not (root / "l").is_symlink() and (root / "l").read_bytes() == b"mine"


@pytest.mark.parametrize("path", ["../x", "/abs", ".git/hooks/pre-commit", "a/../../x", ".gitmodules"])
def test_apply_files_refuses_paths_outside_the_root(tmp_path: Path, path: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(ChangeRefused):
        apply_files(root, {path: FileContent(content=b"#!/bin/sh\nevil\n", mode="100755")})
    assert not (tmp_path / "x").exists() and not (root / ".git").exists() and not Path("/abs").exists()


def test_apply_files_refuses_links_out_of_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(ChangeRefused, match="links outside"):
        apply_files(root, {"l": FileContent(content=str(tmp_path).encode(), mode="120000")})
    assert not (root / "l").is_symlink()


def test_apply_files_never_writes_or_deletes_through_a_linked_directory(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside, {"victim": "precious"})
    root = tmp_path / "root"
    write(root, {"out": ("link", str(outside))})  # e.g. a link the repository itself tracks
    with pytest.raises(ChangeRefused, match="link"):
        apply_files(root, {"out/victim": FileContent(content=None)})
    with pytest.raises(ChangeRefused, match="link"):
        apply_files(root, {"out/new": FileContent(content=b"x")})
    assert contents(outside) == {"victim": ("100644", b"precious")}


# -- property: extract, then apply, reproduces the tree ------------------------------------


def _random_tree(rng: random.Random) -> dict[str, bytes | tuple[str, str | bytes]]:
    tree: dict[str, bytes | tuple[str, str | bytes]] = {}
    for _ in range(rng.randint(1, 12)):
        directory = "/".join(rng.choice(["a", "b", "c"]) for _ in range(rng.randint(0, 2)))
        name = f"{directory}/f{rng.randint(0, 9)}" if directory else f"f{rng.randint(0, 9)}"
        if any(name.startswith(p + "/") or p.startswith(name + "/") for p in tree):
            continue  # a name is a file or a directory, not both
        data = rng.randbytes(rng.randint(0, 40))
        tree[name] = ("x", data) if rng.random() < 0.2 else data
    files = [p for p, spec in tree.items() if not isinstance(spec, tuple) or spec[0] != "link"]
    for i in range(rng.randint(0, 2)):  # links to files of the tree, relative to the link
        target = rng.choice(files)
        tree[f"link{i}"] = ("link", target)
    return tree


def _mutate(root: Path, rng: random.Random) -> None:
    present = sorted(contents(root))
    for _ in range(rng.randint(1, 6)):
        action = rng.choice(["modify", "delete", "add", "chmod", "to_dir", "dir_to_file", "to_link", "same_size"])
        path = root / rng.choice(present) if present else None
        if path is None or not (path.exists() or path.is_symlink()):
            action = "add"
        if action == "modify" and not path.is_symlink():
            path.write_bytes(rng.randbytes(rng.randint(0, 40)))
        elif action == "same_size" and not path.is_symlink():
            path.write_bytes(rng.randbytes(path.stat().st_size))
        elif action == "delete":
            path.unlink()
        elif action == "chmod" and not path.is_symlink():
            path.chmod(path.stat().st_mode ^ 0o111)
        elif action == "to_dir":
            path.unlink()
            write(path, {"inner": rng.randbytes(5)})
        elif action == "dir_to_file" and path.parent != root:
            shutil.rmtree(path.parent)
            path.parent.write_bytes(b"was a directory")
        elif action == "to_link":
            path.unlink()
            os.symlink(os.path.relpath(root / "f0", path.parent), path)  # may dangle: links are data
        else:
            write(root, {f"{rng.choice(['', 'a/', 'new/'])}n{rng.randint(0, 99)}": rng.randbytes(8)})
        present = sorted(contents(root))


@pytest.mark.parametrize("seed", range(40))
def test_extract_then_apply_reproduces_the_tree(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    before = tmp_path / "before"
    spec = _random_tree(rng)
    for name, value in list(spec.items()):  # links relative to their own directory
        if isinstance(value, tuple) and value[0] == "link":
            spec[name] = ("link", os.path.relpath(value[1], os.path.dirname(name) or "."))
    write(before, spec)
    age(before)
    after = tmp_path / "after"
    shutil.copytree(before, after, symlinks=True)
    base = tree_of(before)
    taken = snapshot(after)
    _mutate(after, rng)
    result = extract(after, SHA, base, before=taken)
    assert result.left_out == {}
    target = tmp_path / "target"
    shutil.copytree(before, target, symlinks=True)
    apply_files(target, result.everything())
    assert contents(target) == contents(after)


def test_a_name_that_is_not_utf8_is_refused_and_left_out_names_stay_json(tmp_path: Path) -> None:
    write(tmp_path, {".gitignore": "*.tmp\n"})
    base = tree_of(tmp_path)
    (tmp_path / os.fsdecode(b"ignored-\xff.tmp")).write_bytes(b"x")
    result = extract(tmp_path, SHA, base)
    assert result.left_out == {"ignored-\\xff.tmp": "ignored by the repository's .gitignore"}
    assert "ignored-" in result.model_dump_json()
    (tmp_path / os.fsdecode(b"latin-\xe9.py")).write_bytes(b"x")
    with pytest.raises(ChangeRefused, match="not a UTF-8 name"):
        extract(tmp_path, SHA, base)


# -- limits hold while walking: memory stays flat, a deep tree is refused and removed --------


def sparse(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.truncate(size)


@pytest.mark.parametrize("shape", ["300 files of 1.9 MB", "one file of 500 MB", "a tracked file grown to 500 MB"])
def test_a_500_mb_change_is_refused_while_reading_at_most_the_limit(
        repo: tuple[Path, dict[str, TreeEntry]], shape: str) -> None:
    """The issue's attack: 571 MB in 300 files (each under the per-file limit) grew the agent
    process by 629 MB before the 10 MB limit refused it. Now the walk stops at the limit."""
    root, base = repo
    before = snapshot(root)
    if shape == "300 files of 1.9 MB":
        for i in range(300):
            sparse(root / "data" / f"blob{i:03}.bin", 1_900_000)
    elif shape == "one file of 500 MB":
        sparse(root / "data" / "huge.bin", 500 * MiB)
    else:
        sparse(root / "src" / "app.py", 500 * MiB)
    with peak_growth() as growth, pytest.raises(ChangeRefused) as refused:
        extract(root, SHA, base, before=before)
    print(f"{shape}: refused ({refused.value}); the walker's peak resident memory grew by {growth.grew / MiB:.1f} MiB")
    assert "the limit is" in str(refused.value) or "the limit per file" in str(refused.value)
    assert growth.grew < 64 * MiB  # the limit is 10 MB; the data 500 MB


def test_a_2000_deep_tree_is_refused_and_then_removed(repo: tuple[Path, dict[str, TreeEntry]]) -> None:
    """A 1,200-deep tree raised RecursionError and left a checkout that could not be deleted."""
    root, base = repo
    make_deep_tree(root, 2000)
    (root / "d" / "d").chmod(0o000)  # odd modes on the way down
    (root / "d").chmod(0o500)
    try:
        with peak_growth() as growth, pytest.raises(ChangeRefused, match="more than 128 directories deep") as refused:
            extract(root, SHA, base)
        print(f"refused: {refused.value}; peak memory grew by {growth.grew / MiB:.1f} MiB")
        assert growth.grew < 32 * MiB
    finally:
        remove_tree(root)  # pytest's own clean-up recurses: it could not
    assert not root.exists()


def test_the_deepest_tree_allowed_is_extracted(repo: tuple[Path, dict[str, TreeEntry]]) -> None:
    root, base = repo
    make_deep_tree(root, changes.MAX_DEPTH - 1)
    [change] = extract(root, SHA, base).files
    assert change.path.count("/") == changes.MAX_DEPTH - 1 and change.content == b"deep\n"
    remove_tree(root)


def test_a_checkout_with_too_many_new_entries_is_refused(
        repo: tuple[Path, dict[str, TreeEntry]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Ignored output counts too: the walk itself must not be made to hold millions of paths."""
    root, base = repo
    monkeypatch.setattr(changes, "MAX_NEW_ENTRIES", 50)
    write(root, {".gitignore": "build/\n", **{f"build/out{i}.o": "x" for i in range(30)}})
    assert extract(root, SHA, base).paths == [".gitignore"]
    write(root, {f"build/more{i}.o": "x" for i in range(30)})
    with pytest.raises(ChangeRefused, match="holds more than"):
        extract(root, SHA, base)


def test_files_left_out_are_never_read_and_never_counted(
        repo: tuple[Path, dict[str, TreeEntry]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Ignored output over the change's limits is left out without a byte of it read."""
    root, base = repo
    write(root, {".gitignore": "build/\n"})
    for i in range(20):
        sparse(root / "build" / f"artifact{i}.bin", 1_900_000)  # 38 MB, over the 10 MB limit
    opened = []
    real = Path.open

    def open_(self: Path, *args: object, **kwargs: object) -> object:
        opened.append(self.name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_)
    result = extract(root, SHA, base)
    assert result.paths == [".gitignore"] and not [name for name in opened if name.startswith("artifact")]
    assert len([p for p in result.left_out if p.startswith("build/")]) == 20


def test_a_long_list_of_left_out_paths_is_cut_short(
        repo: tuple[Path, dict[str, TreeEntry]], monkeypatch: pytest.MonkeyPatch) -> None:
    root, base = repo
    monkeypatch.setattr(changes, "MAX_LISTED_LEFT_OUT", 5)
    write(root, {".gitignore": "*.log\n", **{f"logs/{i}.log": "x" for i in range(12)}})
    left_out = extract(root, SHA, base).left_out
    assert len(left_out) == 6 and left_out["..."] == "7 more paths left out"


def test_a_path_too_long_to_name_is_refused(repo: tuple[Path, dict[str, TreeEntry]]) -> None:
    root, base = repo
    make_deep_tree(root, 20, name="n" * 200)
    try:
        with pytest.raises(ChangeRefused, match="is a path over 3000 bytes"):
            extract(root, SHA, base)
    finally:
        remove_tree(root)
    assert not root.exists()
