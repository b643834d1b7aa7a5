"""How a repository is set up and tested: `.fixfleet.yml`, the operator's settings, or detection.

A repository says it in `.fixfleet.yml` at its root:

    language: python                 # python | node; detected when absent
    python: "3.11"                   # interpreter version (or an absolute path on the host)
    setup:                           # shell commands, run once per environment, in the sandbox
      - uv pip install -e '.[test]'  #   cwd /workspace (a clean checkout), VIRTUAL_ENV=/env
    test_runner: pytest              # pytest | unittest | node | mocha | jest | vitest
    suite_command: python -m pytest -q
    timeouts: {setup_s: 900, test_s: 600, suite_s: 1800}
    network:                         # domains reachable through the platform's proxy
      setup: [pypi.org, files.pythonhosted.org]   # default: the registries the setup uses
      test: []                                    # default: none
    env: {TZ: UTC}                   # non-secret variables for setup and tests

The operator may set the same per repository URL (FIXFLEET_REPO_CONFIGS) for repositories it
cannot change; that wins over the file. Without either, `detect` reads the repository's own
files (the bytes of pyproject.toml, setup.cfg, requirements*.txt, tox.ini, package.json, ...):
all pure functions over data, nothing of the repository runs here.
"""

from __future__ import annotations

import configparser
import json
import re
import tomllib
from collections.abc import Mapping
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fixfleet.errors import PermanentError

CONFIG_FILE = ".fixfleet.yml"
PYPI = ["pypi.org", "files.pythonhosted.org"]
NPM = ["registry.npmjs.org"]
# Files whose bytes decide what an environment holds: a change to any means a new environment.
SPEC_FILES = ("pyproject.toml", "setup.py", "setup.cfg", "requirements.txt", "requirements-dev.txt",
              "requirements-test.txt", "requirements-tests.txt", "requirements_dev.txt", "requirements_test.txt",
              "test-requirements.txt", "test_requirements.txt", "dev-requirements.txt", "requirements/test.txt",
              "requirements/tests.txt", "requirements/dev.txt", "requirements/base.txt",
              "requirements/requirements-tests.txt", "requirements/requirements.txt", "tests/requirements.txt",
              "tox.ini", "uv.lock", "poetry.lock", "Pipfile", "Pipfile.lock", "package.json", "package-lock.json",
              "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml", "pytest.ini", "Makefile", "makefile",
              "noxfile.py", CONFIG_FILE)
TEST_REQUIREMENTS = [name for name in SPEC_FILES if name.endswith(".txt") and
                     re.search(r"test|dev", name) and name != "requirements/base.txt"]
