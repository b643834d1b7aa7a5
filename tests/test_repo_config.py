"""How a repository is set up and tested (fixfleet/workspace/repo_config.py): `.fixfleet.yml`
parsing, the operator's override, and detection from the bytes of the repository's own files."""

from __future__ import annotations

import json
import shlex

import pytest

from fixfleet.workspace.repo_config import (
    NPM,
    PYPI,
    YARN,
    InvalidRepoConfig,
    RepoConfig,
    SetupPlan,
    Timeouts,
    detect_node,
    detect_python,
    parse_config,
    resolve,
)

VENV = 'uv venv --allow-existing --quiet --python "$FIXFLEET_PYTHON" /env'


def with_names(named: dict[str, str]) -> dict[str, bytes]:
    return {name: text.encode() for name, text in named.items()}


def installs(plan: SetupPlan) -> list[str]:
    return [step for step in plan.steps if step != VENV]


PYPROJECT = """
[project]
name = "demo"
version = "1.0"
dependencies = ["requests"]
"""


# -- Python: what gets installed ----------------------------------------------------------


def test_a_pyproject_with_a_tests_extra_installs_it_editable() -> None:
    plan = detect_python(with_names({"pyproject.toml": PYPROJECT + """
[project.optional-dependencies]
docs = ["sphinx"]
tests = ["pytest", "hypothesis"]
dev = ["ruff"]
"""}))
    assert plan.steps[0] == VENV
    assert plan.steps[1] == "uv pip install -e '/workspace[tests]'"
    assert plan.language == "python" and plan.setup_domains == PYPI and plan.source == "detected"
    assert any("extras tests" in reason for reason in plan.reasons)


@pytest.mark.parametrize(("declared", "chosen"), [
    (["dev"], "dev"),
    (["dev", "test"], "test"),
    (["testing", "dev"], "testing"),
    (["test", "tests"], "tests"),
    (["docs"], None),
])
def test_dev_is_only_the_test_extra_when_there_is_no_other(declared: list[str], chosen: str | None) -> None:
    extras = "\n".join(f'{name} = ["x"]' for name in declared)
    plan = detect_python(with_names({"pyproject.toml": PYPROJECT + f"\n[project.optional-dependencies]\n{extras}\n"}))
    assert plan.steps[1] == (f"uv pip install -e '/workspace[{chosen}]'" if chosen else "uv pip install -e '/workspace'")


def test_setup_cfg_extras_require() -> None:
    plan = detect_python(with_names({"setup.cfg": """
[metadata]
name = demo

[options.extras_require]
Testing =
    pytest
docs = sphinx
"""}))
    assert "uv pip install -e '/workspace[testing]'" in plan.steps  # configparser lowercases keys


def test_setup_py_extras_require_read_by_regex() -> None:
    plan = detect_python(with_names({"setup.py": """
from setuptools import setup
setup(
    name="demo",
    extras_require={
        'docs': ['sphinx'],
        "test": ["pytest>=7", "mock"],
    },
)
"""}))
    assert "uv pip install -e '/workspace[test]'" in plan.steps


def test_a_bare_setup_py_is_installed_without_extras() -> None:
    plan = detect_python(with_names({"setup.py": "from setuptools import setup\nsetup(name='x')\n"}))
    assert installs(plan)[0] == "uv pip install -e '/workspace'"


def test_a_pyproject_without_a_project_is_only_tool_configuration() -> None:
    plan = detect_python(with_names({"pyproject.toml": "[tool.black]\nline-length = 100\n"}))
    assert not any("install -e" in step for step in plan.steps)
    assert any("no packaging or requirements" in reason for reason in plan.reasons)


