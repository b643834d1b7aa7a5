"""The platform's own proof that a change fixes the bug, derived from the change itself.

The agent's word is not evidence. From the checked ChangeSet the platform:
1. lays the whole change on a fresh checkout of the base commit (a tree the agent never saw)
   and asks the repository's test runner which changed files hold tests;
2. RED: only the test side of the change (the fix set back to the base code): the new tests
   must FAIL, by a failed assertion or an error raised by the code under test, read from the
   runner's report; an import or collection error of a test file is not RED;
3. GREEN: the whole change: the tests that went red must now pass;
4. the repository's whole suite must pass.
Every run is in the sandbox, in the repository's environment (rebuilt first when the change
touches its dependency files), with `PYTHONDONTWRITEBYTECODE=1`: no stale bytecode between
RED and GREEN. The commands are the platform's, built from the test files and the runner;
the agent's own test command is shown as advice at most.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, Field

from fixfleet.workspace.changes import ChangeSet, apply_files
from fixfleet.workspace.environments import Environment, EnvironmentBuilder, Network, SetupFailed, network_access
from fixfleet.workspace.mirrors import Checkout, FileContent, WorkspaceManager
from fixfleet.workspace.repo_config import CONFIG_FILE, SPEC_FILES, Timeouts
from fixfleet.workspace.runners import (HELPERS_DIR, HELPERS_MOUNT, Collected, TestReport, green_verdict, make_runner,
                                        red_verdict)
from fixfleet.workspace.sandbox import RunResult, Sandbox

OUT = "/fixfleet-out"
TEST_SUPPORT_DIRS = {"tests", "test", "testing", "spec", "specs", "__tests__", "fixtures"}
TEST_SUPPORT_NAMES = {"conftest.py"}
OUTPUT_TAIL = 3000


class CommandRun(BaseModel):
    command: str
    exit_code: int
    seconds: float
    output_tail: str
    tests: dict[str, str] = Field(default_factory=dict)  # test id -> outcome, when the runner reported
    timed_out: bool = False  # killed at the repository's time limit (`timeouts` in .fixfleet.yml)


class Evidence(BaseModel):
    test_files: list[str]
    fix_files: list[str]
    red: CommandRun
    green: CommandRun
    suite: CommandRun
    red_to_green: list[str]  # the tests that failed without the fix and pass with it
    runner: str
    setup: str  # how the environment was made, and why
    environment: str  # its hash
    left_out: dict[str, str] = Field(default_factory=dict)  # files of the agent's tree that are not the change
    agent_test_command: str | None = None  # advice from the agent; never what ran
    sandboxed: bool = True


class EvidenceError(RuntimeError):
    """The change does not prove itself; nothing may be pushed. `evidence` holds what ran."""

    def __init__(self, message: str, evidence: dict | None = None) -> None:
        super().__init__(message)
        self.evidence = evidence or {}


class Verifier:
    def __init__(self, workspaces: WorkspaceManager, environments: EnvironmentBuilder, sandbox: Sandbox) -> None:
        self.workspaces, self.environments, self.sandbox = workspaces, environments, sandbox

    async def verify(self, url: str, change: ChangeSet, *, name: str, agent_test_command: str | None = None) -> Evidence:
        if CONFIG_FILE in change.paths:  # its suite_command or test_runner would decide what proves the change
            raise EvidenceError(f"the change edits {CONFIG_FILE}: how the repository is set up and tested is "
                                "not the agent's to change")
        env = await self._environment(url, change)
        checkout = await self.workspaces.checkout(url, change.base_sha, f"verify-{name}")
        out = Path(tempfile.mkdtemp(prefix="ff-out-"))
        try:
            self.environments.prepare(env, checkout)
            apply_files(checkout.path, change.everything())
            async with network_access(env.plan.test_domains) as network:
                evidence = await self._prove(url, change, _Runs(self, env, checkout, out, network))
            return evidence.model_copy(update={"agent_test_command": agent_test_command})
        finally:
            shutil.rmtree(out, ignore_errors=True)
            await self.workspaces.discard(checkout)

    async def rerun_suite(self, url: str, sha: str, *, name: str) -> CommandRun:
        """The repository's whole suite on commit `sha` (a pushed branch), in the sandbox: what
        `rerun-tests` reports."""
        env = await self.environments.ensure(url, sha)
        checkout = await self.workspaces.checkout(url, sha, f"rerun-{name}")
        out = Path(tempfile.mkdtemp(prefix="ff-out-"))
        try:
            self.environments.prepare(env, checkout)
            async with network_access(env.plan.test_domains) as network:
                return await _Runs(self, env, checkout, out, network).suite()
        finally:
            shutil.rmtree(out, ignore_errors=True)
            await self.workspaces.discard(checkout)

    async def _prove(self, url: str, change: ChangeSet, run: _Runs) -> Evidence:
        """Split the change with the runner, then RED, GREEN and the suite; raises EvidenceError."""
        tests, support = await run.split(change)
        fix = [p for p in change.paths if p not in tests and p not in support]
        if not tests:
            raise EvidenceError("the change adds no test: a fix must come with a test the repository's "
                                f"runner ({run.env.plan.test_runner}) collects and that fails without the fix"
                                + _uncollectable(run.collection_errors))
        if not fix:
            raise EvidenceError("the change touches only tests: there is no fix to prove")
        apply_files(run.checkout.path, await self._base_contents(url, change, fix))
        red, red_report = await run.tests(tests)
        apply_files(run.checkout.path, change.subset(fix))
        green, green_report = await run.tests(tests)
        suite = await run.suite()
        evidence = Evidence(test_files=sorted(tests + support), fix_files=fix, red=red, green=green, suite=suite,
                            red_to_green=[], runner=run.env.plan.test_runner, setup=run.env.plan.describe(),
                            environment=run.env.hash, left_out=change.left_out, sandboxed=self.sandbox.enabled)
        if hung := _timed_out(evidence, run.timeouts):
            raise EvidenceError(hung, evidence.model_dump())
        red_check = red_verdict(red_report, tests)
        if not red_check.ok:
            raise EvidenceError(f"RED check failed: {red_check.reason}", evidence.model_dump())
        green_check = green_verdict(green_report, red_check.test_ids)
        if not green_check.ok:
            raise EvidenceError(f"GREEN check failed: {green_check.reason}", evidence.model_dump())
        evidence.red_to_green = red_check.test_ids
        if suite.exit_code != 0:
            raise EvidenceError("the full test suite fails with the change", evidence.model_dump())
        return evidence

    async def _environment(self, url: str, change: ChangeSet) -> Environment:
        """The environment with the change's dependency files; one they break refuses the change
        (the base environment was built before the agent ran: a failure now is the change's)."""
        spec_changes = {p: c for p, c in change.everything().items() if p in SPEC_FILES}
        try:
            return await self.environments.ensure(url, change.base_sha, overlay=spec_changes)
        except SetupFailed as error:
            if not spec_changes:
                raise
            files = ", ".join(sorted(spec_changes))
            raise EvidenceError(f"the environment cannot be set up with the change's {files}: {error.message}",
                                {"setup_log_tail": error.log_tail}) from error

    async def _base_contents(self, url: str, change: ChangeSet, fix: list[str]) -> dict[str, FileContent]:
        """The fix files as they are at the base commit (absent ones: deleted)."""
        tree = await self.workspaces.list_tree(url, change.base_sha)
        contents = await self.workspaces.read_files(url, change.base_sha, [p for p in fix if p in tree])
        return {p: FileContent(content=contents.get(p), mode=tree[p].mode if p in tree else "100644") for p in fix}


class _Runs:
    """The runner's commands for one verification, each in its own sandbox run."""

    def __init__(self, verifier: Verifier, env: Environment, checkout: Checkout, out: Path, network: Network) -> None:
        self.verifier, self.env, self.checkout, self.out, self.network = verifier, env, checkout, out, network
        self.runner = make_runner(env.plan.test_runner, test_script=env.plan.test_script)
        self.timeouts = env.plan.timeouts
        self.collection_errors: dict[str, str] = {}  # changed files the runner could not load, and why

    async def split(self, change: ChangeSet) -> tuple[list[str], list[str]]:
        """(test files the runner collects, test-support files) among the changed files."""
        candidates = [p for p in change.paths if _code_file(p) and _present(change, p)]
        collected = await self._collect(candidates) if candidates else Collected()
        tests = [p for p in candidates if collected.tests_by_file.get(p)]
        self.collection_errors = {p: e for p, e in collected.errors.items() if p not in tests}
        support = [p for p in change.paths if p not in tests and _is_test_support(p)]
        return tests, support

    async def _collect(self, files: list[str]) -> Collected:
        argv = self.runner.collect_argv(files, OUT)
        if not argv:  # a runner that decides from the file names alone
            return self.runner.parse_collected(files, 0, "", self._fresh_out())
        result = await self._run(argv, self.timeouts.test_s)
        return self.runner.parse_collected(files, result.exit_code, result.output_tail, self.out)

    async def tests(self, files: list[str]) -> tuple[CommandRun, TestReport]:
        argv = self.runner.run_argv(files, OUT)
        result = await self._run(argv, self.timeouts.test_s)
        report = self.runner.parse_run(argv, result.exit_code, result.output_tail, self.out)
        return _command_run(argv, result, report), report

    async def suite(self) -> CommandRun:
        command = self.env.plan.suite_command
        argv = ["/bin/bash", "-c", command] if command else self.runner.suite_argv(OUT)
        result = await self._run(argv, self.timeouts.suite_s)
        return _command_run([command] if command else argv, result, None)

    async def _run(self, argv: list[str], timeout_s: float) -> RunResult:
        self._fresh_out()
        spec = self.network.apply(self.verifier.environments.spec(self.env, self.checkout))
        spec.writable[OUT] = self.out
        spec.read_only[HELPERS_MOUNT] = HELPERS_DIR
        return await self.verifier.sandbox.run(spec, argv, timeout_s=timeout_s)

    def _fresh_out(self) -> Path:
        for entry in self.out.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        return self.out


def _command_run(argv: list[str], result: RunResult, report: TestReport | None) -> CommandRun:
    tests = {case.id: case.outcome for case in report.tests} if report else {}
    return CommandRun(command=" ".join(argv), exit_code=result.exit_code, seconds=result.seconds,
                      output_tail=result.output_tail[-OUTPUT_TAIL:], tests=tests, timed_out=result.timed_out)


def _timed_out(evidence: Evidence, limits: Timeouts) -> str | None:
    """Say so when a run was killed at its time limit: "the suite fails" would hide a hang."""
    for what, run, limit in (("the new tests without the fix (RED)", evidence.red, limits.test_s),
                             ("the new tests with the fix (GREEN)", evidence.green, limits.test_s),
                             ("the full test suite", evidence.suite, limits.suite_s)):
        if run.timed_out:
            return (f"{what} did not finish within {limit:g}s (a test that hangs or waits for something?); "
                    "the run was killed")
    return None


def _uncollectable(errors: dict[str, str]) -> str:
    """A test file that fails to load even with the fix is no test: say why, not just "none"."""
    return "".join(f"; {path} cannot be collected: {reason}" for path, reason in sorted(errors.items()))


def _code_file(path: str) -> bool:
    return PurePosixPath(path).suffix in {".py", ".js", ".mjs", ".cjs", ".ts", ".mts", ".cts", ".jsx", ".tsx"}


def _present(change: ChangeSet, path: str) -> bool:
    return any(c.path == path and c.content is not None for c in change.files)


def _is_test_support(path: str) -> bool:
    parts = PurePosixPath(path).parts
    return parts[-1] in TEST_SUPPORT_NAMES or any(part in TEST_SUPPORT_DIRS for part in parts[:-1])

