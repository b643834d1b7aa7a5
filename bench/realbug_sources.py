"""Where a real-bug fixture's code comes from: a vendored tarball, or a fetched upstream snapshot.

A fixture directory under tests/realbugs/ holds bug.yaml. Either it also holds `source.tar.gz`,
`test.patch` and `fix.patch` (vendored), or it holds only bug.yaml (metadata only) and its code
is materialised on this machine from a bare git snapshot of the upstream repository: the buggy
commit's tree (every file, checked out through a scratch index), and the upstream diff from the
buggy to the fix commit restricted to bug.yaml's test files, then to its fix files. Snapshots are
looked up under $REALBUGS_SNAPSHOTS (default /work/.mirror), in `<owner>+<name>/` at any depth up
to three, and must hold both commits.

Also a command for tests/realbugs/verify_fixture.sh (needs only PyYAML):
    python -m bench.realbug_sources tree <slug> <target-dir> [test] [fix]
    python -m bench.realbug_sources status
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

BUGS_DIR = Path(__file__).resolve().parents[1] / "tests" / "realbugs"
SNAPSHOTS_ENV = "REALBUGS_SNAPSHOTS"
DEFAULT_SNAPSHOTS = Path("/work/.mirror")
GITHUB_URL = re.compile(r"https://github\.com/(?P<repo>[A-Za-z0-9][A-Za-z0-9-]*/[A-Za-z0-9._-]+?)(?:\.git)?/?")


class SnapshotMissing(RuntimeError):
    """The upstream snapshot a metadata-only fixture needs is not on this machine."""


def snapshots_root() -> Path:
    return Path(os.environ.get(SNAPSHOTS_ENV) or DEFAULT_SNAPSHOTS)


def repository_of(upstream: str) -> str:
    """'https://github.com/owner/name' -> 'owner/name' (names as GitHub allows them, no '..')."""
    match = GITHUB_URL.fullmatch(upstream)
    if not match or ".." in match["repo"]:
        raise ValueError(f"upstream is not a GitHub repository URL: {upstream!r}")
    return match["repo"]


def fetch_line(upstream: str) -> str:
    return f"fetch github:{repository_of(upstream)}"


def _is_git_dir(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()


def find_git_dir(upstream: str, commits: list[str], root: Path | None = None) -> Path | None:
    """The bare (or non-bare) git directory of `upstream`'s snapshot that holds every commit."""
    owner, name = repository_of(upstream).split("/")
    base = (root or snapshots_root()) / f"{owner}+{name}"
    if not base.is_dir():
        return None
    candidates = [base] + sorted(p for depth in ("*", "*/*", "*/*/*") for p in base.glob(depth) if p.is_dir())
    for candidate in candidates:
        if _is_git_dir(candidate) and all(_has_commit(candidate, c) for c in commits):
            return candidate
    return None


def _has_commit(git_dir: Path, commit: str) -> bool:
    probe = subprocess.run(["git", "--git-dir", str(git_dir), "cat-file", "-e", f"{commit}^{{commit}}"],
                           capture_output=True, check=False)
    return probe.returncode == 0


def checkout_tree(git_dir: Path, commit: str, target: Path) -> None:
    """Every file of `commit` into `target`, through a scratch index: unlike `git archive` this
    keeps the files `.gitattributes` marks export-ignore and leaves export-subst text alone."""
    with tempfile.TemporaryDirectory(prefix="realbug-index-") as scratch:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(scratch) / "index")}
        for args in (["read-tree", commit], ["--work-tree", str(target), "checkout-index", "--all", "--force"]):
            done = subprocess.run(["git", "--git-dir", str(git_dir), *args], env=env, capture_output=True, text=True,
                                  check=False)
            if done.returncode:  # e.g. a blob the snapshot lacks (files of 4 MiB and more are left out)
                raise RuntimeError(f"cannot check out {commit[:12]} from {git_dir}: {done.stderr.strip()[-500:]}")


def _git(git_dir: Path, *args: str) -> bytes:
    return subprocess.run(["git", "--git-dir", str(git_dir), *args], capture_output=True, check=True).stdout


