"""The platform's own proof that a change fixes the bug, derived from the change itself.

The agent's word is not evidence, and neither is anything the repository's code writes. From
the checked ChangeSet and the approved plan the platform:
0. checks the change against the approved scope (fixfleet/workspace/scope.py): PLAN.md and
   test infrastructure the plan does not name are refused before anything runs;
1. makes pristine trees of the base commit (trees the agent never saw, that no run writes):
   GREEN = the whole change, RED = only its test side; every run gets a FRESH COPY of one, so
   nothing a run writes (a planted file, a rewritten test) reaches the next;
2. asks the repository's runner which changed files hold tests (collection, on a copy of GREEN);
3. RED: the new tests on the base code must FAIL in their own body (not by an import error, not
   in a fixture); GREEN: the same tests with the fix must pass; then the whole suite, without
   the test files the change adds (a new module could patch the code back at import);
4. judges them against the base commit's own results (fixfleet/workspace/baselines.py), run
   once per base and environment when needed: a test that already failed there is listed, not
   blamed (`preexisting_failures`); a test that flips when run again (`flaky`) neither proves
   nor blocks; the suite may not fail a test that passed there (`new_failures`);
5. cross-checks the RED->GREEN tests by a path the change's test configuration cannot reach:
   with the base's configuration when the plan allowed the change to edit it (and in the base's
   environment too when it edits dependency files: their setup is the change's code), else
   (Python) by calling the test functions directly, without the runner.
Every run is in the sandbox, in the repository's environment (a change to its dependency files
gets an environment of its own), with `PYTHONDONTWRITEBYTECODE=1`, and its results arrive on the
report channel (fixfleet/workspace/sandbox.py) from a reporter the platform injects: nothing is
read from a file the tests could rewrite, and a channel written by anything else refuses the
change. The commands are the platform's, built from the test files and the runner; the agent's
own test command is shown as advice at most.
"""

from __future__ import annotations

import ast
import asyncio
import time
import uuid
from collections.abc import Collection
from contextlib import AsyncExitStack
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, Field

from fixfleet.workspace.baselines import Baseline, BaselineStore, baseline_key
from fixfleet.workspace.changes import ChangeSet, apply_files
from fixfleet.workspace.environments import Environment, EnvironmentBuilder, Network, SetupFailed, network_access
from fixfleet.workspace.mirrors import Checkout, FileContent, TreeEntry, WorkspaceManager, remove_tree
from fixfleet.workspace.repo_config import SPEC_FILES, Timeouts
from fixfleet.workspace.runners import (HELPERS_DIR, HELPERS_MOUNT, Collected, ForgedReport, TestCase, TestReport,
                                        make_runner)
from fixfleet.workspace.runners.reports import json_document
from fixfleet.workspace.runners.verdicts import (FAILING, failing, failing_in_body, green_verdict, new_failures,
                                                 preexisting_failures, red_verdict)
from fixfleet.workspace.sandbox import RunResult, Sandbox
from fixfleet.workspace.scope import PlanScope, ScopeRefused, ScopeReport, check_scope

TEST_SUPPORT_DIRS = {"tests", "test", "testing", "spec", "specs", "__tests__", "fixtures"}
TEST_SUPPORT_NAMES = {"conftest.py"}
OUTPUT_TAIL = 3000
PYTHON_RUNNERS = ("pytest", "unittest")
Stage = Literal["scope", "setup", "collect", "red", "green", "suite", "cross_check", "report", "timeout"]


class CommandRun(BaseModel):
    command: str
    exit_code: int
    seconds: float
    output_tail: str
    tests: dict[str, str] = Field(default_factory=dict)  # test id -> outcome (for the suite: those not passing)
    counts: dict[str, int] = Field(default_factory=dict)  # outcome -> how many tests
    timed_out: bool = False  # killed at the repository's time limit (`timeouts` in .fixfleet.yml)


class CrossCheck(BaseModel):
    """The RED->GREEN tests run again by a path the change's test configuration cannot reach."""

    method: str
    agreed: bool = True
    checked: list[str] = Field(default_factory=list)
    unchecked: dict[str, str] = Field(default_factory=dict)  # test id -> why it could not be checked this way
    detail: str = ""