def test_every_requirements_file_is_installed() -> None:
    plan = detect_python(with_names({
        "requirements.txt": "requests\n", "requirements-dev.txt": "black\n", "requirements/test.txt": "pytest\n",
        "test-requirements.txt": "mock\n", "requirements/base.txt": "six\n"}))
    assert installs(plan)[:4] == ["uv pip install -r requirements.txt", "uv pip install -r requirements-dev.txt",
                                  "uv pip install -r test-requirements.txt", "uv pip install -r requirements/test.txt"]
    assert "uv pip install -r requirements/base.txt" not in plan.steps  # the others include it themselves
    assert any("installs requirements.txt, requirements-dev.txt" in reason for reason in plan.reasons)


def test_pep735_dependency_groups() -> None:
    plan = detect_python(with_names({"pyproject.toml": """
[dependency-groups]
lint = ["ruff"]
test = ["pytest"]
dev = [{include-group = "test"}, "ipython"]
"""}))
    groups = [step for step in plan.steps if "--group" in step]
    assert groups == ["uv pip install --group test"]


def test_tox_deps_plain_lines_kept_options_substitutions_and_factors_skipped() -> None:
    plan = detect_python(with_names({"tox.ini": """
[tox]
envlist = py311

[testenv]
deps =
    pytest>=7  # the runner
    -rrequirements.txt
    -e .
    {[base]deps}
    py38: mock
    django{32,42}: django
    coverage[toml]
    importlib-metadata; python_version < "3.8"
commands = pytest {posargs}
"""}))
    tox = [step for step in plan.steps if step.startswith("uv pip install '")]
    assert len(tox) == 1
    assert shlex.split(tox[0]) == ["uv", "pip", "install", "pytest>=7", "coverage[toml]",
                                   'importlib-metadata; python_version < "3.8"']


def test_a_broken_tox_ini_or_pyproject_is_no_crash() -> None:
    plan = detect_python(with_names({"tox.ini": "[testenv\ndeps = x", "pyproject.toml": "[project\nname="}))
    assert plan.test_runner == "unittest"


# -- Python: which runner ------------------------------------------------------------------


@pytest.mark.parametrize("repository", [
    {"pyproject.toml": "[tool.pytest.ini_options]\naddopts = '-q'\n"},
    {"tox.ini": "[pytest]\ntestpaths = tests\n"},
    {"setup.cfg": "[tool:pytest]\ntestpaths = tests\n"},
    {"pytest.ini": "[pytest]\n"},
])
def test_pytest_configuration_means_pytest(repository: dict[str, str]) -> None:
    plan = detect_python(with_names(repository))
    assert plan.test_runner == "pytest"
    assert "pytest configuration found" in plan.reasons
    assert plan.steps[-1] == "uv pip install pytest"


def test_pytest_named_in_a_requirements_file_means_pytest() -> None:
    plan = detect_python(with_names({"requirements-dev.txt": "black\npytest-cov\npytest==8.0\n"}))
    assert plan.test_runner == "pytest"
    assert "requirements-dev.txt names pytest" in plan.reasons


def test_nothing_naming_pytest_means_unittest() -> None:
    plan = detect_python(with_names({"requirements.txt": "requests\n", "pyproject.toml": PYPROJECT}))
    assert plan.test_runner == "unittest"
    assert "uv pip install pytest" not in plan.steps


def test_the_fixfleet_file_naming_pytest_does_not_pick_the_runner() -> None:
    plan = resolve(with_names({".fixfleet.yml": "suite_command: python -m pytest -q\n", "pyproject.toml": PYPROJECT}))
    assert plan.test_runner == "unittest"


# -- Node ---------------------------------------------------------------------------------


def package(test: str | None = None, dev: dict[str, str] | None = None, **scripts: str) -> bytes:
    body: dict = {"name": "demo", "devDependencies": dev or {}}
    if test is not None:
        body["scripts"] = {"test": test, **scripts}
    return json.dumps(body).encode()


