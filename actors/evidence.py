"""The platform's own proof that a change fixes the bug, checked after the executor's session.

The agent's word is not enough: the tests it added must FAIL on the base code (RED), PASS
with the change (GREEN), and the repository's whole suite must pass. Commands run in the
worktree with a clean environment; exit codes and output tails are the evidence.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from pydantic import BaseModel

OUTPUT_TAIL = 2000
BOT_IDENTITY = ("-c", "user.name=fixfleet", "-c", "user.email=fixfleet@users.noreply.local")  # platform commits
SAFE_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV")


class CommandRun(BaseModel):
    command: str
    exit_code: int
    seconds: float
    output_tail: str


class Evidence(BaseModel):
    test_files: list[str]
    fix_files: list[str]
    red: CommandRun
    green: CommandRun
    suite: CommandRun


class EvidenceError(RuntimeError):
    """The change does not prove itself; nothing may be pushed. `evidence` holds what ran."""

    def __init__(self, message: str, evidence: dict | None = None) -> None:
        super().__init__(message)
        self.evidence = evidence or {}


def is_test_file(path: str) -> bool:
    name = Path(path).name
    return path.startswith(("tests/", "test/")) or "/tests/" in path or name.startswith("test_") or name.endswith("_test.py")


async def run_command(command: str, cwd: Path, timeout_s: float = 600) -> CommandRun:
    """Run a shell command in the worktree without any platform secret in its environment."""
    env = {k: v for k, v in os.environ.items() if k in SAFE_ENV} | {"HOME": str(cwd), "CI": "true"}
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", command, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout_s)
        code = process.returncode or 0
    except asyncio.TimeoutError:
        os.killpg(process.pid, 9)
        await process.wait()
        output, code = f"timed out after {timeout_s:.0f}s".encode(), 124
    text = output.decode("utf-8", "replace")
    return CommandRun(command=command, exit_code=code, seconds=round(time.monotonic() - started, 2), output_tail=text[-OUTPUT_TAIL:])


async def git(cwd: Path, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "git", *args, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"git {' '.join(args[:2])} failed: {err.decode()[-500:]}")
    return out.decode()


async def changed_files(worktree: Path) -> list[str]:
    """Files the session changed or added, relative to the worktree (PLAN.md excluded)."""
    status = await git(worktree, "status", "--porcelain", "--untracked-files=all", "-z")
    files = []
    for entry in filter(None, status.split("\0")):
        path = entry[3:]
        if path != "PLAN.md" and not path.startswith((".pytest_cache/", ".claude/")) and "__pycache__" not in path:
            files.append(path)
    return sorted(files)


async def verify(worktree: Path, *, test_command: str, suite_command: str, timeout_s: float = 600) -> Evidence:
    """RED on the base code with only the new tests, GREEN with the fix, then the whole suite."""
    files = await changed_files(worktree)
    tests = [f for f in files if is_test_file(f)]
    fix = [f for f in files if f not in tests]
    if not tests:
        raise EvidenceError("the change adds no test: a fix must come with a test that fails without it")
    if not fix:
        raise EvidenceError("the change touches only tests: there is no fix to prove")
    red = await _run_without(worktree, fix, test_command, timeout_s)
    green = await run_command(test_command, worktree, timeout_s)
    suite = await run_command(suite_command, worktree, timeout_s)
    evidence = Evidence(test_files=tests, fix_files=fix, red=red, green=green, suite=suite)
    if red.exit_code == 0:
        raise EvidenceError("RED check failed: the new tests already pass without the fix", evidence.model_dump())
    if green.exit_code != 0:
        raise EvidenceError("GREEN check failed: the new tests fail with the fix", evidence.model_dump())
    if suite.exit_code != 0:
        raise EvidenceError("the full test suite fails with the change", evidence.model_dump())
    return evidence


async def _run_without(worktree: Path, fix_files: list[str], command: str, timeout_s: float) -> CommandRun:
    """Run `command` with the fix files set back to the base commit, then restore them."""
    tracked = [f for f in fix_files if await _is_tracked(worktree, f)]
    backup = {f: (worktree / f).read_bytes() for f in fix_files if (worktree / f).exists()}
    try:
        if tracked:
            await git(worktree, "checkout", "HEAD", "--", *tracked)
        for f in fix_files:
            if f not in tracked:
                (worktree / f).unlink(missing_ok=True)  # a new non-test file belongs to the fix
        return await run_command(command, worktree, timeout_s)
    finally:
        for f, content in backup.items():
            (worktree / f).write_bytes(content)


async def _is_tracked(worktree: Path, path: str) -> bool:
    return bool((await git(worktree, "ls-files", "--", path)).strip())


async def commit_change(worktree: Path, evidence: Evidence, *, task_key: str, summary: str) -> list[str]:
    """Two conventional commits: the tests, then the fix. Returns their shas."""
    subject = summary.strip().splitlines()[0][:60] if summary.strip() else "fix the reported bug"
    shas = []
    for files, message in (
        (evidence.test_files, f"test: reproduce {task_key}"),
        (evidence.fix_files, f"fix: {subject} ({task_key})"),
    ):
        await git(worktree, "add", "--", *files)
        await git(worktree, *BOT_IDENTITY, "commit", "--no-verify", "-m", message, "--", *files)
        shas.append((await git(worktree, "rev-parse", "HEAD")).strip())
    return shas