class Evidence(BaseModel):
    test_files: list[str]
    fix_files: list[str]
    red: CommandRun
    green: CommandRun
    suite: CommandRun
    fail_to_pass: list[str]  # failed on the base code, pass with the fix: the proof
    new_failures: list[str] = Field(default_factory=list)  # passed on the base commit, fail with the change
    preexisting_failures: list[str] = Field(default_factory=list)  # failed on the base commit already: not blamed
    flaky: list[str] = Field(default_factory=list)  # flipped when run again: prove and block nothing
    baseline: dict[str, object] | None = None  # the base run compared against (Baseline.summary)
    cross_check: CrossCheck | None = None
    scope: ScopeReport = Field(default_factory=ScopeReport)
    runner: str
    setup: str  # how the environment was made, and why
    environment: str  # its hash
    left_out: dict[str, str] = Field(default_factory=dict)  # files of the agent's tree that are not the change
    agent_test_command: str | None = None  # advice from the agent; never what ran
    sandboxed: bool = True
    test_seconds: float = 0.0  # inside the repository's own test runs, all of them (the platform's time is the rest)


class EvidenceError(RuntimeError):
    """The change does not prove itself; nothing may be pushed. `stage` says where it stopped,
    `evidence` holds what ran (what the agent and the reviewer are shown)."""

    def __init__(self, message: str, evidence: dict | None = None, *, stage: Stage = "red") -> None:
        super().__init__(message)
        self.evidence = evidence or {}
        self.stage = stage


class Verifier:
    def __init__(self, workspaces: WorkspaceManager, environments: EnvironmentBuilder, sandbox: Sandbox,
                 baselines: BaselineStore | None = None, *, reruns: int = 2) -> None:
        self.workspaces, self.environments, self.sandbox = workspaces, environments, sandbox
        self.baselines = baselines or BaselineStore(workspaces.root / "baselines")
        self.reruns = reruns  # how often a failing test is run again before it counts

    async def verify(self, url: str, change: ChangeSet, *, name: str, plan: PlanScope | None = None,
                     agent_test_command: str | None = None) -> Evidence:
        """Prove `change` or raise EvidenceError. `plan`: the approved plan's files (None: nothing
        was approved, so no test infrastructure may change)."""
        _in_scope(change, plan)
        env = await self._environment(url, change)
        async with _Proof(self, url, change, env, name) as proof:
            evidence = await proof.prove(plan)
        return evidence.model_copy(update={"agent_test_command": agent_test_command})

    async def rerun_suite(self, url: str, sha: str, *, name: str) -> CommandRun:
        """The repository's whole suite on commit `sha` (a pushed branch), in the sandbox: what
        `rerun-tests` reports."""
        env = await self.environments.ensure(url, sha)
        async with _Proof(self, url, ChangeSet(base_sha=sha), env, name) as proof:
            await proof.tree("suite", {})
            run, _ = await proof.suite("suite")
            return run

    async def warm_baseline(self, url: str, sha: str, *, name: str) -> tuple[Baseline, bool]:
        """The base run of `sha`, computed now unless another agent did it already (the planner
        calls this so the executor's check finds it): (base run, whether it was there already)."""
        env = await self.environments.ensure(url, sha)
        async with _Proof(self, url, ChangeSet(base_sha=sha), env, name) as proof:
            return await proof.baseline()

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
                                {"setup_log_tail": error.log_tail}, stage="setup") from error


def refusal_text(error: EvidenceError, *, tail: int = 1500) -> str:
    """A refusal as the executor reads it (in its session, or in the next attempt's prompt):
    where the proof stopped, why, and the end of each run's output."""
    lines = [f"REFUSED at {error.stage}: {error}"]
    for step, label in (("red", "RED: your tests on the base code"), ("green", "GREEN: your tests with your fix"),
                        ("suite", "the whole suite with your change")):
        run = error.evidence.get(step) or {}
        if run.get("command") and run["command"] != "(not run)":
            lines.append(f"--- {label}: `{run['command']}` exit {run.get('exit_code')} ---\n"
                         f"{str(run.get('output_tail', ''))[-tail:]}")
    for key in ("setup_log_tail", "output_tail"):
        if error.evidence.get(key):
            lines.append(f"--- output ---\n{str(error.evidence[key])[-tail:]}")
    return "\n".join(lines)


def verified_text(evidence: Evidence) -> str:
    """A passed proof as the executor reads it."""
    suite = evidence.suite.counts
    excused = [f"{len(evidence.preexisting_failures)} already failing on the base commit"] \
        if evidence.preexisting_failures else []
    excused += [f"{len(evidence.flaky)} flaky"] if evidence.flaky else []
    return (f"VERIFIED: fail without your fix and pass with it: {', '.join(evidence.fail_to_pass)}; the whole suite "
            f"has no new failures ({', '.join(f'{n} {o}' for o, n in sorted(suite.items())) or 'by exit code'}"
            f"{'; ' + ', '.join(excused) if excused else ''}). The final check runs this same proof on your final files.")