@pytest.mark.parametrize(("script", "runner", "command"), [
    ("jest", "jest", "jest"), ("jest --coverage", "jest", "jest --coverage"),
    ("mocha 'test/**/*.js'", "mocha", "mocha 'test/**/*.js'"), ("node --test", "node", "node --test"),
    ("vitest run", "vitest", "vitest run"), ("cross-env NODE_ENV=test jest", "jest", "jest"),
])
def test_the_test_script_names_the_runner_which_runs_itself(script: str, runner: str, command: str) -> None:
    plan = detect_node({"package.json": package(script)})
    assert plan.test_runner == runner
    assert plan.test_script == command  # the runner's own command line: no wrapper, no npm
    assert plan.suite_command is None  # the runner's whole suite, not `npm test`
    assert plan.language == "node" and plan.setup_domains == NPM


def test_a_lockfile_means_npm_ci_and_none_npm_install() -> None:
    with_lock = detect_node({"package.json": package("jest"), "package-lock.json": b"{}"})
    assert with_lock.steps == ["npm ci --no-audit --no-fund"]
    shrinkwrap = detect_node({"package.json": package("jest"), "npm-shrinkwrap.json": b"{}"})
    assert shrinkwrap.steps == ["npm ci --no-audit --no-fund"]
    without = detect_node({"package.json": package("jest")})
    assert without.steps == ["npm install --no-audit --no-fund --no-package-lock"]


def test_the_runner_from_dev_dependencies_when_the_script_names_none() -> None:
    plan = detect_node({"package.json": package(None, {"mocha": "^10"})})
    assert plan.test_runner == "mocha" and plan.test_script is None and plan.suite_command is None


def test_npm_run_in_the_test_script_is_followed() -> None:
    plan = detect_node({"package.json": package("npm run test:unit", **{"test:unit": "node --test test/"})})
    assert plan.test_runner == "node"


@pytest.mark.parametrize("text", [b"[]", b"\xff\xfe", b"{not json", b'{"scripts": [1]}', b'{"devDependencies": ["jest"]}'])
def test_a_malformed_package_json_is_not_a_crash(text: bytes) -> None:
    with pytest.raises(InvalidRepoConfig, match="names no runner fixfleet knows"):
        detect_node({"package.json": text})
    assert resolve({"package.json": text, ".fixfleet.yml": b"test_runner: jest\n"}).test_runner == "jest"


def test_a_runner_named_in_the_file_serves_a_script_detection_cannot_read() -> None:
    repository = {"package.json": package('echo "Error: no test specified" && exit 1'),
                  ".fixfleet.yml": b"test_runner: mocha\n"}
    plan = resolve(repository)
    assert plan.language == "node" and plan.test_runner == "mocha"
    assert "test runner mocha from .fixfleet.yml" in plan.reasons


def test_python_wins_when_both_kinds_of_file_are_there() -> None:
    plan = resolve({"package.json": package("jest"), "pyproject.toml": PYPROJECT.encode()})
    assert plan.language == "python"


# -- .fixfleet.yml and the operator's settings ------------------------------------------


FULL_FILE = """
language: python
python: "3.12"
setup:
  - uv pip install -e '.[all]'
  - make deps
test_runner: pytest
suite_command: python -m pytest -q tests/unit
timeouts: {setup_s: 100, test_s: 50, suite_s: 500}
network:
  setup: [pypi.org, "*.example.com", "mirror.internal:8443"]
  test: [api.example.com]
env: {TZ: UTC, DJANGO_SETTINGS_MODULE: app.settings}
"""


def test_the_file_overrides_every_detected_choice() -> None:
    repository = with_names({".fixfleet.yml": FULL_FILE, "requirements.txt": "requests\n"})
    plan = resolve(repository, default_suite_command="python -m pytest -x")
    assert plan.source == "file"
    assert plan.python == "3.12"
    assert plan.steps == ["uv pip install -e '.[all]'", "make deps"]
    assert plan.test_runner == "pytest" and plan.suite_command == "python -m pytest -q tests/unit"
    assert plan.timeouts == Timeouts(setup_s=100, test_s=50, suite_s=500)
    assert plan.setup_domains == ["pypi.org", "*.example.com", "mirror.internal:8443"]
    assert plan.test_domains == ["api.example.com"]
    assert plan.env == {"TZ": "UTC", "DJANGO_SETTINGS_MODULE": "app.settings"}
    assert plan.reasons[0] == "setup commands from .fixfleet.yml"


