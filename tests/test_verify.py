"""The platform's RED/GREEN/suite proof of a change, run for real: git, bubblewrap, uv, pytest, unittest.

A small Python repository (a `src/` layout with a bug in `add`) is the base; each test hands
the Verifier a ChangeSet, as an agent's work arrives, and reads the Evidence or the refusal.
One WorkspaceManager, EnvironmentBuilder and environment serve the module.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest
import pytest_asyncio

from fixfleet.workspace.changes import ChangeSet, FileChange, extract, snapshot
from fixfleet.workspace.environments import Environment, EnvironmentBuilder
from fixfleet.workspace.mirrors import WorkspaceManager
from fixfleet.workspace.sandbox import Sandbox
from fixfleet.workspace.scope import PlanScope
from fixfleet.workspace.verify import Evidence, EvidenceError, Verifier
from tests.gitrepos import make_upstream, own_git_config

pytestmark = pytest.mark.asyncio(loop_scope="module")

BIG_BUDGET = 10**12
PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "calc"
version = "0.1.0"
dependencies = [{deps}]

[project.optional-dependencies]
tests = ["pytest"]
"""
CALC = "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n"
FIXED = CALC.replace("a - b", "a + b")  # same size: RED and GREEN files differ in content only
BASE = {
    "pyproject.toml": PYPROJECT.format(deps=""),
    "src/calc/__init__.py": CALC,
    "tests/test_mul.py": "from calc import mul\n\n\ndef test_mul():\n    assert mul(2, 3) == 6\n",
}
TEST_ADD = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"


# -- helpers ------------------------------------------------------------------------------


def make_remote(directory: Path, files: dict[str, str]) -> tuple[str, str]:
    """A bare remote holding one commit of `files`: (url, sha)."""
    upstream = make_upstream(directory, files)
    return upstream.url, upstream.sha("main")


def change(sha: str, files: dict[str, str | None]) -> ChangeSet:
    """A change of these files (None: deleted)."""
    return ChangeSet(base_sha=sha, files=[FileChange(path=p, content=t.encode() if t is not None else None)
                                          for p, t in sorted(files.items())])