def _in_scope(change: ChangeSet, plan: PlanScope | None, tests: Collection[str] = ()) -> ScopeReport:
    try:
        return check_scope(change, plan, set(tests))
    except ScopeRefused as refused:
        raise EvidenceError(str(refused), stage="scope") from refused


class _Proof:
    """One verification: its pristine trees, the fresh copy each run gets, the runs and the
    verdict. It holds the environments it was given or fetched, and releases them when it ends."""

    def __init__(self, verifier: Verifier, url: str, change: ChangeSet, env: Environment, name: str) -> None:
        self.verifier, self.url, self.change, self.env, self.name = verifier, url, change, env, name
        self.runner = make_runner(env.plan.test_runner, test_script=env.plan.test_script)
        self.timeouts: Timeouts = env.plan.timeouts
        self.trees: dict[str, tuple[Checkout, Environment]] = {}
        self.suite_kind = "green"  # the tree the whole suite ran on
        self.held: list[Environment] = [env]
        self._base_env: Environment | None = None
        self._base_tree: dict[str, TreeEntry] | None = None
        self.collection_errors: dict[str, str] = {}  # changed files the runner could not load, and why
        self._copies = 0
        self.run_seconds = 0.0  # spent inside the repository's test runs
        self._stack = AsyncExitStack()
        self.network: Network | None = None
        self.scratch = verifier.workspaces.tmp_dir / f"verify-{uuid.uuid4().hex[:12]}"

    async def __aenter__(self) -> _Proof:
        self.scratch.mkdir(parents=True)
        self.network = await self._stack.enter_async_context(network_access(self.env.plan.test_domains))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self._stack.aclose()
        finally:
            for checkout, _ in self.trees.values():
                await self.verifier.workspaces.discard(checkout)
            await asyncio.to_thread(remove_tree, self.scratch)
            for env in self.held:
                env.release()

    # -- the proof ---------------------------------------------------------------------------

    async def prove(self, plan: PlanScope | None) -> Evidence:
        change = self.change
        await self.tree("green", change.everything())
        tests, support = await self.split()
        fix = [p for p in change.paths if p not in tests and p not in support]
        if not tests:
            raise EvidenceError("the change adds no test: a fix must come with a test the repository's "
                                f"runner ({self.env.plan.test_runner}) collects and that fails without the fix"
                                + _uncollectable(self.collection_errors), stage="collect")
        if not fix:
            raise EvidenceError("the change touches only tests: there is no fix to prove", stage="collect")
        scope = _in_scope(change, plan, tests)
        await self.tree("red", change.subset(tests + support))
        red_run, red = await self.tests("red", tests)
        evidence = self._evidence(tests, support, fix, scope, red_run)
        self._refuse_unreadable(red, red_run, evidence, "the new tests without the fix (RED)")
        red_flaky = await self.flips("red", failing_in_body(red, tests), red, reruns=min(1, self.verifier.reruns))
        early = red_verdict(red, tests, flaky=red_flaky)
        if not early.ok:  # nothing fails (or nothing loads): no base run can change that
            raise EvidenceError(f"RED check failed: {early.reason}", self._dump(evidence, flaky=red_flaky), stage="red")
        green_run, green = await self.tests("green", tests)
        evidence.green = green_run
        self._refuse_unreadable(green, green_run, evidence, "the new tests with the fix (GREEN)")
        self.suite_kind = await self._suite_tree(tests)
        suite_run, suite = await self.suite(self.suite_kind)
        evidence.suite = suite_run
        if hung := _timed_out(evidence, self.timeouts):
            raise EvidenceError(hung, self._dump(evidence), stage="timeout")
        self._refuse_unreadable(suite, suite_run, evidence, "the full test suite")
        return await self._judge(evidence, red, green, suite, tests, red_flaky)

    async def _judge(self, evidence: Evidence, red: TestReport, green: TestReport, suite: TestReport | None,
                     tests: list[str], red_flaky: set[str]) -> Evidence:
        suite_failing = failing(suite) if suite is not None else []
        # no per-test report, or one that names no failure while the runner still fails (an unhandled
        # error between tests, a hook of the runner): the exit code, compared with the base's, decides
        unjudged = evidence.suite.exit_code != 0 and not suite_failing
        baseline = None
        if failing(green, tests) or suite_failing or unjudged:
            baseline, reused = await self.baseline()
            evidence.baseline = baseline.summary(reused=reused)
        known = baseline.tests if baseline else None
        edited = await self._edited(red, green)
        all_failing = set(failing(red, tests)) | set(failing(green, tests)) | set(suite_failing)
        pre = set(preexisting_failures(all_failing, known, edited))
        # named flaky by the repository's config, or flipped in RED: neither proves nor blocks
        flaky = red_flaky | (set(self.env.plan.flaky_tests) & all_failing)
        excused = pre | flaky | set(baseline.flaky if baseline else ())
        blocking = [i for i in failing(green, tests) if i not in excused]
        flaky |= await self.flips("green", blocking, green)
        if suite is not None:
            broken = [i for i in new_failures(suite, known, excused=excused) if i not in blocking]
            flaky |= await self.flips(self.suite_kind, broken, suite)
            flaky |= await self.fails_on_base([i for i in broken if i not in flaky], suite)
        flaky |= set(suite_failing) & set(baseline.flaky if baseline else ())  # flipped in the base run too
        evidence.preexisting_failures, evidence.flaky = sorted(pre), sorted(flaky)
        red_check = red_verdict(red, tests, preexisting=pre, flaky=flaky)
        if not red_check.ok:
            raise EvidenceError(f"RED check failed: {red_check.reason}", evidence.model_dump(), stage="red")
        green_check = green_verdict(green, red_check.test_ids, tests, excused=pre | flaky)
        if not green_check.ok:
            raise EvidenceError(f"GREEN check failed: {green_check.reason}", evidence.model_dump(), stage="green")
        evidence.fail_to_pass = red_check.test_ids
        if suite is not None:
            evidence.new_failures = [i for i in new_failures(suite, known, excused=excused) if i not in flaky]
        if evidence.new_failures:
            raise EvidenceError("the change breaks tests that passed on the base commit: "
                                + ", ".join(evidence.new_failures[:10]), evidence.model_dump(), stage="suite")
        if unjudged and (baseline is None or baseline.exit_code == 0):
            raise EvidenceError(f"the full test suite exits {evidence.suite.exit_code} with the change although no test "
                                "of its report fails, and it passed on the base commit: "
                                f"{evidence.suite.output_tail[-600:] or '(no output)'}", evidence.model_dump(), stage="suite")
        evidence.cross_check = await self.cross_check(evidence, red, tests)
        evidence.test_seconds = round(self.run_seconds, 2)
        if not evidence.cross_check.agreed:
            raise EvidenceError(f"the cross-check disagrees with the runner's report: {evidence.cross_check.detail}",
                                evidence.model_dump(), stage="cross_check")
        return evidence

    def _evidence(self, tests: list[str], support: list[str], fix: list[str], scope: ScopeReport,
                  red: CommandRun) -> Evidence:
        empty = CommandRun(command="(not run)", exit_code=0, seconds=0.0, output_tail="")
        return Evidence(test_files=sorted(tests + support), fix_files=fix, red=red, green=empty, suite=empty,
                        fail_to_pass=[], scope=scope, runner=self.env.plan.test_runner, setup=self.env.plan.describe(),
                        environment=self.env.hash, left_out=self.change.left_out,
                        sandboxed=self.verifier.sandbox.enabled)

    @staticmethod
    def _dump(evidence: Evidence, *, flaky: Collection[str] = ()) -> dict:
        return evidence.model_copy(update={"flaky": sorted(flaky)}).model_dump()

    def _refuse_unreadable(self, report: TestReport | None, run: CommandRun, evidence: Evidence, what: str) -> None:
        """A reporter that began and never ended: the test process was stopped under it (an exit
        from a test, a crash), so the tests after that point never ran."""
        if report is not None and not report.complete and not run.timed_out:
            raise EvidenceError(f"{what}: the test process ended before the runner finished (a test exited or "
                                "crashed the process), so the report cannot be judged", evidence.model_dump(),
                                stage="report")

    async def _edited(self, red: TestReport, green: TestReport) -> set[str] | None:
        """Ids of the tests the change adds or edits (Python: compared function by function);
        None where the runner's tests cannot be told apart that way."""
        if self.env.plan.test_runner not in PYTHON_RUNNERS:
            return None
        changed = self.change.subset({t.file for t in [*red.tests, *green.tests] if t.file})
        before = await self.verifier.workspaces.read_files(self.url, self.change.base_sha, list(changed))
        keys: set[str] = set()
        for file, after in changed.items():
            keys |= edited_tests(file, before.get(file), after.content)
        return {t.id for t in [*red.tests, *green.tests] if _test_key(t) in keys}

    async def _suite_tree(self, tests: list[str]) -> str:
        """The tree the whole suite runs on: the change without the test files it adds. Those
        are judged by RED, GREEN and the cross-check; in the suite's one process a new test
        module could patch the code under test back at import and hide what the fix breaks."""
        base = await self.base_tree()
        added = [p for p in tests if p not in base]
        if not added:
            return "green"
        await self.tree("suite", {p: c for p, c in self.change.everything().items() if p not in added})
        return "suite"

    # -- trees and runs ------------------------------------------------------------------------

    async def tree(self, kind: str, files: dict[str, FileContent], env: Environment | None = None) -> Path:
        """A pristine tree of the base commit with `files` laid on it, never run in itself."""
        env = env or self.env
        checkout = await self.verifier.workspaces.checkout(self.url, self.change.base_sha, f"verify-{self.name}-{kind}",
                                                           history=0)
        self.trees[kind] = (checkout, env)
        apply_files(checkout.path, files)
        self.verifier.environments.prepare(env, checkout)
        return checkout.path

    async def run(self, kind: str, argv: list[str], timeout_s: float, *, extra_env: dict[str, str] | None = None) -> RunResult:
        """`argv` in the sandbox on a fresh copy of tree `kind`; the report channel's contents come back."""
        pristine, env = self.trees[kind]
        self._copies += 1
        copy = self.scratch / f"{kind}-{self._copies}"
        await _copy_tree(pristine.path, copy)
        try:
            checkout = Checkout(path=copy, sha=pristine.sha, repo_url=pristine.repo_url)
            assert self.network is not None
            spec = self.network.apply(self.verifier.environments.spec(env, checkout))
            spec.read_only[HELPERS_MOUNT] = HELPERS_DIR
            spec.env = _with_runner_env(spec.env, {**self.runner.env(), **(extra_env or {})})
            result = await self.verifier.sandbox.run(spec, argv, timeout_s=timeout_s, report=True)
            self.run_seconds += result.seconds
            return result
        finally:
            await asyncio.to_thread(remove_tree, copy)

    async def split(self) -> tuple[list[str], list[str]]:
        """(test files the runner collects, test-support files) among the changed files."""
        change = self.change
        candidates = [p for p in change.paths if _code_file(p) and _present(change, p)]
        collected = await self._collect(candidates) if candidates else Collected()
        tests = [p for p in candidates if collected.tests_by_file.get(p)]
        self.collection_errors = {p: e for p, e in collected.errors.items() if p not in tests}
        support = [p for p in change.paths if p not in tests and _is_test_support(p)]
        return tests, support

    async def _collect(self, files: list[str]) -> Collected:
        argv = self.runner.collect_argv(files)
        if not argv:  # a runner that decides from the file names alone
            return self.runner.parse_collected(files, 0, "", b"")
        result = await self.run("green", argv, self.timeouts.test_s)
        try:
            return self.runner.parse_collected(files, result.exit_code, result.output_tail, result.report or b"")
        except ForgedReport as forged:
            raise EvidenceError(f"collecting the tests: {forged}; something besides the platform's reporter wrote "
                                "to its channel", stage="report") from forged

    async def tests(self, kind: str, targets: list[str]) -> tuple[CommandRun, TestReport]:
        argv = self.runner.run_argv(targets)
        result = await self.run(kind, argv, self.timeouts.test_s)
        report = self._parse(argv, result)
        return _command_run(argv, result, report), report

    async def suite(self, kind: str) -> tuple[CommandRun, TestReport | None]:
        """The whole suite: the runner's own command, or the repository's `suite_command` (its
        pytest, if it runs one, still reports through the platform's reporter)."""
        command = self.env.plan.suite_command
        if not command:
            argv = self.runner.suite_argv()
            result = await self.run(kind, argv, self.timeouts.suite_s)
            report = self._parse(argv, result)
            return _command_run(argv, result, report, summary=True), report
        extra = {"PYTEST_ADDOPTS": "-p fixfleet_pytest"} if self.runner.name == "pytest" else {}
        result = await self.run(kind, ["/bin/bash", "-c", command], self.timeouts.suite_s, extra_env=extra)
        report = self._parse([command], result) if result.report else None
        return _command_run([command], result, report, summary=True), report

    def _parse(self, argv: list[str], result: RunResult) -> TestReport:
        try:
            return self.runner.parse_run(argv, result.exit_code, result.output_tail, result.report or b"")
        except ForgedReport as forged:
            raise EvidenceError(f"{' '.join(argv)[:200]}: {forged}; something besides the platform's reporter wrote "
                                "to its channel, so no result of this run can be trusted",
                                {"output_tail": result.output_tail[-OUTPUT_TAIL:]}, stage="report") from forged

    async def flips(self, kind: str, ids: Collection[str], report: TestReport, *, reruns: int | None = None) -> set[str]:
        """The failing `ids` that pass when run again (at most `reruns` times each) on tree `kind`."""
        return await self._rerun_until(kind, ids, report, ("passed",), reruns)

    async def fails_on_base(self, ids: Collection[str], report: TestReport) -> set[str]:
        """Of the tests that passed in the base run and keep failing with the change, those that
        fail when run again on the base commit too: flaky (a test failing about half the time
        can fail three runs in a row), since the change is not what fails them."""
        if not ids:
            return set()
        if "base" not in self.trees:
            await self.tree("base", {}, await self.base_environment())
        return await self._rerun_until("base", ids, report, FAILING, None)

    async def _rerun_until(self, kind: str, ids: Collection[str], report: TestReport, outcomes: Collection[str],
                           reruns: int | None) -> set[str]:
        """The `ids` whose outcome is one of `outcomes` in one of at most `reruns` runs on tree `kind`."""
        by_id = {t.id: t for t in report.tests}
        pending, found = set(ids), set()
        for _ in range(self.verifier.reruns if reruns is None else reruns):
            if not pending:
                break
            targets = sorted(pending) if self.runner.name == "pytest" else \
                sorted({by_id[i].file for i in pending if by_id.get(i) and by_id[i].file})
            if not targets:
                break
            _, again = await self.tests(kind, targets)
            hit = {t.id for t in again.tests if t.outcome in outcomes} & pending
            found |= hit
            pending -= hit
        return found

    # -- the base run ----------------------------------------------------------------------------

    async def base_tree(self) -> dict[str, TreeEntry]:
        """The base commit's files (path -> mode and blob), listed once per proof."""
        if self._base_tree is None:
            self._base_tree = await self.verifier.workspaces.list_tree(self.url, self.change.base_sha)
        return self._base_tree

    async def base_environment(self) -> Environment:
        """The base commit's own environment: this proof's, unless the change edits dependency
        files (its environment was built from them then; the base's is fetched and held)."""
        if self._base_env is None:
            self._base_env = self.env
            if any(p in SPEC_FILES for p in self.change.paths):
                self._base_env = await self.verifier.environments.ensure(self.url, self.change.base_sha)
                self.held.append(self._base_env)
        return self._base_env

    async def baseline(self) -> tuple[Baseline, bool]:
        """The suite's results on the base commit, in the base's environment: (base run, reused)."""
        verifier = self.verifier
        env = await self.base_environment()
        tree = await self.base_tree()
        command = self.env.plan.suite_command or " ".join(self.runner.suite_argv())
        key = baseline_key(tree, env.hash, command)

        async def run() -> Baseline:
            started = time.monotonic()
            await self.tree("base", {}, env)
            suite_run, suite = await self.suite("base")
            tests = {t.id: t.outcome for t in suite.tests} if suite else {}
            flaky = await self.flips("base", failing(suite), suite) if suite else set()
            tests |= {i: "passed" for i in flaky}
            return Baseline(key=key, sha=self.change.base_sha, environment=env.hash, command=command, tests=tests,
                            flaky=sorted(flaky), exit_code=suite_run.exit_code,
                            complete=suite is not None and suite.complete,
                            seconds=round(time.monotonic() - started, 2), ran_at=round(time.time(), 3))

        waiting = time.monotonic()
        baseline, reused = await verifier.baselines.get_or_run(self.url, key, run)
        if reused:  # time spent waiting for another agent's base run is the repository's test time too
            self.run_seconds += time.monotonic() - waiting
        return baseline, reused

    # -- the cross-check -------------------------------------------------------------------------

    async def cross_check(self, evidence: Evidence, red: TestReport, tests: list[str]) -> CrossCheck:
        proven = evidence.fail_to_pass
        if evidence.scope.test_infrastructure:
            return await self._with_base_configuration(evidence, proven, tests, {t.id: t.file for t in red.tests})
        if self.env.plan.test_runner in PYTHON_RUNNERS:
            return await self._direct_call(proven, {t.id: t for t in red.tests})
        return CrossCheck(method="not needed: the change leaves the test configuration as on the base commit",
                          checked=[])

    async def _with_base_configuration(self, evidence: Evidence, proven: list[str], tests: list[str],
                                       files: dict[str, str | None]) -> CrossCheck:
        """RED and GREEN again, with every file of test infrastructure as on the base commit: in
        the change's environment, and, when the change's dependency files made that environment,
        in the base commit's as well. A setup is the change's code: what it planted in its own
        environment (a plugin, a `.pth`) runs in every run there, base configuration or not. A
        test whose file loads only in the change's environment (it imports a new dependency) is
        unchecked there, and says why."""
        infra = evidence.scope.test_infrastructure
        base = await self.verifier.workspaces.read_files(self.url, self.change.base_sha, infra)
        reverted = {p: FileContent(content=base.get(p)) for p in infra}
        red_files = {**self.change.subset([p for p in evidence.test_files if p not in infra]), **reverted}
        green_files = {**self.change.everything(), **reverted}
        method = f"the base commit's test configuration ({', '.join(infra)} as before the change)"
        red, green = await self._red_green("base-config", red_files, green_files, tests, self.env)
        disagree = _disagreeing(proven, red, green)
        unchecked: dict[str, str] = {}
        base_env = await self.base_environment()
        if base_env is not self.env:
            method += ", in the change's environment and in the base commit's"
            red, green = await self._red_green("base-env", red_files, green_files, tests, base_env)
            loads_only_with_change = _unloadable(red, green)
            for test_id in proven:
                if (file := files.get(test_id)) in loads_only_with_change:
                    unchecked[test_id] = (f"{file} cannot be loaded in the base commit's environment "
                                          f"({loads_only_with_change[file]}): it needs the change's own")
            env_only = _disagreeing([i for i in proven if i not in unchecked and i not in disagree], red, green)
            disagree |= {i: f"{why} in the base commit's environment: it passes only in the environment built from the "
                            "change's dependency files, whose setup is the change's own code" for i, why in env_only.items()}
        return CrossCheck(method=method, agreed=not disagree, unchecked=unchecked,
                          checked=[i for i in proven if i not in disagree and i not in unchecked],
                          detail="; ".join(disagree.values()))

    async def _red_green(self, label: str, red_files: dict[str, FileContent], green_files: dict[str, FileContent],
                         tests: list[str], env: Environment) -> tuple[TestReport, TestReport]:
        await self.tree(f"red-{label}", red_files, env)
        await self.tree(f"green-{label}", green_files, env)
        _, red = await self.tests(f"red-{label}", tests)
        _, green = await self.tests(f"green-{label}", tests)
        return red, green

    async def _direct_call(self, proven: list[str], cases: dict[str, TestCase]) -> CrossCheck:
        """Each proven test called directly on the RED and GREEN trees: no conftest, no plugin,
        no configuration of the runner takes part."""
        names = {i: _direct_id(cases[i]) for i in proven if i in cases}
        argv = ["python", "-B", f"{HELPERS_MOUNT}/direct_call.py", "--", *names.values()]
        outcomes = {}
        for kind in ("red", "green"):
            result = await self.run(kind, argv, self.timeouts.test_s)
            try:
                document = _direct_results(result.report or b"")
            except ForgedReport as forged:
                return CrossCheck(method="direct call, without the runner", agreed=False,
                                  detail=f"its report was tampered with: {forged}")
            outcomes[kind] = document
        unchecked, disagree = {}, []
        for test_id, direct in names.items():
            red, green = outcomes["red"].get(direct, {}), outcomes["green"].get(direct, {})
            if "unchecked" in (red.get("outcome"), green.get("outcome")):
                unchecked[test_id] = red.get("message") or green.get("message") or "cannot be called directly"
            elif red.get("outcome") not in FAILING or green.get("outcome") != "passed":
                disagree.append(f"{test_id}: {red.get('outcome', 'absent')} without the fix, "
                                f"{green.get('outcome', 'absent')} with it ({green.get('message') or red.get('message')})")
        checked = [i for i in names if i not in unchecked and not any(d.startswith(f"{i}:") for d in disagree)]
        return CrossCheck(method="direct call, without the runner", agreed=not disagree, checked=checked,
                          unchecked=unchecked, detail="; ".join(disagree))