def test_what_the_file_leaves_out_is_detected() -> None:
    repository = with_names({".fixfleet.yml": "env: {TZ: UTC}\n", "requirements.txt": "pytest\n"})
    plan = resolve(repository)
    assert plan.source == "file" and plan.env == {"TZ": "UTC"}
    assert plan.steps == [VENV, "uv pip install -r requirements.txt", "uv pip install pytest"]
    assert plan.test_runner == "pytest" and plan.setup_domains == PYPI and plan.test_domains == []
    assert plan.timeouts == Timeouts()


def test_an_empty_setup_list_means_no_setup() -> None:
    plan = resolve(with_names({".fixfleet.yml": "setup: []\n", "requirements.txt": "x\n"}))
    assert plan.steps == []


def test_the_operators_settings_win_over_the_file() -> None:
    repository = with_names({".fixfleet.yml": FULL_FILE, "requirements.txt": "requests\n"})
    settings = RepoConfig(setup=["./bootstrap.sh"], test_runner="unittest", env={"CI": "1"})
    plan = resolve(repository, settings)
    assert plan.source == "settings"
    assert plan.steps == ["./bootstrap.sh"] and plan.test_runner == "unittest" and plan.env == {"CI": "1"}
    assert plan.reasons[0] == "setup commands from FIXFLEET_REPO_CONFIGS"
    assert plan.python is None and plan.test_domains == []  # the file is not merged in


def test_a_broken_file_does_not_matter_when_the_operator_configured_the_repository() -> None:
    plan = resolve(with_names({".fixfleet.yml": "[[[", "requirements.txt": "x\n"}), RepoConfig())
    assert plan.source == "settings"


def test_the_default_suite_command_serves_python_repositories_only() -> None:
    python = resolve(with_names({"requirements.txt": "pytest\n"}), default_suite_command="python -m pytest -q")
    assert python.suite_command == "python -m pytest -q"
    node = resolve({"package.json": package(None, {"jest": "1"})}, default_suite_command="python -m pytest -q")
    assert node.language == "node" and node.suite_command is None
    named = resolve(with_names({".fixfleet.yml": "suite_command: tox\n"}), default_suite_command="python -m pytest")
    assert named.suite_command == "tox"


@pytest.mark.parametrize(("text", "field"), [
    ("setup: [unclosed", "not valid YAML"),
    ("- a list\n- at the top\n", "a mapping at the top level"),
    ("stup: [x]\n", "stup"),
    ("timeouts: {setup: 5}\n", "timeouts.setup"),
    ("timeouts: {setup_s: 0}\n", "timeouts.setup_s"),
    ("network: {setup: [pypi.org/evil]}\n", "network.setup"),
    ("network: {test: ['evil.com; curl x']}\n", "network.test"),
    ("network: {test: ['http://evil.com']}\n", "network.test"),
    ("env: {PATH: /evil}\n", "env"),
    ("env: {LD_PRELOAD: /evil.so}\n", "env"),
    ("env: {home: /x}\n", "env"),
    ("env: {'A B': x}\n", "env"),
    ("test_runner: nose\n", "test_runner"),
    ("language: ruby\n", "language"),
    ("python: 3.10\n", "python"),  # a YAML float: 3.1, not what was meant
    ("setup: make\n", "setup"),
])
def test_an_invalid_file_names_the_field(text: str, field: str) -> None:
    with pytest.raises(InvalidRepoConfig, match=f"^\\.fixfleet\\.yml: .*{field.replace('.', '[.]')}") as raised:
        parse_config(text)
    with pytest.raises(InvalidRepoConfig):
        resolve({".fixfleet.yml": text.encode()})
    assert "Traceback" not in str(raised.value)


def test_the_error_names_where_the_configuration_came_from() -> None:
    with pytest.raises(InvalidRepoConfig, match="^FIXFLEET_REPO_CONFIGS\\[x\\]: env"):
        parse_config("env: {PATH: x}", where="FIXFLEET_REPO_CONFIGS[x]")