def tree_digest(root: Path) -> dict[str, str]:
    """Every entry under root (files, links, directories) with a hash of its content."""
    found = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(directory, name)
            rel = str(path.relative_to(root))
            found[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


class Repo:
    def __init__(self, url: str, sha: str, env: Environment) -> None:
        self.url, self.sha, self.env = url, sha, env


@pytest.fixture(scope="module", autouse=True)
def isolated_git(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with own_git_config(tmp_path_factory.mktemp("gitconfig")):
        yield


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("verify")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def workspaces(root: Path) -> AsyncIterator[WorkspaceManager]:
    manager = WorkspaceManager(root / "ws", BIG_BUDGET, warm_spares=0)
    yield manager
    await manager.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def verifier(root: Path, workspaces: WorkspaceManager) -> Verifier:
    sandbox = Sandbox(root / "sandbox")
    await sandbox.check()
    return Verifier(workspaces, EnvironmentBuilder(workspaces, sandbox), sandbox)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def calc(root: Path, workspaces: WorkspaceManager, verifier: Verifier) -> Repo:
    url, sha = make_remote(root / "calc", BASE)
    await workspaces.resolve(url)
    return Repo(url, sha, await verifier.environments.ensure(url, sha))


async def verify(verifier: Verifier, url: str, changeset: ChangeSet, name: str, *,
                 plan: list[str] | None = None) -> Evidence:
    """Verify, and whatever the outcome, check that no checkout of the verifier's is left.
    `plan`: the files the approved plan names (default: the change's own files)."""
    before = set(verifier.workspaces.checkouts_dir.iterdir())
    scope = PlanScope(files=changeset.paths if plan is None else plan)
    try:
        return await verifier.verify(url, changeset, name=name, plan=scope)
    finally:
        assert set(verifier.workspaces.checkouts_dir.iterdir()) == before


async def refusal(verifier: Verifier, url: str, changeset: ChangeSet, name: str, *,
                  plan: list[str] | None = None) -> EvidenceError:
    with pytest.raises(EvidenceError) as raised:
        await verify(verifier, url, changeset, name, plan=plan)
    return raised.value


# -- pytest repository --------------------------------------------------------------------


async def test_fix_with_a_failing_test_is_proven_red_green_and_suite(calc: Repo, verifier: Verifier) -> None:
    evidence = await verify(verifier, calc.url, change(calc.sha, {
        "tests/test_add.py": TEST_ADD, "src/calc/__init__.py": FIXED}), "good")

    assert evidence.test_files == ["tests/test_add.py"] and evidence.fix_files == ["src/calc/__init__.py"]
    assert evidence.fail_to_pass == ["tests/test_add.py::test_add"]
    assert evidence.red.exit_code != 0 and evidence.red.tests == {"tests/test_add.py::test_add": "failed"}
    assert "assert -1 == 5" in evidence.red.output_tail
    assert evidence.green.exit_code == 0 and evidence.green.tests == {"tests/test_add.py::test_add": "passed"}
    assert evidence.suite.exit_code == 0 and "1 passed" in evidence.suite.output_tail  # the old test: new files are GREEN's
    assert evidence.runner == "pytest" and evidence.environment == calc.env.hash
    assert "installs the package editable with its extras tests" in evidence.setup
    assert evidence.sandboxed


async def test_same_size_fix_with_the_same_mtime_goes_green_every_time(calc: Repo, verifier: Verifier) -> None:
    """Python takes bytecode as current when the source keeps its size and mtime second; a
    conftest pins the fix file's mtime in every run, so a RED run that wrote bytecode would
    make GREEN run the unfixed code every time, not 1 run in 4."""
    assert len(FIXED) == len(CALC)
    conftest = "import os\n\nos.utime('src/calc/__init__.py', (1_000_000_000, 1_000_000_000))\n"
    for attempt in range(2):
        evidence = await verify(verifier, calc.url, change(calc.sha, {
            "conftest.py": conftest, "tests/test_add.py": TEST_ADD, "src/calc/__init__.py": FIXED}),
            f"same-mtime-{attempt}")
        assert evidence.red.tests == {"tests/test_add.py::test_add": "failed"}
        assert evidence.green.tests == {"tests/test_add.py::test_add": "passed"}, evidence.green.output_tail
        assert evidence.test_files == ["conftest.py", "tests/test_add.py"]


async def test_import_error_of_the_new_test_is_not_red(calc: Repo, verifier: Verifier) -> None:
    error = await refusal(verifier, calc.url, change(calc.sha, {
        "tests/test_sub.py": "from calc import sub\n\n\ndef test_sub():\n    assert sub(3, 2) == 1\n",
        "src/calc/__init__.py": CALC + "\n\ndef sub(a, b):\n    return a - b\n"}), "import-error")

    assert str(error).startswith("RED check failed") and "collection error in tests/test_sub.py" in str(error)
    assert "ImportError" in str(error)
    assert error.evidence["red"]["exit_code"] != 0


async def test_test_that_cannot_be_collected_even_with_the_fix_is_named(calc: Repo, verifier: Verifier) -> None:
    error = await refusal(verifier, calc.url, change(calc.sha, {
        "tests/test_add.py": "import calc_helpers_that_do_not_exist\n" + TEST_ADD,
        "src/calc/__init__.py": FIXED}), "never-collects")

    assert "tests/test_add.py" in str(error) and "calc_helpers_that_do_not_exist" in str(error)


async def test_test_that_already_passes_without_the_fix_is_not_red(calc: Repo, verifier: Verifier) -> None:
    error = await refusal(verifier, calc.url, change(calc.sha, {
        "tests/test_mul2.py": "from calc import mul\n\n\ndef test_mul_again():\n    assert mul(3, 3) == 9\n",
        "src/calc/__init__.py": FIXED}), "already-passes")

    assert str(error).startswith("RED check failed: no test failed on the base code (1 passed")


async def test_fix_that_breaks_another_test_file_fails_the_suite(calc: Repo, verifier: Verifier) -> None:
    error = await refusal(verifier, calc.url, change(calc.sha, {
        "tests/test_add.py": TEST_ADD, "src/calc/__init__.py": FIXED.replace("a * b", "a ** b")}), "breaks-mul")

    assert str(error) == "the change breaks tests that passed on the base commit: tests/test_mul.py::test_mul"
    assert error.stage == "suite" and error.evidence["new_failures"] == ["tests/test_mul.py::test_mul"]
    assert error.evidence["green"]["exit_code"] == 0 and error.evidence["suite"]["exit_code"] != 0
    assert error.evidence["baseline"]["failing"] == [] and error.evidence["baseline"]["tests"] == 1
    assert "test_mul" in error.evidence["suite"]["output_tail"]


async def test_test_only_change_is_refused(calc: Repo, verifier: Verifier) -> None:
    error = await refusal(verifier, calc.url, change(calc.sha, {"tests/test_add.py": TEST_ADD}), "test-only")
    assert "touches only tests" in str(error)


async def test_change_without_a_test_is_refused(calc: Repo, verifier: Verifier) -> None:
    error = await refusal(verifier, calc.url, change(calc.sha, {"src/calc/__init__.py": FIXED}), "no-test")
    assert "adds no test" in str(error)


async def test_new_dependency_in_pyproject_builds_a_new_environment(calc: Repo, verifier: Verifier) -> None:
    evidence = await verify(verifier, calc.url, change(calc.sha, {
        "pyproject.toml": PYPROJECT.format(deps='"six"'),
        "tests/test_add.py": "import six\n" + TEST_ADD,
        "src/calc/__init__.py": FIXED}), "new-dependency")

    assert evidence.environment != calc.env.hash
    assert evidence.fail_to_pass == ["tests/test_add.py::test_add"]
    assert "pyproject.toml" in evidence.fix_files
    envs = verifier.environments.cache.envs_dir / verifier.workspaces.mirror_key(calc.url)
    assert list((envs / evidence.environment / "env").glob("lib/python*/site-packages/six.py"))
    assert not list(calc.env.path.glob("lib/python*/site-packages/six.py"))  # the base one untouched
    cross = evidence.cross_check  # the test imports six: it cannot be run in the base commit's environment
    assert cross is not None and cross.agreed and list(cross.unchecked) == ["tests/test_add.py::test_add"]
    assert "No module named 'six'" in cross.unchecked["tests/test_add.py::test_add"], cross


async def test_dependency_that_cannot_be_installed_refuses_the_change(calc: Repo, verifier: Verifier) -> None:
    error = await refusal(verifier, calc.url, change(calc.sha, {
        "pyproject.toml": PYPROJECT.format(deps='"fixfleet-no-such-package-0000"'),
        "tests/test_add.py": TEST_ADD, "src/calc/__init__.py": FIXED}), "bad-dependency")

    assert str(error).startswith("the environment cannot be set up with the change's pyproject.toml")
    assert "fixfleet-no-such-package-0000" in error.evidence["setup_log_tail"]


async def test_change_to_fixfleet_yml_cannot_choose_its_own_suite(calc: Repo, verifier: Verifier) -> None:
    error = await refusal(verifier, calc.url, change(calc.sha, {
        ".fixfleet.yml": "suite_command: 'true'\n",  # would hide the test_mul the fix breaks
        "tests/test_add.py": TEST_ADD, "src/calc/__init__.py": FIXED.replace("a * b", "a ** b")}), "own-suite")

    assert "edits .fixfleet.yml" in str(error)


async def test_the_agents_checkout_is_never_touched(calc: Repo, verifier: Verifier) -> None:
    workspaces = verifier.workspaces
    agent = await workspaces.checkout(calc.url, calc.sha, "agent-tree")
    try:
        placed = verifier.environments.prepare(calc.env, agent)  # egg-info: never part of a change
        before = snapshot(agent.path)
        (agent.path / "tests/test_add.py").write_text(TEST_ADD)
        (agent.path / "src/calc/__init__.py").write_text(FIXED)
        changeset = extract(agent.path, calc.sha, await workspaces.list_tree(calc.url, calc.sha), before=before,
                            mount_points=placed)
        assert changeset.paths == ["src/calc/__init__.py", "tests/test_add.py"]
        state = tree_digest(agent.path)

        evidence = await verify(verifier, calc.url, changeset, "agent-work")
        assert evidence.fail_to_pass == ["tests/test_add.py::test_add"]
        assert tree_digest(agent.path) == state  # no bytecode, caches, reports or reverted files

        with pytest.raises(EvidenceError):
            await verify(verifier, calc.url, changeset.model_copy(update={"files": changeset.files[:1]}), "agent-work")
        assert tree_digest(agent.path) == state
    finally:
        await workspaces.discard(agent)
    assert list(workspaces.checkouts_dir.iterdir()) == []


# -- judged against the base commit --------------------------------------------------------

LEGACY_TESTS = """from calc import mul


def test_mul():
    assert mul(2, 3) == 6


def test_mul_by_zero_was_broken_by_a_dependency():
    assert mul(7, 0) == 7


def test_mul_negative_was_broken_too():
    assert mul(-1, 2) == 2
"""
ORDER_DEPENDENT = """def test_only_passes_alone(request):
    # stands for a flaky test: it flips with the company it runs in
    assert len(request.session.items) == 1
"""


async def test_failures_already_on_the_base_commit_are_listed_not_blamed(root: Path, workspaces: WorkspaceManager,
                                                                         verifier: Verifier) -> None:
    """Two tests in the very file the fix's test goes into fail on the base commit; the fix's
    own test goes red to green, so the fix is proven and the two are named, not demanded."""
    url, sha = make_remote(root / "legacy", BASE | {"tests/test_mul.py": LEGACY_TESTS})
    await workspaces.resolve(url)
    with_add = LEGACY_TESTS.replace("from calc import mul", "from calc import add, mul") + \
        "\n\ndef test_add():\n    assert add(2, 3) == 5\n"

    evidence = await verify(verifier, url, change(sha, {"tests/test_mul.py": with_add, "src/calc/__init__.py": FIXED}),
                            "legacy")

    assert evidence.fail_to_pass == ["tests/test_mul.py::test_add"]
    assert evidence.preexisting_failures == ["tests/test_mul.py::test_mul_by_zero_was_broken_by_a_dependency",
                                             "tests/test_mul.py::test_mul_negative_was_broken_too"]
    assert evidence.new_failures == [] and evidence.suite.exit_code != 0  # the exit code stays for who reads it
    assert evidence.baseline is not None and evidence.baseline["sha"] == sha
    assert evidence.baseline["failing"] == evidence.preexisting_failures
    assert evidence.cross_check is not None and evidence.cross_check.checked == ["tests/test_mul.py::test_add"]

    # an edited test that failed before is the change's own: it must now pass
    edited = with_add.replace("assert mul(7, 0) == 7", "assert mul(7, 0) == 7 * 1")
    refused = await refusal(verifier, url, change(sha, {"tests/test_mul.py": edited, "src/calc/__init__.py": FIXED}),
                            "legacy-edited")
    assert refused.stage == "green" and "test_mul_by_zero_was_broken_by_a_dependency" in str(refused)


async def test_a_suite_that_fails_with_no_failing_test_is_judged_by_its_exit_code(root: Path, workspaces: WorkspaceManager,
                                                                               verifier: Verifier) -> None:
    """The fix makes the test process exit 3 after every test passed (an exit handler, as an
    unhandled error between tests does in a JS runner): the report names no failure, the base
    commit's suite exits 0, so the change is refused and the output says why."""
    url, sha = make_remote(root / "exits", BASE)
    await workspaces.resolve(url)
    exits = FIXED + "\nimport atexit, os\natexit.register(os._exit, 3)\n"

    refused = await refusal(verifier, url, change(sha, {"tests/test_add.py": TEST_ADD, "src/calc/__init__.py": exits}),
                            "exits")

    assert refused.stage == "suite"
    assert "exits 3 with the change although no test of its report fails" in str(refused)
    assert refused.evidence["fail_to_pass"] == ["tests/test_add.py::test_add"] and refused.evidence["suite"]["exit_code"] == 3


async def test_a_test_that_flips_when_run_again_neither_proves_nor_blocks(root: Path, workspaces: WorkspaceManager,
                                                                          verifier: Verifier) -> None:
    url, sha = make_remote(root / "flaky", BASE | {"tests/test_order.py": ORDER_DEPENDENT})
    await workspaces.resolve(url)

    evidence = await verify(verifier, url, change(sha, {"tests/test_add.py": TEST_ADD, "src/calc/__init__.py": FIXED}),
                            "flaky")

    assert evidence.fail_to_pass == ["tests/test_add.py::test_add"]
    assert evidence.flaky == ["tests/test_order.py::test_only_passes_alone"] and evidence.new_failures == []
    assert evidence.baseline["flaky"] == ["tests/test_order.py::test_only_passes_alone"]


COMPANY_DEPENDENT = """def test_passes_in_the_base_suite_only(request):
    # stands for a flaky test that failed every run with the change: it fails on the base too
    assert len(request.session.items) == 2
"""


async def test_a_test_failing_with_the_change_and_again_on_the_base_is_flaky_not_new(
        root: Path, workspaces: WorkspaceManager, verifier: Verifier) -> None:
    """It passed in the base run and failed in every run with the change (the test the change
    adds to an existing file changes its company); run again on the base commit, it fails there
    too: flaky, named, and it does not block the fix."""
    url, sha = make_remote(root / "company", BASE | {"tests/test_company.py": COMPANY_DEPENDENT})
    await workspaces.resolve(url)
    with_add = BASE["tests/test_mul.py"].replace("from calc import mul", "from calc import add, mul") + \
        "\n\ndef test_add():\n    assert add(2, 3) == 5\n"

    evidence = await verify(verifier, url, change(sha, {"tests/test_mul.py": with_add, "src/calc/__init__.py": FIXED}),
                            "company")

    assert evidence.fail_to_pass == ["tests/test_mul.py::test_add"]
    assert evidence.flaky == ["tests/test_company.py::test_passes_in_the_base_suite_only"]
    assert evidence.new_failures == [] and evidence.baseline["failing"] == []


async def test_tests_the_repository_names_flaky_neither_prove_nor_block(root: Path, workspaces: WorkspaceManager,
                                                                      verifier: Verifier) -> None:
    """`.fixfleet.yml` names a test its developers know to be flaky: it fails with the change
    (here every time, the worst a flaky test can do) and is listed as flaky, not as a new failure."""
    known = "from calc import add\n\n\ndef test_known_flaky():\n    assert add(2, 3) == -1\n"
    url, sha = make_remote(root / "quarantine", BASE | {
        "tests/test_known.py": known, ".fixfleet.yml": "flaky_tests: [tests/test_known.py::test_known_flaky]\n"})
    await workspaces.resolve(url)

    evidence = await verify(verifier, url, change(sha, {"tests/test_add.py": TEST_ADD, "src/calc/__init__.py": FIXED}),
                            "quarantine")

    assert evidence.fail_to_pass == ["tests/test_add.py::test_add"]
    assert evidence.flaky == ["tests/test_known.py::test_known_flaky"] and evidence.new_failures == []


async def test_the_change_is_held_to_the_approved_plan(calc: Repo, verifier: Verifier) -> None:
    good = {"tests/test_add.py": TEST_ADD, "src/calc/__init__.py": FIXED}
    plan = ["src/calc/__init__.py"]

    refused = await refusal(verifier, calc.url, change(calc.sha, good | {"PLAN.md": "# a plan nobody approved\n"}),
                            "rewrites-plan", plan=plan)
    assert refused.stage == "scope" and "edits PLAN.md" in str(refused)

    refused = await refusal(verifier, calc.url, change(calc.sha, good | {"conftest.py": "import os\n"}), "conftest",
                            plan=plan)
    assert refused.stage == "scope" and "conftest.py" in str(refused) and "outside the approved plan" in str(refused)

    refused = await refusal(verifier, calc.url, change(calc.sha, good | {"tests/test_mul.py": None}), "deletes-test",
                            plan=plan)
    assert "deletes the test file tests/test_mul.py" in str(refused)

    evidence = await verify(verifier, calc.url, change(calc.sha, good | {"src/calc/extra.py": "X = 1\n"}), "extra",
                            plan=plan)
    assert evidence.scope.outside_plan == ["src/calc/extra.py"] and evidence.fail_to_pass


# -- a hostile repository: forged reports and planted files ---------------------------------------

FAKE_FIX = CALC + "# fixed\n"  # no fix at all: only a marker the forgeries look for
SWALLOW = """import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    outcome = yield
    if "# fixed" in open("src/calc/__init__.py").read():
        outcome.force_result(True)  # the failure is swallowed: the test 'passes'
"""


async def test_a_conftest_that_swallows_failures_is_caught_by_the_cross_check(calc: Repo, verifier: Verifier) -> None:
    """The plan allowed conftest.py, and the change's conftest turns the still-failing test into a
    pass whenever the 'fix' is present: RED fails, GREEN 'passes'. The cross-check runs both again
    with the base's (absent) conftest and the runner's word is refused."""
    forged = {"conftest.py": SWALLOW, "tests/test_add.py": TEST_ADD, "src/calc/__init__.py": FAKE_FIX}
    print("attack: a conftest hook that swallows the failure of the new test once the fake fix is present")
    refused = await refusal(verifier, calc.url, change(calc.sha, forged), "swallow",
                            plan=["conftest.py", "src/calc/__init__.py"])
    print("held:", refused)
    assert refused.stage == "cross_check" and "failed with it" in str(refused)


async def test_a_plugin_named_in_addopts_is_caught_by_the_cross_check(calc: Repo, verifier: Verifier) -> None:
    plugin = SWALLOW.replace("import pytest", "import pytest  # a 'helper' plugin")
    forged = {"pytest.ini": "[pytest]\naddopts = -p helper_plugin\n", "helper_plugin.py": plugin,
              "tests/test_add.py": TEST_ADD, "src/calc/__init__.py": FAKE_FIX}
    print("attack: addopts = -p helper_plugin, a plugin that swallows failures")
    refused = await refusal(verifier, calc.url, change(calc.sha, forged), "addopts",
                            plan=["pytest.ini", "src/calc/__init__.py"])
    print("held:", refused)
    assert refused.stage == "cross_check"
    assert "not named" not in str(refused)  # the plugin itself is a new file outside the plan: reported


PLANTING_SETUP_PY = f"""import pathlib
site = next(pathlib.Path("/env/lib").glob("python3*/site-packages"))  # the environment being built
(site / "zz_swallow.py").write_text({SWALLOW!r})
(site / "zz_swallow.pth").write_text("import os; os.environ['PYTEST_PLUGINS'] = 'zz_swallow'\\n")
from setuptools import setup
setup()
"""


async def test_a_plugin_the_changes_setup_plants_in_its_environment_is_caught_by_the_cross_check(
        calc: Repo, verifier: Verifier) -> None:
    """The plan allowed setup.py, and the change's setup plants a plugin in the environment built
    from it (a .pth names it at every interpreter start) that swallows the failure once the fake
    fix is present. The base configuration alone runs in that same environment and agrees; the
    base commit's environment does not."""
    forged = {"setup.py": PLANTING_SETUP_PY, "tests/test_add.py": TEST_ADD, "src/calc/__init__.py": FAKE_FIX}
    print("attack: setup.py plants a failure-swallowing plugin and a .pth loading it in its own environment")
    refused = await refusal(verifier, calc.url, change(calc.sha, forged), "planted-plugin",
                            plan=["setup.py", "src/calc/__init__.py"])
    print("held:", refused)
    assert refused.stage == "cross_check"
    assert "failed without the fix, failed with it in the base commit's environment" in str(refused)


async def test_a_report_written_by_the_tests_themselves_is_refused(calc: Repo, verifier: Verifier) -> None:
    """An exit handler in the test module writes results of its own to the report channel (the
    JUnit-rewriting attack of old) and exits 0: what it wrote is more than the reporter wrote."""
    forged_line = ('{"event": "test", "id": "tests/test_add.py::test_add", "file": "tests/test_add.py", '
                   '"when": "call", "outcome": "passed", "message": ""}')
    test = ("import atexit\nimport os\n\n\ndef forge():\n"
            f"    os.write(os.open(os.environ['FIXFLEET_REPORT'], os.O_WRONLY), b'{forged_line}\\n')\n    os._exit(0)\n\n\n"
            "atexit.register(forge)\n" + TEST_ADD)
    print("attack: an atexit handler that writes a passed result on the report channel and exits 0")
    refused = await refusal(verifier, calc.url, change(calc.sha, {"tests/test_add.py": test,
                                                                  "src/calc/__init__.py": FAKE_FIX}), "atexit")
    print("held:", refused)
    assert refused.stage == "report" and "after the session's end record" in str(refused)

    exits = TEST_ADD + "\n\ndef test_zz_leave():\n    os._exit(0)\n"
    refused = await refusal(verifier, calc.url, change(calc.sha, {"tests/test_add.py": "import os\n" + exits,
                                                                  "src/calc/__init__.py": FIXED.replace("a * b", "a ** b")}),
                            "exits")
    assert refused.stage == "report" and "ended before the runner finished" in str(refused)


async def test_a_new_test_module_cannot_hide_what_the_fix_breaks(calc: Repo, verifier: Verifier) -> None:
    """The fix breaks mul; the new test module patches mul back when it is imported, so in one
    suite process every old test would pass. The suite runs without the files the change adds."""
    patcher = "import calc\n\ncalc.mul = lambda a, b: a * b  # 'helper' for the tests\n\n" + TEST_ADD
    print("attack: a new test module that patches the broken function back at import")
    refused = await refusal(verifier, calc.url, change(calc.sha, {
        "tests/test_add.py": patcher, "src/calc/__init__.py": FIXED.replace("a * b", "a ** b")}), "patches-back")
    print("held:", refused)
    assert refused.stage == "suite" and refused.evidence["new_failures"] == ["tests/test_mul.py::test_mul"]


async def test_nothing_a_run_writes_reaches_the_next_run(calc: Repo, verifier: Verifier) -> None:
    """Each run gets a fresh copy: a test module that plants a file at collection (a conftest, a
    rewritten source) finds the tree pristine in every run after."""
    planter = ("import pathlib\n\n"
               "planted = pathlib.Path('conftest.py')\n"
               "assert not planted.exists(), 'a file planted by an earlier run is here'\n"
               "planted.write_text('raise SystemExit(0)\\n')\n\n" + TEST_ADD)
    print("attack: the test module writes a conftest that ends every later run 'successfully' into the checkout")
    evidence = await verify(verifier, calc.url, change(calc.sha, {"tests/test_add.py": planter,
                                                                  "src/calc/__init__.py": FIXED}), "planter")
    print("held: every run found the tree as the platform made it;", evidence.fail_to_pass)
    assert evidence.fail_to_pass == ["tests/test_add.py::test_add"]
    assert evidence.red.tests == {"tests/test_add.py::test_add": "failed"}


# -- unittest repository ------------------------------------------------------------------


async def test_root_level_test_py_counts_as_a_test_file_for_unittest(root: Path, workspaces: WorkspaceManager,
                                                                     verifier: Verifier) -> None:
    url, sha = make_remote(root / "unit", {
        "mathx.py": "def double(x):\n    return x + 2\n",
        "test.py": ("import unittest\n\nimport mathx\n\n\nclass TestMath(unittest.TestCase):\n"
                    "    def test_two(self):\n        self.assertEqual(mathx.double(2), 4)\n")})
    await workspaces.resolve(url)
    test_py = ("import unittest\n\nimport mathx\n\n\nclass TestMath(unittest.TestCase):\n"
               "    def test_two(self):\n        self.assertEqual(mathx.double(2), 4)\n\n"
               "    def test_three(self):\n        self.assertEqual(mathx.double(3), 6)\n")

    evidence = await verify(verifier, url, change(sha, {
        "test.py": test_py, "mathx.py": "def double(x):\n    return x * 2\n"}), "unittest-root")

    assert evidence.runner == "unittest"
    assert evidence.test_files == ["test.py"] and evidence.fix_files == ["mathx.py"]
    assert evidence.fail_to_pass == ["test.TestMath.test_three"]
    assert evidence.red.tests["test.TestMath.test_two"] == "passed"
    assert evidence.suite.exit_code == 0 and "Ran 2 tests" in evidence.suite.output_tail


async def test_a_suite_that_hangs_is_killed_at_its_limit_and_said_to(root: Path, workspaces: WorkspaceManager,
                                                                     verifier: Verifier) -> None:
    url, sha = make_remote(root / "hangs", {
        ".fixfleet.yml": "test_runner: unittest\ntimeouts: {suite_s: 3}\n",
        "mathx.py": "def double(x):\n    return x + 2\n",
        "test_wait.py": ("import subprocess\nimport time\nimport unittest\n\n\nclass TestWait(unittest.TestCase):\n"
                         "    def test_waits(self):\n        subprocess.Popen(['sleep', '4171'])\n"
                         "        time.sleep(10**6)\n")})
    await workspaces.resolve(url)
    test_py = ("import unittest\n\nimport mathx\n\n\nclass TestMath(unittest.TestCase):\n"
               "    def test_two(self):\n        self.assertEqual(mathx.double(3), 6)\n")

    with pytest.raises(EvidenceError) as refused:
        await verify(verifier, url, change(sha, {"test_math.py": test_py,
                                                 "mathx.py": "def double(x):\n    return x * 2\n"}), "hangs")

    assert "the full test suite did not finish within 3s" in str(refused.value)
    suite = refused.value.evidence["suite"]
    assert suite["timed_out"] and suite["exit_code"] == 124 and suite["seconds"] < 60  # not the 10**6 s it sleeps
    assert refused.value.evidence["fail_to_pass"] == [] and not refused.value.evidence["green"]["timed_out"]
    assert not [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "4171"]]


async def test_tests_reach_only_the_domains_the_repository_allows(root: Path, workspaces: WorkspaceManager,
                                                                  verifier: Verifier) -> None:
    fetch = ("import urllib.request\n\nimport mathx\n\n\ndef test_index_and_double():\n"
             "    with urllib.request.urlopen('https://pypi.org/simple/six/', timeout=20) as answer:\n"
             "        assert answer.status == 200\n"
             "    assert mathx.double(3) == 6\n")
    files = {"mathx.py": "def double(x):\n    return x + 2\n", "requirements-test.txt": "pytest\n"}
    allowed_url, allowed_sha = make_remote(root / "net-allowed", files | {".fixfleet.yml": "network: {test: [pypi.org]}\n"})
    closed_url, closed_sha = make_remote(root / "net-closed", files)
    fixed = {"tests/test_net.py": fetch, "mathx.py": "def double(x):\n    return x * 2\n"}
    for url in (allowed_url, closed_url):
        await workspaces.resolve(url)

    evidence = await verify(verifier, allowed_url, change(allowed_sha, fixed), "net-allowed")
    assert evidence.fail_to_pass == ["tests/test_net.py::test_index_and_double"]

    refused = await refusal(verifier, closed_url, change(closed_sha, fixed), "net-closed")
    assert "GREEN check failed" in str(refused)  # RED failed too, on the network: no network by default
    assert "Tunnel connection failed: 403" in refused.evidence["green"]["output_tail"] or \
        "urlopen error" in refused.evidence["green"]["output_tail"]


# -- JavaScript repository ----------------------------------------------------------------


async def test_node_test_repository_is_proven_too(root: Path, workspaces: WorkspaceManager, verifier: Verifier) -> None:
    test_js = ("const test = require('node:test');\nconst assert = require('node:assert');\n"
               "const { add } = require('../index.js');\n\n"
               "test('adds', () => {\n  assert.strictEqual(add(2, 3), 5);\n});\n")
    url, sha = make_remote(root / "js", {
        "package.json": '{"name": "jsadd", "version": "1.0.0", "scripts": {"test": "node --test"}}\n',
        "index.js": "exports.add = (a, b) => a - b;\n"})
    await workspaces.resolve(url)

    evidence = await verify(verifier, url, change(sha, {
        "test/add.test.js": test_js, "index.js": "exports.add = (a, b) => a + b;\n"}), "node")

    assert evidence.runner == "node" and evidence.test_files == ["test/add.test.js"]
    assert evidence.fail_to_pass == ["test/add.test.js > adds"]
    assert evidence.suite.exit_code == 0