TEST_EXTRAS = ("tests", "test", "testing", "dev")  # in order of preference
Runner = Literal["pytest", "unittest", "node", "mocha", "jest", "vitest"]
# Set by the platform, or able to run code before the repository's own: not for a repository to choose.
RESERVED_ENV = {"PATH", "HOME", "BASH_ENV", "ENV", "PROMPT_COMMAND", "SHELLOPTS", "PYTHONSTARTUP", "NODE_OPTIONS",
                "HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "NO_PROXY"}


class InvalidRepoConfig(ValueError, PermanentError):
    """`.fixfleet.yml` (or the operator's setting) is not valid; the message says where.
    Permanent: someone has to fix the file first. Still a ValueError for callers that catch one."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Timeouts(_Strict):
    setup_s: float = Field(900, gt=0)
    test_s: float = Field(600, gt=0)
    suite_s: float = Field(1800, gt=0)


class Network(_Strict):
    setup: list[str] | None = None  # None: the registries the detected setup needs
    test: list[str] = Field(default_factory=list)

    @field_validator("setup", "test")
    @classmethod
    def _domains(cls, values: list[str] | None) -> list[str] | None:
        for value in values or []:
            if not re.fullmatch(r"(\*\.)?[A-Za-z0-9.-]+(:\d{1,5})?", value):
                raise ValueError(f"{value!r} is not a domain name (like pypi.org or *.example.com)")
        return values


class RepoConfig(_Strict):
    """What the repository (or the operator) says; anything left out is detected."""

    language: Literal["python", "node"] | None = None
    python: str | None = None
    setup: list[str] | None = None
    test_runner: Runner | None = None
    suite_command: str | None = None
    timeouts: Timeouts = Field(default_factory=Timeouts)
    network: Network = Field(default_factory=Network)
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("python")
    @classmethod
    def _version_or_path(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"3\.\d{1,2}|/[A-Za-z0-9._/-]+", value):
            raise ValueError(f"{value!r} is not a Python version like \"3.12\" (or, for the operator, a path)")
        return value

    @field_validator("env")
    @classmethod
    def _names(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name.upper() in RESERVED_ENV \
                    or name.upper().startswith("LD_"):
                raise ValueError(f"{name!r} may not be set")
        return env


class SetupPlan(BaseModel):
    """The resolved recipe: what the environment builder runs and the verifier uses."""

    language: Literal["python", "node"]
    python: str | None = None  # interpreter version wanted ("3.11"), or None: the platform's
    steps: list[str]  # shell commands, in order, inside the setup sandbox
    test_runner: Runner
    test_script: str | None = None  # package.json's `test` script: how a JS runner is invoked
    suite_command: str | None  # None: the runner's own whole-suite command
    timeouts: Timeouts
    setup_domains: list[str]
    test_domains: list[str]
    env: dict[str, str]
    source: Literal["file", "settings", "detected"]
    reasons: list[str]  # why each choice was made, for the plan and the PR

    def describe(self) -> str:
        lines = [f"{self.language} environment ({self.source}): " + "; ".join(self.reasons)]
        lines += [f"  $ {step}" for step in self.steps]
        lines.append(f"  tests run with {self.test_runner}; suite: {self.suite_command or self.test_runner + ' (whole suite)'}")
        return "\n".join(lines)


def parse_config(text: str | bytes, where: str = CONFIG_FILE) -> RepoConfig:
    try:
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise InvalidRepoConfig(f"{where}: expected a mapping at the top level")
        return RepoConfig.model_validate(data)
    except yaml.YAMLError as exc:
        raise InvalidRepoConfig(f"{where}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise InvalidRepoConfig(f"{where}: {problems}") from None


def resolve(files: Mapping[str, bytes], settings_config: RepoConfig | None = None,
            default_suite_command: str | None = None) -> SetupPlan:
    """The setup plan from the repository's files (and the operator's override, which wins).
    `default_suite_command` (FIXFLEET_SUITE_COMMAND) serves Python repositories that name none."""
    if settings_config is not None:
        config, source = settings_config, "settings"
    elif CONFIG_FILE in files:
        config, source = parse_config(files[CONFIG_FILE]), "file"
    else:
        config, source = RepoConfig(), "detected"
    language = config.language or ("node" if "package.json" in files and not _is_python(files) else "python")
    detected = detect_node(files, config.test_runner) if language == "node" else detect_python(files)
    reasons = detected.reasons if config.setup is None else [f"setup commands from {_where(source)}"]
    runner = config.test_runner or detected.test_runner
    if config.test_runner:
        reasons.append(f"test runner {runner} from {_where(source)}")
    return SetupPlan(
        language=language, python=config.python, steps=config.setup if config.setup is not None else detected.steps,
        test_runner=runner, test_script=detected.test_script,
        suite_command=config.suite_command or detected.suite_command
        or (default_suite_command if language == "python" else None), timeouts=config.timeouts,
        setup_domains=config.network.setup if config.network.setup is not None else detected.setup_domains,
        test_domains=config.network.test, env=config.env, source=source, reasons=reasons)


def _where(source: str) -> str:
    return CONFIG_FILE if source == "file" else "FIXFLEET_REPO_CONFIGS"


def _is_python(files: Mapping[str, bytes]) -> bool:
    return any(name in files for name in ("pyproject.toml", "setup.py", "setup.cfg", "requirements.txt"))


# -- Python --------------------------------------------------------------------------------


def detect_python(files: Mapping[str, bytes]) -> SetupPlan:
    reasons: list[str] = []
    steps = ["uv venv --allow-existing --quiet --python \"$FIXFLEET_PYTHON\" /env"]
    pyproject = _toml(files.get("pyproject.toml"))
    installable = any(name in files for name in ("pyproject.toml", "setup.py", "setup.cfg")) and (
        "project" in pyproject or "build-system" in pyproject or "setup.py" in files or "setup.cfg" in files)
    if installable:
        declared = _extras(files, pyproject)
        extras = [e for e in TEST_EXTRAS if e in declared][:1]  # the test extra; `dev` only when there is none
        target = f"/workspace[{','.join(extras)}]" if extras else "/workspace"
        steps.append(f"uv pip install -e '{target}'")
        reasons.append("installs the package editable" + (f" with its extras {', '.join(extras)}" if extras else ""))
    requirements = [name for name in ("requirements.txt", *TEST_REQUIREMENTS) if name in files]
    for name in requirements:
        steps.append(f"uv pip install -r {name}")
    if requirements:
        reasons.append(f"installs {', '.join(requirements)}")
    groups = [g for g in TEST_EXTRAS if g in pyproject.get("dependency-groups", {})][:1]
    for group in groups:
        steps.append(f"uv pip install --group {group}")
    if groups:
        reasons.append(f"installs the dependency group(s) {', '.join(groups)}")
    tox_deps = _tox_deps(files.get("tox.ini"))
    if tox_deps:
        steps.append("uv pip install " + " ".join(_shell_quote(d) for d in tox_deps))
        reasons.append(f"installs tox.ini's test deps ({', '.join(tox_deps)})")
    runner, why = _python_runner(files, pyproject)
    reasons.append(why)
    if runner == "pytest":
        steps.append("uv pip install pytest")
    if not installable and not requirements:
        reasons.append("no packaging or requirements files: tests run from the checkout")
    return SetupPlan(language="python", steps=steps, test_runner=runner, suite_command=None,
                     timeouts=Timeouts(), setup_domains=list(PYPI), test_domains=[], env={},
                     source="detected", reasons=reasons)


def _python_runner(files: Mapping[str, bytes], pyproject: dict[str, Any]) -> tuple[Runner, str]:
    if "pytest" in pyproject.get("tool", {}) or b"[pytest]" in files.get("tox.ini", b"") \
            or b"[tool:pytest]" in files.get("setup.cfg", b"") or "pytest.ini" in files:
        return "pytest", "pytest configuration found"
    named = [name for name, data in files.items() if name != CONFIG_FILE and re.search(rb"\bpytest\b", data)]
    if named:
        return "pytest", f"{named[0]} names pytest"
    return "unittest", "nothing names pytest: the standard library's unittest"


def _extras(files: Mapping[str, bytes], pyproject: dict[str, Any]) -> list[str]:
    extras = list(pyproject.get("project", {}).get("optional-dependencies", {}))
    if "setup.cfg" in files:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_string(files["setup.cfg"].decode("utf-8", "replace"))
            if parser.has_section("options.extras_require"):
                extras += list(parser["options.extras_require"])
        except configparser.Error:
            pass
    if "setup.py" in files:  # a regex over the text: nothing of setup.py runs here
        block = re.search(rb"extras_require\s*=\s*\{(.*?)\}", files["setup.py"], re.S)
        if block:
            extras += [m.decode() for m in re.findall(rb"['\"]([\w.-]+)['\"]\s*:", block.group(1))]
    return list(dict.fromkeys(extras))


def _tox_deps(text: bytes | None) -> list[str]:
    if not text:
        return []
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(text.decode("utf-8", "replace"))
    except configparser.Error:
        return []
    if not parser.has_option("testenv", "deps"):
        return []
    deps = []
    for line in parser.get("testenv", "deps").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-") or "{" in line or ":" in line.split()[0]:
            continue  # options, substitutions and factor-conditional lines: not plain requirements
        deps.append(line)
    return deps


def _toml(data: bytes | None) -> dict[str, Any]:
    if not data:
        return {}
    try:
        return tomllib.loads(data.decode("utf-8", "replace"))
    except tomllib.TOMLDecodeError:
        return {}


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


# -- JavaScript / TypeScript ---------------------------------------------------------------


def detect_node(files: Mapping[str, bytes], runner: Runner | None = None) -> SetupPlan:
    """`runner`: the one the configuration names; detection cannot fail the repository then."""
    from fixfleet.workspace.runners import detect_js_runner

    package = _json_object(files.get("package.json"))
    reasons = []
    if "package-lock.json" in files or "npm-shrinkwrap.json" in files:
        steps = ["npm ci --no-audit --no-fund"]
        reasons.append("npm ci with the committed lockfile")
    else:
        steps = ["npm install --no-audit --no-fund --no-package-lock"]
        reasons.append("no npm lockfile: npm install resolves the dependencies afresh")
    scripts = {k: v for k, v in _mapping(package.get("scripts")).items() if isinstance(v, str)}
    script = scripts.get("test") or ""
    dev = {**_mapping(package.get("dependencies")), **_mapping(package.get("devDependencies"))}
    try:
        runner = runner or detect_js_runner(script, dev, scripts)  # `npm run x` is followed through scripts
    except ValueError:
        raise InvalidRepoConfig(f"package.json's test script ({script or 'none'}) names no runner fixfleet knows "
                                "(jest, vitest, mocha, node --test): set test_runner in .fixfleet.yml") from None
    reasons.append(f"tests run with {runner} (package.json test script: {script or 'none'})")
    return SetupPlan(language="node", steps=steps, test_runner=runner, test_script=script or None,
                     suite_command="npm test" if script else None,
                     timeouts=Timeouts(), setup_domains=list(NPM), test_domains=[], env={},
                     source="detected", reasons=reasons)


def _json_object(data: bytes | None) -> dict[str, Any]:
    # The repository's bytes: any JSON (or none) may be there, and a crash would hide the reason.
    try:
        return _mapping(json.loads(data or b"{}"))
    except ValueError:  # not JSON, not UTF-8
        return {}


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