def test_an_empty_file_is_an_empty_configuration() -> None:
    assert parse_config("") == RepoConfig()
    assert parse_config(b"# nothing\n") == RepoConfig()


# -- the plan as text ---------------------------------------------------------------------


def test_describe_mentions_every_step_and_the_runner() -> None:
    plan = detect_python(with_names({"pyproject.toml": PYPROJECT + '[project.optional-dependencies]\ntest = ["pytest"]\n',
                                     "requirements-test.txt": "mock\n"}))
    text = plan.describe()
    for step in plan.steps:
        assert f"$ {step}" in text
    assert "tests run with pytest; suite: pytest (whole suite)" in text
    assert text.startswith("python environment (detected): installs the package editable with its extras test")
    node = resolve({"package.json": package("jest"), "package-lock.json": b"{}"}).describe()
    assert "$ npm ci --no-audit --no-fund" in node and "tests run with jest: jest; suite: jest (whole suite)" in node


# -- nothing from the repository escapes its quoting ---------------------------------------


EVIL = "x'; rm -rf / #"


def _no_injection(plan: SetupPlan) -> None:
    for step in plan.steps:
        words = shlex.split(step, comments=False)
        assert "rm" not in words and "-rf" not in words, step


def test_an_evil_extra_name_never_reaches_a_step() -> None:
    pyproject = PYPROJECT + f'[project.optional-dependencies]\n"{EVIL}" = ["x"]\ntests = ["pytest"]\n'
    plan = detect_python(with_names({"pyproject.toml": pyproject}))
    _no_injection(plan)
    assert "uv pip install -e '/workspace[tests]'" in plan.steps
    cfg = detect_python(with_names({"setup.cfg": f"[options.extras_require]\n{EVIL} = x\ntest = y\n"}))
    _no_injection(cfg)
    setup_py = detect_python(with_names({"setup.py": f'setup(extras_require={{"{EVIL}": [], "test": []}})\n'}))
    _no_injection(setup_py)
    assert "uv pip install -e '/workspace[test]'" in setup_py.steps


def test_an_evil_dependency_group_never_reaches_a_step() -> None:
    plan = detect_python(with_names({"pyproject.toml": f'[dependency-groups]\n"{EVIL}" = ["x"]\n'}))
    _no_injection(plan)
    assert not any("--group" in step for step in plan.steps)


def test_an_evil_tox_dependency_stays_one_quoted_word() -> None:
    plan = detect_python(with_names({"tox.ini": f"[testenv]\ndeps =\n    pytest\n    {EVIL}\n    a$(id)`id`\n"}))
    _no_injection(plan)
    tox = next(step for step in plan.steps if step.startswith("uv pip install '"))
    assert shlex.split(tox) == ["uv", "pip", "install", "pytest", "x'; rm -rf /", "a$(id)`id`"]


# -- Python: lockfiles and package managers --------------------------------------------------


UV_PROJECT = PYPROJECT + """
[project.optional-dependencies]
tests = ["hypothesis"]
docs = ["sphinx"]

[dependency-groups]
test = ["pytest"]
dev = ["ruff"]
lint = ["ruff"]
"""


def test_a_committed_uv_lock_means_a_frozen_sync_with_the_test_groups_and_extra() -> None:
    plan = detect_python(with_names({"pyproject.toml": UV_PROJECT, "uv.lock": "version = 1\n",
                                     "requirements-dev.txt": "pytest\n"}))
    assert installs(plan) == ['uv sync --frozen --python "$FIXFLEET_PYTHON" --group test --group dev --extra tests',
                              "uv pip install pytest"]  # nothing when the lock has it
    assert plan.package_manager == "uv"
    assert plan.reasons[0] == ("uv.lock committed: a frozen uv sync installs the locked versions "
                               "with the group(s) test, dev with the extra(s) tests")


