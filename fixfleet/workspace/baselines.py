"""The base commit's own test results: what a change is judged against.

A real suite may already fail before any change (a dependency changed behaviour since the
commit, a test that needs a service) or have tests that flip. So the platform runs the whole
suite once on the base commit, in the repository's environment in the sandbox, and keeps the
outcome of every test: a change is then blamed only for what it breaks. A base run is keyed by
what decides its outcome: the repository's files at that commit (PLAN.md aside: the plan commit
the executor starts from has the same code as the commit the planner read), the environment and
the command. It is kept on the node, shared by every agent there, and computed once (a lock per
key): the planner's check warms it for the executor.

    <root>/<repo>/<key>.json      one Baseline
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from pydantic import BaseModel, Field

from fixfleet.workspace.locks import file_lock
from fixfleet.workspace.mirrors import TreeEntry, repo_key
from fixfleet.workspace.scope import PLAN_FILE

KEEP_PER_REPOSITORY = 50  # newest base runs kept per repository


class Baseline(BaseModel):
    """The suite's results on one base commit."""

    key: str
    sha: str
    environment: str
    command: str
    tests: dict[str, str] = Field(default_factory=dict)  # id -> outcome, after reruns of the failures
    flaky: list[str] = Field(default_factory=list)  # failed, then passed when run again
    exit_code: int = 0
    complete: bool = True  # the runner reported every test (else the exit code is all there is)
    seconds: float = 0.0
    ran_at: float = 0.0

    def failing(self) -> list[str]:
        return sorted(i for i, outcome in self.tests.items() if outcome in ("failed", "error"))

    def summary(self, *, reused: bool) -> dict[str, object]:
        """What the evidence says about the base run it compared against."""
        return {"sha": self.sha, "environment": self.environment, "command": self.command, "tests": len(self.tests),
                "failing": self.failing(), "flaky": self.flaky, "exit_code": self.exit_code,
                "seconds": self.seconds, "ran_at": self.ran_at, "reused": reused}


def baseline_key(tree: Mapping[str, TreeEntry], environment: str, command: str) -> str:
    digest = hashlib.sha256(f"{environment}\n{command}\n".encode())
    for path in sorted(tree):
        if path != PLAN_FILE:
            digest.update(f"{path}\0{tree[path].mode}\0{tree[path].oid}\n".encode())
    return digest.hexdigest()[:24]


class BaselineStore:
    """Base runs on this node's disk, computed at most once per key at a time."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, url: str, key: str) -> Path:
        return self.root / repo_key(url) / f"{key}.json"

    def get(self, url: str, key: str) -> Baseline | None:
        try:
            return Baseline.model_validate_json(self._path(url, key).read_bytes())
        except (OSError, ValueError):
            return None

    async def get_or_run(self, url: str, key: str,
                         run: Callable[[], Awaitable[Baseline]]) -> tuple[Baseline, bool]:
        """(the base run, whether it was found rather than run now)."""
        if (found := self.get(url, key)) is not None:
            return found, True
        path = self._path(url, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        async with file_lock(path.with_suffix(".lock")):
            if (found := self.get(url, key)) is not None:  # another agent ran it meanwhile
                return found, True
            baseline = await run()
            self._save(path, baseline)
        return baseline, False

    def _save(self, path: Path, baseline: Baseline) -> None:
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps(baseline.model_dump()))
        os.replace(partial, path)
        self._prune(path.parent)

    @staticmethod
    def _prune(directory: Path) -> None:
        runs = sorted(directory.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for stale in runs[KEEP_PER_REPOSITORY:]:
            stale.unlink(missing_ok=True)
            stale.with_suffix(".lock").unlink(missing_ok=True)


def now() -> float:
    return round(time.time(), 3)