# -- helpers ----------------------------------------------------------------------------------


async def _copy_tree(source: Path, target: Path) -> None:
    """A copy with links kept as links (`cp -a`: fast, and never follows one out of the tree)."""
    process = await asyncio.create_subprocess_exec("cp", "-a", "--", str(source), str(target),
                                                   stdout=asyncio.subprocess.DEVNULL,
                                                   stderr=asyncio.subprocess.PIPE)
    _, error = await process.communicate()
    if process.returncode != 0:
        raise OSError(f"copying a verification tree failed: {error.decode(errors='replace').strip()[-300:]}")


def _with_runner_env(env: dict[str, str], runner_env: dict[str, str]) -> dict[str, str]:
    """The runner's variables added; a PYTHONPATH the repository sets keeps precedence."""
    merged = dict(env)
    for name, value in runner_env.items():
        merged[name] = f"{env[name]}:{value}" if name == "PYTHONPATH" and env.get(name) else value
    return merged


def _command_run(argv: list[str], result: RunResult, report: TestReport | None, *, summary: bool = False) -> CommandRun:
    """A run as the evidence shows it; a suite's `tests` lists only what did not pass (it may be thousands)."""
    tests = {case.id: case.outcome for case in report.tests} if report else {}
    counts: dict[str, int] = {}
    for outcome in tests.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    if summary:
        tests = {i: o for i, o in tests.items() if o != "passed"}
    return CommandRun(command=" ".join(argv), exit_code=result.exit_code, seconds=result.seconds,
                      output_tail=result.output_tail[-OUTPUT_TAIL:], tests=tests, counts=counts,
                      timed_out=result.timed_out)


