"""The setup plan: what the environment builder runs and the verifier uses, and the rules every
way of making one shares (which files a setup may hand to checkouts, reading the repository's
bytes without trusting them). Detection lives in setup_python.py and setup_node.py; the
repository's `.fixfleet.yml` and the operator's settings in repo_config.py."""

from __future__ import annotations

import json
import tomllib
from typing import Any, Literal

from pydantic import BaseModel, Field

from fixfleet.errors import PermanentError
from fixfleet.repo_schema import CONFIG_FILE, NEVER_LAID, NEVER_LAID_PATTERN, Runner, Timeouts, never_laid

__all__ = ["CONFIG_FILE", "NEVER_LAID", "NEVER_LAID_PATTERN", "Runner", "Timeouts", "never_laid"]  # their home: fixfleet/repo_schema.py

PYPI = ["pypi.org", "files.pythonhosted.org"]
NPM = ["registry.npmjs.org"]
# yarn lockfiles name registry.yarnpkg.com, the npm registry under yarn's name
YARN = [*NPM, "registry.yarnpkg.com"]
TEST_EXTRAS = ("tests", "test", "testing", "dev")  # in order of preference

class InvalidRepoConfig(ValueError, PermanentError):
    """`.fixfleet.yml` (or the operator's setting) is not valid, or the repository cannot be
    planned; the message says where. Permanent: someone has to fix the file first. Still a
    ValueError for callers that catch one."""


class SetupPlan(BaseModel):
    """The resolved recipe: what the environment builder runs and the verifier uses."""

    language: Literal["python", "node"]
    python: str | None = None  # interpreter version the configuration insists on ("3.11"), or None
    steps: list[str]  # shell commands, in order, inside the setup sandbox
    test_runner: Runner
    test_script: str | None = None  # JS: the runner's own command line, as the project writes it
    suite_command: str | None  # None: the runner's own whole-suite command
    timeouts: Timeouts
    setup_domains: list[str]
    test_domains: list[str]
    env: dict[str, str]
    source: Literal["file", "settings", "detected"]
    reasons: list[str]  # why each choice was made, for the plan and the PR
    # What the repository pins, used when the toolchain has it; a mismatch is said, not fatal.
    python_pin: str | None = None  # `.python-version` ("3.12")
    requires_python: str | None = None  # the packaging metadata's specifier (">=3.9")
    node_pin: str | None = None  # `.nvmrc` / `.node-version`
    node_engines: str | None = None  # package.json's engines.node (an npm range)
    package_manager: str | None = None  # what installs the dependencies ("uv", "poetry", "pnpm@9.15.0", ...)
    generated: list[str] = Field(default_factory=list)  # setup-made files checkouts receive
    flaky_tests: list[str] = Field(default_factory=list)  # known flaky: they neither prove nor block

    def describe(self) -> str:
        lines = [f"{self.language} environment ({self.source}): " + "; ".join(self.reasons)]
        lines += [f"  $ {_first_line(step)}" for step in self.steps]
        command = f": {self.test_script}" if self.test_script else ""
        lines.append(f"  tests run with {self.test_runner}{command}; "
                     f"suite: {self.suite_command or self.test_runner + ' (whole suite)'}")
        return "\n".join(lines)


def _first_line(step: str) -> str:
    first, *rest = step.splitlines() or [""]
    return first + (f"  # and {len(rest)} more lines" if rest else "")


def toml_document(data: bytes | None) -> dict[str, Any]:
    """A TOML file of the repository, or {} when absent or broken (a crash would hide the reason)."""
    if not data:
        return {}
    try:
        return tomllib.loads(data.decode("utf-8", "replace"))
    except tomllib.TOMLDecodeError:
        return {}


def json_object(data: bytes | None) -> dict[str, Any]:
    """A JSON object of the repository: any JSON (or none) may be there."""
    try:
        return mapping(json.loads(data or b"{}"))
    except ValueError:  # not JSON, not UTF-8
        return {}


def mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def dig(document: dict[str, Any], *keys: str) -> Any:
    """document[k1][k2]... or None where a level is missing or not a table."""
    for key in keys:
        document = document.get(key) if isinstance(document, dict) else None
    return document


def shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"
