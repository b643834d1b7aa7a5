"""How a repository is set up and tested: `.fixfleet.yml`, the operator's settings, or detection.

A repository says it in `.fixfleet.yml` at its root:

    language: python                 # python | node; detected when absent
    python: "3.11"                   # interpreter version (or an absolute path on the host)
    setup:                           # shell commands, run once per environment, in the sandbox
      - uv pip install -e '.[test]'  #   cwd /workspace (a clean checkout), VIRTUAL_ENV=/env
    test_runner: pytest              # pytest | unittest | node | mocha | jest | vitest
    suite_command: python -m pytest -q
    timeouts: {setup_s: 900, test_s: 600, suite_s: 1800}
    generated: [src/pkg/_version.py] # files the setup makes that every checkout needs (never
                                     #   conftest.py, *.pth, or runner configuration)
    network:                         # domains reachable through the platform's proxy
      setup: [pypi.org, files.pythonhosted.org]   # default: the registries the setup uses
      test: []                                    # default: none
    env: {TZ: UTC}                   # non-secret variables for setup and tests
    flaky_tests: [tests/test_net.py::test_retry]  # known flaky: neither prove nor block a change

The operator may set the same per repository URL (FIXFLEET_REPO_CONFIGS) for repositories it
cannot change; that wins over the file. What either leaves out is detected from the
repository's own files, the way its developers set it up (setup_python.py, setup_node.py):
pure functions over bytes, nothing of the repository runs here.
"""

from __future__ import annotations

from collections.abc import Mapping

import yaml
from pydantic import ValidationError

from fixfleet.repo_schema import Network, RepoConfig
from fixfleet.workspace.setup_node import detect_node
from fixfleet.workspace.setup_plan import (
    CONFIG_FILE,
    NPM,
    PYPI,
    YARN,
    InvalidRepoConfig,
    Runner,
    SetupPlan,
    Timeouts,
    dig,
    never_laid,
    toml_document,
)
from fixfleet.workspace.setup_python import REQUIREMENT_FILES, detect_python

__all__ = ["CONFIG_FILE", "NPM", "PYPI", "SPEC_FILES", "YARN", "InvalidRepoConfig", "Network", "RepoConfig",
           "Runner", "SetupPlan", "Timeouts", "detect_node", "detect_python", "parse_config", "resolve"]

# Files whose bytes decide what an environment holds: a change to any means a new environment.
SPEC_FILES = (*REQUIREMENT_FILES, "pyproject.toml", "setup.py", "setup.cfg", "tox.ini", "noxfile.py", "pytest.ini",
              "uv.lock", "poetry.lock", "pdm.lock", "Pipfile", "Pipfile.lock", ".python-version",
              "package.json", "package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml",
              "pnpm-workspace.yaml", ".npmrc", ".yarnrc", ".yarnrc.yml", ".nvmrc", ".node-version",
              "Makefile", "makefile", CONFIG_FILE)
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
    # the runner's reason comes last in a detected plan; it stands when the setup is named
    reasons = detected.reasons if config.setup is None else [f"setup commands from {_where(source)}",
                                                              detected.reasons[-1]]
    runner = config.test_runner or detected.test_runner
    if config.test_runner:
        reasons.append(f"test runner {runner} from {_where(source)}")
    generated, laid_why = generated_files(files, config.generated, source)
    return detected.model_copy(update={
        "python": config.python, "steps": config.setup if config.setup is not None else detected.steps,
        "test_runner": runner, "suite_command": config.suite_command or detected.suite_command
        or (default_suite_command if language == "python" else None), "timeouts": config.timeouts,
        "setup_domains": config.network.setup if config.network.setup is not None else detected.setup_domains,
        "test_domains": config.network.test, "env": config.env, "source": source, "reasons": reasons + laid_why,
        "generated": generated, "flaky_tests": config.flaky_tests,
        # the named setup installs the dependencies; the detected manager is not fetched for it
        "package_manager": detected.package_manager if config.setup is None else None})


def generated_files(files: Mapping[str, bytes], configured: list[str], source: str) -> tuple[list[str], list[str]]:
    """(files a setup makes that checkouts receive, why): only those the repository's own
    configuration names (a setuptools-scm or hatch-vcs version file, `generated:`), never one
    that runs code or configures the tests."""
    pyproject = toml_document(files.get("pyproject.toml"))
    named = {path: f"{_where(source)} generated" for path in configured}
    for keys, label in ((("tool", "setuptools_scm", "write_to"), "[tool.setuptools_scm] write_to"),
                        (("tool", "setuptools_scm", "version_file"), "[tool.setuptools_scm] version_file"),
                        (("tool", "hatch", "build", "hooks", "vcs", "version-file"),
                         "[tool.hatch.build.hooks.vcs] version-file")):
        value = dig(pyproject, *keys)
        if isinstance(value, str):
            named.setdefault(value.removeprefix("./"), label)
    laid, reasons = [], []
    for path, label in named.items():
        refused = never_laid(path)
        if refused:
            reasons.append(f"{path} ({label}) is never laid into checkouts: {refused}")
        else:
            laid.append(path)
            reasons.append(f"the setup's {path} is laid into checkouts ({label})")
    return laid, reasons


def _where(source: str) -> str:
    return CONFIG_FILE if source == "file" else "FIXFLEET_REPO_CONFIGS"


def _is_python(files: Mapping[str, bytes]) -> bool:
    return any(name in files for name in ("pyproject.toml", "setup.py", "setup.cfg", "requirements.txt"))