def _timed_out(evidence: Evidence, limits: Timeouts) -> str | None:
    """Say so when a run was killed at its time limit: "the suite fails" would hide a hang."""
    for what, run, limit in (("the new tests without the fix (RED)", evidence.red, limits.test_s),
                             ("the new tests with the fix (GREEN)", evidence.green, limits.test_s),
                             ("the full test suite", evidence.suite, limits.suite_s)):
        if run.timed_out:
            return (f"{what} did not finish within {limit:g}s (a test that hangs or waits for something?); "
                    "the run was killed")
    return None


def _disagreeing(proven: list[str], red: TestReport, green: TestReport) -> dict[str, str]:
    """The proven tests that do not fail without the fix and pass with it in these runs, and how."""
    red_out, green_out = {t.id: t.outcome for t in red.tests}, {t.id: t.outcome for t in green.tests}
    return {i: f"{i}: {red_out.get(i, 'absent')} without the fix, {green_out.get(i, 'absent')} with it"
            for i in proven if red_out.get(i) not in FAILING or green_out.get(i) != "passed"}


def _unloadable(red: TestReport, green: TestReport) -> dict[str, str]:
    """The files that could not be loaded in either run, with why."""
    loaded = {t.file for t in green.collection_errors() if t.file}
    return {t.file: t.message for t in red.collection_errors() if t.file and t.file in loaded}


