"""The schema of `.fixfleet.yml` (and of the operator's FIXFLEET_REPO_CONFIGS): what a repository,
or the operator for it, may say about how it is set up and tested.

Only the model and the rules its fields obey live here, below the settings that hold the
operator's copies (fixfleet/config.py); reading the file and detecting what it leaves out is
fixfleet/workspace/repo_config.py's job.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

CONFIG_FILE = ".fixfleet.yml"
Runner = Literal["pytest", "unittest", "node", "mocha", "jest", "vitest"]

# Files a setup makes are laid into checkouts only when the repository's config names them,
# and never these: they run code at interpreter or test start, or decide how tests run.
NEVER_LAID = frozenset({
    "conftest.py", "sitecustomize.py", "usercustomize.py", "pytest.ini", ".pytest.ini", "pytest.toml", ".pytest.toml",
    "tox.ini", "setup.cfg", "setup.py",
    "pyproject.toml", "noxfile.py", "package.json", CONFIG_FILE, ".npmrc", ".yarnrc", ".yarnrc.yml",
    ".pnpmfile.cjs", "pnpm-workspace.yaml", ".babelrc", ".swcrc", "Makefile", "makefile"})
NEVER_LAID_PATTERN = re.compile(
    r"\.pth$|^\.mocharc|^\.babelrc|^tsconfig[\w.-]*\.json$"
    r"|^(jest|vitest|vite|vitest\.workspace|vitest\.projects|babel|karma|playwright|cypress|webpack|rollup|esbuild)"
    r"\.config\.[\w.]+$|^(jest|vitest|babel)\.[\w.-]*\.[cm]?[jt]s$")


# Set by the platform, or able to run code before the repository's own: not for a repository to choose.
RESERVED_ENV = {"PATH", "HOME", "BASH_ENV", "ENV", "PROMPT_COMMAND", "SHELLOPTS", "PYTHONSTARTUP", "NODE_OPTIONS",
                "HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "NO_PROXY"}


class Timeouts(BaseModel):
    model_config = {"extra": "forbid"}
    setup_s: float = Field(900, gt=0)
    test_s: float = Field(600, gt=0)
    suite_s: float = Field(1800, gt=0)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    generated: list[str] = Field(default_factory=list)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    network: Network = Field(default_factory=Network)
    env: dict[str, str] = Field(default_factory=dict)
    # tests the repository's developers know to be flaky (ids as the runner names them): they
    # neither prove nor block a change, and the evidence names them
    flaky_tests: list[str] = Field(default_factory=list, max_length=500)

    @field_validator("python")
    @classmethod
    def _version_or_path(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"3\.\d{1,2}|/[A-Za-z0-9._/-]+", value):
            raise ValueError(f"{value!r} is not a Python version like \"3.12\" (or, for the operator, a path)")
        return value

    @field_validator("generated")
    @classmethod
    def _laid_files(cls, paths: list[str]) -> list[str]:
        for path in paths:
            if refused := never_laid(path):
                raise ValueError(f"{path!r} may not be laid into checkouts: {refused}")
        return paths

    @field_validator("env")
    @classmethod
    def _names(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name.upper() in RESERVED_ENV \
                    or name.upper().startswith("LD_"):
                raise ValueError(f"{name!r} may not be set")
        return env


def never_laid(path: str) -> str | None:
    """Why a file a setup made may never be laid into a checkout, or None when it may be."""
    if not path or "\\" in path or "\0" in path:
        return "not a plain relative path"
    pure = PurePosixPath(path)
    if pure.is_absolute() or str(pure) != path or ".." in pure.parts or pure.parts[0] in (".git", "node_modules"):
        return "not a plain path inside the repository"
    if pure.name in NEVER_LAID or NEVER_LAID_PATTERN.search(pure.name):
        return f"{pure.name} runs code or configures how tests run"
    return None
