"""Throwaway git repositories for tests: a bare remote standing for the forge, a seed clone to
push commits from, and a git config of the test's own (no user config leaks in).

The fixtures `isolated_git` (a test's own git config) and `upstream` (a forge repository in the
test's tmp_path) serve a module that imports them and marks
`pytestmark = pytest.mark.usefixtures("isolated_git")`."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


def git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)
    return done.stdout.strip()


@dataclass
class Upstream:
    bare: Path
    seed: Path

    @property
    def url(self) -> str:
        return self.bare.as_uri()

    def commit(self, files: dict[str, str | bytes | None], branch: str = "main", message: str = "change") -> str:
        """Commit `files` (None: delete) on `branch` (new branches start from main) and push it."""
        git("fetch", "-q", "origin", cwd=self.seed)
        start = branch if self.has(branch) else "main" if self.has("main") else None
        if start:  # the very first commit needs no checkout
            git("checkout", "-q", "-B", branch, f"origin/{start}", cwd=self.seed)
        for name, content in files.items():
            path = self.seed / name
            if content is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
        git("add", "-A", cwd=self.seed)
        git("commit", "-q", "-m", message, cwd=self.seed)
        git("push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=self.seed)
        git("fetch", "-q", "origin", cwd=self.seed)
        return self.sha(branch)

    def has(self, branch: str) -> bool:
        return bool(git("for-each-ref", "--format=%(refname)", f"refs/heads/{branch}", cwd=self.bare))

    def sha(self, ref: str) -> str:
        return git("rev-parse", ref, cwd=self.bare)


def make_upstream(directory: Path, files: dict[str, str | bytes | None] | None = None) -> Upstream:
    bare, seed = directory / "upstream.git", directory / "seed"
    git("init", "-q", "--bare", "-b", "main", str(bare))
    git("clone", "-q", str(bare), str(seed))
    git("symbolic-ref", "HEAD", "refs/heads/main", cwd=seed)
    upstream = Upstream(bare, seed)
    upstream.commit(files or {"README.md": "hello\n", "src/app.py": "print('v1')\n"}, message="initial")
    return upstream


@contextmanager
def own_git_config(directory: Path) -> Iterator[None]:
    """An empty global config and no system one; commits get an identity."""
    config = directory / "gitconfig"
    config.write_text("")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GIT_CONFIG_GLOBAL", str(config))
        patch.setenv("GIT_CONFIG_NOSYSTEM", "1")
        for role in ("AUTHOR", "COMMITTER"):
            patch.setenv(f"GIT_{role}_NAME", "Test")
            patch.setenv(f"GIT_{role}_EMAIL", "test@example.com")
        yield


@pytest.fixture
def isolated_git(tmp_path: Path) -> Iterator[None]:
    """The test's own git config, in its tmp_path."""
    with own_git_config(tmp_path):
        yield


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    """A forge repository (README.md, src/app.py on main) in the test's tmp_path."""
    return make_upstream(tmp_path / "forge")