POETRY_PROJECT = """
[tool.poetry]
name = "demo"
version = "0.1.0"

[tool.poetry.dependencies]
python = "^3.9"
requests = "*"

[tool.poetry.group.dev.dependencies]
pytest-mock = "^3"

[tool.poetry.group.docs.dependencies]
sphinx = "*"

[tool.poetry.extras]
test = ["requests"]
"""


def test_poetry_installs_its_lock_with_the_dev_group_at_the_version_that_wrote_it() -> None:
    lock = "# This file is automatically @generated by Poetry 1.8.3 and should not be changed by hand.\n"
    plan = detect_python(with_names({"pyproject.toml": POETRY_PROJECT, "poetry.lock": lock}))
    assert installs(plan) == [("POETRY_VIRTUALENVS_CREATE=false uv tool run --python \"$FIXFLEET_PYTHON\" "
                              "--from 'poetry==1.8.3' poetry install --no-interaction --with dev -E test"),
                              "uv pip install pytest"]
    assert plan.reasons[0].startswith("poetry.lock committed: Poetry installs the locked versions (Poetry 1.8.3")
    assert plan.requires_python == ">=3.9,<4"  # Poetry's caret, in PEP 440 terms
    unlocked = detect_python(with_names({"pyproject.toml": POETRY_PROJECT}))
    assert "--from 'poetry' poetry install --no-interaction --with dev" in unlocked.steps[1]
    assert "without poetry.lock: Poetry resolves" in unlocked.reasons[0]


PDM_LOCK = """
[metadata]
groups = ["default", "test"]
lock_version = "4.5.0"

[[package]]
name = "pytest"
version = "8.3.3"
groups = ["test"]

[[package]]
name = "colorama"
version = "0.4.6"
groups = ["test"]
marker = "sys_platform == \\"win32\\""

[[package]]
name = "sphinx"
version = "7.0.0"
groups = ["docs"]

[[package]]
name = "evil"
version = "1.0\\nFIXFLEET_LOCKED_PINS\\nrm -rf /"

[[package]]
name = "requests"
version = "2.32.3"
groups = ["default"]
extras = ["socks"]

[[package]]
name = "demo"
path = "."
"""


def test_a_pdm_lock_is_installed_as_locked_for_the_default_and_test_groups() -> None:
    pyproject = PYPROJECT + '[tool.pdm.dev-dependencies]\ntest = ["pytest"]\ndocs = ["sphinx"]\n'
    plan = detect_python(with_names({"pyproject.toml": pyproject, "pdm.lock": PDM_LOCK}))
    assert plan.steps[1].splitlines() == ["uv pip install --no-deps -r /dev/stdin <<'FIXFLEET_LOCKED_PINS'",
                                          "pytest==8.3.3", 'colorama==0.4.6 ; sys_platform == "win32"',
                                          "requests[socks]==2.32.3", "FIXFLEET_LOCKED_PINS"]
    assert plan.steps[2] == "uv pip install --no-deps -e /workspace" and plan.package_manager == "pdm"
    assert plan.reasons[0] == "pdm.lock committed: its 3 locked packages of the group(s) default, test installed as they are"
    assert "# and 4 more lines" in plan.describe()  # the pins are not all printed in the PR


def test_a_pipenv_lock_is_installed_by_pipenv() -> None:
    pipenv = detect_python(with_names({"Pipfile": "[dev-packages]\npytest = '*'\n", "Pipfile.lock": "{}"}))
    assert "pipenv sync --dev" in pipenv.steps[1] and pipenv.package_manager == "pipenv"


def test_the_lockfiles_order_decides_which_tool_installs() -> None:
    both = detect_python(with_names({"pyproject.toml": POETRY_PROJECT, "poetry.lock": "", "uv.lock": ""}))
    assert both.package_manager == "uv"