@dataclass
class Bug:
    """One real upstream bug: its metadata, where its code comes from, and the files after each patch."""

    name: str
    meta: dict[str, Any]
    directory: Path
    git_dir: Path | None = None  # the snapshot, for a metadata-only fixture that has one here
    tests_after: dict[str, str] = field(default_factory=dict)  # test files with the upstream test applied
    fix_after: dict[str, str] = field(default_factory=dict)  # code files with the upstream fix applied

    @property
    def language(self) -> str:
        return self.meta["language"]

    @property
    def vendored(self) -> bool:
        return (self.directory / "source.tar.gz").is_file()

    @property
    def available(self) -> bool:
        return self.vendored or self.git_dir is not None

    @property
    def missing_line(self) -> str:
        """What to do to get this bug's code, when it is not here."""
        return f"{fetch_line(self.meta['upstream'])}  (snapshot looked up under {snapshots_root()})"

    def extract(self, target: Path) -> None:
        """The buggy commit's tree into `target` (no .git)."""
        target.mkdir(parents=True, exist_ok=True)
        if self.vendored:
            with tarfile.open(self.directory / "source.tar.gz") as archive:
                archive.extractall(target, filter="data")
            return
        checkout_tree(self._snapshot(), self.meta["buggy_commit"], target)

    def patch(self, kind: str) -> bytes:
        """The upstream change to the test files (kind 'test') or to the fix files ('fix')."""
        if self.vendored:
            return (self.directory / f"{kind}.patch").read_bytes()
        paths = self.meta["test_files" if kind == "test" else "fix_files"]
        return _git(self._snapshot(), "diff", "--no-color", "--no-ext-diff", "--no-renames",
                    self.meta["buggy_commit"], self.meta["fix_commit"], "--", *paths)

    def materialise(self, target: Path, *kinds: str) -> None:
        """The buggy tree in `target`, with the named patches ('test', 'fix') applied in order."""
        self.extract(target)
        for kind in kinds:
            apply_patch(target, self.patch(kind), f"{self.name}: {kind} patch")

    def _snapshot(self) -> Path:
        if self.git_dir is None:
            raise SnapshotMissing(f"{self.name}: no snapshot of {self.meta['upstream']}; {self.missing_line}")
        return self.git_dir


def apply_patch(tree: Path, patch: bytes, what: str) -> None:
    if not patch.strip():
        raise ValueError(f"{what} is empty: check bug.yaml's commits and file lists")
    done = subprocess.run(["patch", "-s", "-p1", "--no-backup-if-mismatch"], cwd=tree, input=patch,
                          capture_output=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{what} does not apply: {done.stdout.decode()[-500:]}{done.stderr.decode()[-500:]}")


def load_bug(directory: Path, snapshots: Path | None = None) -> Bug:
    meta = yaml.safe_load((directory / "bug.yaml").read_text())
    bug = Bug(meta["name"], meta, directory)
    if not bug.vendored:
        bug.git_dir = find_git_dir(meta["upstream"], [meta["buggy_commit"], meta["fix_commit"]], snapshots)
    return bug


def load_all(only: list[str] | None = None, bugs_dir: Path = BUGS_DIR, snapshots: Path | None = None) -> list[Bug]:
    """Every fixture (or those named), available or not, in name order."""
    directories = sorted(p for p in bugs_dir.iterdir() if (p / "bug.yaml").is_file())
    bugs = [load_bug(d, snapshots) for d in directories]
    unknown = set(only or ()) - {b.name for b in bugs}
    if unknown:
        raise SystemExit(f"no such real bug: {', '.join(sorted(unknown))} (known: {', '.join(b.name for b in bugs)})")
    return [b for b in bugs if not only or b.name in only]


def with_contents(bug: Bug) -> Bug:
    """Apply the patches once in a scratch tree and keep the files they touch."""
    with tempfile.TemporaryDirectory(prefix="realbug-") as scratch:
        tree = Path(scratch)
        bug.materialise(tree, "test")
        bug.tests_after = {p: (tree / p).read_text() for p in bug.meta["test_files"]}
        apply_patch(tree, bug.patch("fix"), f"{bug.name}: fix patch")
        bug.fix_after = {p: (tree / p).read_text() for p in bug.meta["fix_files"]}
    return bug


def main(argv: list[str]) -> int:
    if argv[:1] == ["tree"] and len(argv) >= 3:
        bug = load_bug(BUGS_DIR / argv[1])
        if not bug.available:
            print(f"{bug.name}: snapshot missing; get it with: {bug.missing_line}", file=sys.stderr)
            return 3
        bug.materialise(Path(argv[2]), *argv[3:])
        return 0
    if argv == ["status"]:
        for bug in load_all():
            where = "vendored" if bug.vendored else (str(bug.git_dir) if bug.git_dir else f"MISSING: {bug.missing_line}")
            print(f"{bug.name:28} {where}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
