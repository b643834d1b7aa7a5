"""Metadata-only real-bug fixtures: their code comes from an upstream snapshot, or they say how to get it.

The "snapshot" here is a real bare git repository made in the test (an upstream with a buggy
commit and a fix commit that changes a test file, adds a test fixture file, changes the code
and the changelog), laid out as the fetch tool lays them out (`<owner>+<name>/repo`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.upstream_bugs import Bug, SnapshotMissing, find_git_dir, load_all, load_bug, with_contents

ROOT = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.name=upstream", "-c", "user.email=upstream@example.invalid", "-c", "init.defaultBranch=main"]


def _commit(tree: Path, files: dict[str, str], message: str) -> str:
    for path, text in files.items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_text(text)
    subprocess.run([*GIT, "add", "-A"], cwd=tree, check=True)
    subprocess.run([*GIT, "commit", "-qm", message], cwd=tree, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def upstream(tmp_path: Path) -> tuple[Path, str, str]:
    """A bare snapshot of acme/widgets under tmp/snapshots, nested as `acme+widgets/store/repo.git`."""
    work = tmp_path / "work"
    work.mkdir()
    subprocess.run([*GIT, "init", "-q"], cwd=work, check=True)
    buggy = _commit(work, {"widgets/size.py": "def size(n):\n    return n - 1\n",
                           "tests/test_size.py": "from widgets.size import size\n",
                           "CHANGES.md": "# changes\n"}, "buggy")
    fix = _commit(work, {"widgets/size.py": "def size(n):\n    return n\n",
                         "tests/test_size.py": "from widgets.size import size\n\n\ndef test_size():\n    assert size(3) == 3\n",
                         "tests/fixtures/three.txt": "3\n",
                         "CHANGES.md": "# changes\n- size is right\n"}, "fix size")
    snapshot = tmp_path / "snapshots" / "acme+widgets" / "store" / "repo.git"
    snapshot.parent.mkdir(parents=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(snapshot)], check=True)
    return tmp_path / "snapshots", buggy, fix


def _fixture(bugs_dir: Path, buggy: str, fix: str) -> Path:
    directory = bugs_dir / "widgets-1"
    directory.mkdir(parents=True)
    (directory / "bug.yaml").write_text(yaml.safe_dump({
        "name": "widgets-1", "upstream": "https://github.com/acme/widgets", "language": "python",
        "buggy_commit": buggy, "fix_commit": fix, "title": "size is off by one", "report": "size(3) == 2",
        "test_files": ["tests/test_size.py", "tests/fixtures/three.txt"], "fix_files": ["widgets/size.py"],
        "failing_tests": ["tests/test_size.py::test_size"], "test_command": "pytest", "suite_command": "pytest"}))
    return directory


def test_a_metadata_only_bug_is_materialised_from_its_snapshot(tmp_path: Path, upstream: tuple[Path, str, str]) -> None:
    snapshots, buggy, fix = upstream
    _fixture(tmp_path / "bugs", buggy, fix)
    [bug] = load_all(bugs_dir=tmp_path / "bugs", snapshots=snapshots)

    assert not bug.vendored and bug.available
    assert bug.git_dir == snapshots / "acme+widgets" / "store" / "repo.git"  # found below the owner+name folder

    red_tree = tmp_path / "red"
    bug.materialise(red_tree, "test")  # the buggy code with the upstream test: what RED runs
    assert (red_tree / "widgets/size.py").read_text() == "def size(n):\n    return n - 1\n"
    assert "def test_size" in (red_tree / "tests/test_size.py").read_text()
    assert (red_tree / "tests/fixtures/three.txt").read_text() == "3\n"  # a file the test change adds
    assert (red_tree / "CHANGES.md").read_text() == "# changes\n"  # not a listed file: left as it was
    assert not (red_tree / ".git").exists()

    with_contents(bug)  # what the scripted agent writes: exactly the upstream files after each change
    assert bug.tests_after == {"tests/test_size.py": (red_tree / "tests/test_size.py").read_text(),
                               "tests/fixtures/three.txt": "3\n"}
    assert bug.fix_after == {"widgets/size.py": "def size(n):\n    return n\n"}


def test_an_absent_snapshot_says_how_to_get_it(tmp_path: Path, upstream: tuple[Path, str, str]) -> None:
    _, buggy, fix = upstream
    directory = _fixture(tmp_path / "bugs", buggy, fix)
    empty = tmp_path / "nothing-fetched"
    empty.mkdir()

    bug = load_bug(directory, empty)

    assert not bug.available
    assert bug.missing_line.startswith("fetch github:acme/widgets")
    with pytest.raises(SnapshotMissing, match="fetch github:acme/widgets"):
        bug.materialise(tmp_path / "tree", "test")


def test_a_snapshot_without_the_fix_commit_is_not_taken(tmp_path: Path, upstream: tuple[Path, str, str]) -> None:
    snapshots, buggy, _ = upstream
    assert find_git_dir("https://github.com/acme/widgets", [buggy], snapshots) is not None
    assert find_git_dir("https://github.com/acme/widgets", [buggy, "0" * 40], snapshots) is None  # an older snapshot


def test_an_upstream_that_is_not_a_github_repository_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a GitHub repository URL"):
        find_git_dir("https://example.invalid/../../etc", [], tmp_path)


def test_the_bench_lists_a_bug_whose_snapshot_is_absent_with_the_line_that_gets_it(tmp_path: Path) -> None:
    """A committed metadata-only fixture (click-3578), on a machine without its snapshot."""
    assert not (ROOT / "tests/realbugs/click-3578/source.tar.gz").exists()
    env = {**os.environ, "REALBUGS_SNAPSHOTS": str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "bench.realbugs", "--only", "click-3578"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)

    assert done.returncode == 0, done.stderr
    missing, summary = (json.loads(line) for line in done.stdout.splitlines())
    assert missing == {"bug": "click-3578", "status": "SNAPSHOT_MISSING", "get": "fetch github:pallets/click",
                       "looked_in": str(tmp_path)}
    assert summary["bugs"] == 0 and summary["missing"] == 1


def test_every_committed_fixture_names_what_materialising_it_needs() -> None:
    """Vendored ones carry their code; metadata-only ones name commits and files to take from upstream."""
    bugs: list[Bug] = load_all()
    assert len(bugs) >= 12
    for bug in bugs:
        meta = bug.meta
        assert meta["test_files"] and meta["fix_files"] and meta["failing_tests"], bug.name
        assert not set(meta["test_files"]) & set(meta["fix_files"]), bug.name
        if bug.vendored:
            assert (bug.directory / "test.patch").is_file() and (bug.directory / "fix.patch").is_file()
        else:  # no upstream code committed: bug.yaml alone
            assert sorted(p.name for p in bug.directory.iterdir()) == ["bug.yaml"], bug.name
            assert len(meta["buggy_commit"]) == 40 and len(meta["fix_commit"]) == 40, bug.name
            assert meta["verified"]["red"] != 0 and meta["verified"]["green"] == 0, bug.name