def test_hatch_pdm_and_nox_test_dependencies_without_a_lock() -> None:
    pyproject = PYPROJECT + """
[project.optional-dependencies]
cli = ["click"]

[tool.hatch.envs.test]
dependencies = ["pytest-mock", "coverage[toml]>=7", "{root:uri}/extra"]
features = ["cli"]

[tool.pdm.dev-dependencies]
test = ["pytest-xdist", "-e file:///${PROJECT_ROOT}/#egg=demo"]
"""
    noxfile = 'import nox\n@nox.session\ndef tests(session):\n    session.install(".", "pytest-randomly", "-e", "x; rm -rf /")\n'
    plan = detect_python(with_names({"pyproject.toml": pyproject, "noxfile.py": noxfile}))
    assert "uv pip install -e '/workspace[cli]'" in plan.steps
    assert "uv pip install 'pytest-mock' 'coverage[toml]>=7'" in plan.steps
    assert "uv pip install 'pytest-xdist'" in plan.steps
    assert "uv pip install 'pytest-randomly'" in plan.steps  # only plain requirement literals
    _no_injection(plan)


@pytest.mark.parametrize(("files", "pin", "requires"), [
    ({".python-version": "3.12.1\n"}, "3.12", None),
    ({".python-version": "# comment\ncpython-3.10\n"}, "3.10", None),
    ({"pyproject.toml": '[project]\nname = "x"\nrequires-python = ">=3.12"\n'}, None, ">=3.12"),
    ({"setup.cfg": "[options]\npython_requires = >=3.8\n"}, None, ">=3.8"),
    ({"setup.py": "setup(python_requires='>=3.7, <4')\n"}, None, ">=3.7, <4"),
])
def test_the_python_the_repository_pins_is_in_the_plan(files: dict[str, str], pin: str | None,
                                                       requires: str | None) -> None:
    plan = detect_python(with_names(files))
    assert (plan.python_pin, plan.requires_python) == (pin, requires)


# -- Node: package managers ------------------------------------------------------------------


def node_package(**fields: object) -> bytes:
    return json.dumps({"name": "demo", "scripts": {"test": "vitest run"}, "devDependencies": {"vitest": "^3"},
                       **fields}).encode()


@pytest.mark.parametrize(("files", "step", "manager"), [
    ({"package.json": node_package(packageManager="pnpm@9.15.0+sha512.abc"), "pnpm-lock.yaml": b"lockfileVersion: '9.0'\n"},
     "corepack pnpm install --frozen-lockfile", "pnpm@9.15.0"),
    ({"package.json": node_package(), "pnpm-lock.yaml": b"lockfileVersion: '6.0'\n"},
     "corepack pnpm@8 install --frozen-lockfile", "pnpm@8"),
    ({"package.json": node_package(), "yarn.lock": b"# yarn lockfile v1\n"},
     "corepack yarn@1.22.22 install --non-interactive --ignore-engines --frozen-lockfile", "yarn@1.22.22"),
    ({"package.json": node_package(), "yarn.lock": b"__metadata:\n  version: 8\n"},
     "YARN_NODE_LINKER=node-modules corepack yarn@4 install --immutable", "yarn@4"),
    ({"package.json": node_package(packageManager="yarn@4.5.0"), "yarn.lock": b"__metadata:\n  version: 8\n"},
     "YARN_NODE_LINKER=node-modules corepack yarn install --immutable", "yarn@4.5.0"),
    ({"package.json": node_package(packageManager="pnpm@9.1.0")},
     "corepack pnpm install --no-frozen-lockfile", "pnpm@9.1.0"),
    ({"package.json": node_package(packageManager="bun@1.1.0"), "package-lock.json": b"{}"},
     "npm ci --no-audit --no-fund", "npm"),
])
def test_package_manager_field_and_lockfile_pick_the_installer(files: dict[str, bytes], step: str, manager: str) -> None:
    plan = detect_node(files)
    assert plan.steps == [step] and plan.package_manager == manager
    assert plan.setup_domains == (YARN if manager.startswith("yarn") else NPM)