def _direct_id(case: TestCase) -> str:
    """`file::Class::name` for the direct-call helper (unittest ids are dotted: module.Class.name)."""
    if "::" in case.id or not case.file:
        return case.id
    return "::".join([case.file, *case.id.split(".")[-2:]])


def _direct_results(report: bytes) -> dict[str, dict]:
    document = json_document(report)
    tests = document.get("tests") if isinstance(document, dict) else None
    return {str(t.get("id")): t for t in tests or [] if isinstance(t, dict)}


def _test_key(case: TestCase) -> str:
    """`file::Class::name` of a reported test, parameters dropped: how edited_tests names it."""
    return _direct_id(case).split("[", 1)[0]


def edited_tests(path: str, before: bytes | None, after: bytes | None) -> set[str]:
    """`path::Class::name` of the test functions a change adds or edits in one Python file,
    compared function by function (a new import at the top edits no test)."""
    old, new = _test_functions(before), _test_functions(after)
    return {f"{path}::{name}" for name, body in new.items() if old.get(name) != body}


def _test_functions(source: bytes | None) -> dict[str, str]:
    try:
        module = ast.parse(source or b"")
    except (SyntaxError, ValueError):
        return {}
    found = {}
    for node in module.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            found[node.name] = ast.dump(node)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name.startswith("test"):
                    found[f"{node.name}::{item.name}"] = ast.dump(item)
    return found


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