def test_the_package_manager_field_wins_over_another_tools_lockfile_and_says_so() -> None:
    plan = detect_node({"package.json": node_package(packageManager="pnpm@9.15.0"), "package-lock.json": b"{}"})
    assert plan.steps == ["corepack pnpm install --no-frozen-lockfile"]
    assert plan.reasons[:2] == ["package.json's packageManager is pnpm@9.15.0",
                                "package-lock.json ignored: the project installs with pnpm"]


@pytest.mark.parametrize(("scripts", "command", "why"), [
    ({"test": "vitest --ui"}, "vitest run", "is interactive: `vitest run` instead (--ui dropped)"),
    ({"test": "vitest --ui", "test:ci": "vitest run --coverage"}, "vitest run --coverage", "its test:ci script"),
    ({"test": "pnpm lint && pnpm typecheck && vitest run", "lint": "eslint ."}, "vitest run",
     "(from `pnpm lint && pnpm typecheck && vitest run`)"),
    ({"test": "jest --watchAll"}, "jest", "(--watchAll dropped)"),
    ({"test": "npm run unit", "unit": "mocha -w test/"}, "mocha test/", "(-w dropped)"),
])
def test_the_test_command_is_the_runner_itself_never_interactive(scripts: dict[str, str], command: str, why: str) -> None:
    body = {"name": "demo", "scripts": scripts, "devDependencies": {"vitest": "3", "jest": "29", "mocha": "10"}}
    plan = detect_node({"package.json": json.dumps(body).encode()})
    assert plan.test_script == command and plan.suite_command is None
    assert why in plan.reasons[-1], plan.reasons
    assert f"tests run with {plan.test_runner}: {command}; suite: {plan.test_runner} (whole suite)" in plan.describe()


def test_the_node_pins_are_in_the_plan() -> None:
    plan = detect_node({"package.json": node_package(engines={"node": ">=22"}), ".nvmrc": b"v22.1.0\n"})
    assert (plan.node_engines, plan.node_pin) == (">=22", "v22.1.0")


# -- files the setup generates ---------------------------------------------------------------


def test_only_the_version_files_the_config_names_are_laid_and_never_code_that_runs_at_start() -> None:
    pyproject = ('[tool.setuptools_scm]\nwrite_to = "conftest.py"\nversion_file = "src/pkg/_version.py"\n'
                 '[tool.hatch.build.hooks.vcs]\nversion-file = "src/pkg/zz.pth"\n')
    plan = resolve(with_names({"pyproject.toml": pyproject}))
    assert plan.generated == ["src/pkg/_version.py"]
    assert "conftest.py ([tool.setuptools_scm] write_to) is never laid into checkouts: " \
           "conftest.py runs code or configures how tests run" in plan.reasons
    assert any(r.startswith("src/pkg/zz.pth ([tool.hatch.build.hooks.vcs] version-file) is never laid")
               for r in plan.reasons)
    named = resolve(with_names({".fixfleet.yml": "generated: [build/meta.json]\n", "requirements.txt": "x\n"}))
    assert named.generated == ["build/meta.json"]


@pytest.mark.parametrize("path", ["conftest.py", "tests/conftest.py", "x.pth", "sitecustomize.py", "pytest.ini",
                                  ".pytest.ini", "pytest.toml", ".pytest.toml", "vitest.config.ts", "jest.config.js", ".mocharc.yml", "package.json",
                                  "../outside.py", "/etc/passwd", ".git/hooks/pre-commit", "a/./b.py"])
def test_the_config_may_not_name_a_generated_file_that_runs_code(path: str) -> None:
    with pytest.raises(InvalidRepoConfig, match="generated"):
        parse_config(json.dumps({"generated": [path]}))


def test_a_named_setup_is_not_given_the_detected_package_manager() -> None:
    repository = {"package.json": node_package(packageManager="pnpm@9.15.0"), "pnpm-lock.yaml": b"lockfileVersion: '9.0'\n",
                  ".fixfleet.yml": b"setup: [npm ci]\n"}
    plan = resolve(repository)
    assert plan.steps == ["npm ci"] and plan.package_manager is None
    assert plan.test_script == "vitest run"  # the test command is still the runner's own
