"""How a Python repository is set up, read from its own files the way its developers set it up.

In this order: a committed lockfile (uv.lock: a frozen `uv sync`; poetry.lock: Poetry; pdm.lock:
its locked packages as they are; Pipfile.lock: Pipenv), each with the repository's test groups
and extras; a Poetry project
without a lock (Poetry resolves it); else the declared metadata: the package editable with its
test extra, requirements files, PEP 735 groups, Hatch and PDM dev dependencies, tox's and nox's
test deps. The runner is pytest when anything names it, else unittest. Pure functions over the
repository's bytes: nothing of the repository runs here, and nothing it names reaches a shell
step unquoted (group and extra names must be one of the few known ones).
"""

from __future__ import annotations

import configparser
import re
from collections.abc import Mapping
from typing import Any

from fixfleet.workspace.setup_plan import (
    CONFIG_FILE,
    PYPI,
    TEST_EXTRAS,
    Runner,
    SetupPlan,
    Timeouts,
    dig,
    mapping,
    shell_quote,
    toml_document,
)

MAKE_VENV = 'uv venv --allow-existing --quiet --python "$FIXFLEET_PYTHON" /env'
REQUIREMENT_FILES = ("requirements.txt", "requirements-dev.txt", "requirements-test.txt", "requirements-tests.txt",
                     "requirements_dev.txt", "requirements_test.txt", "test-requirements.txt",
                     "test_requirements.txt", "dev-requirements.txt", "requirements/test.txt",
                     "requirements/tests.txt", "requirements/dev.txt", "requirements/base.txt",
                     "requirements/requirements-tests.txt", "requirements/requirements.txt",
                     "tests/requirements.txt")
TEST_REQUIREMENTS = [name for name in REQUIREMENT_FILES if re.search(r"test|dev", name)]
LOCKFILES = ("uv.lock", "poetry.lock", "pdm.lock", "Pipfile.lock")
# A plain requirement (name, extras, version): what a noxfile's session.install may hand over.
PINS_END = "FIXFLEET_LOCKED_PINS"  # the heredoc's end: no pin can be this line
PINNED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?==[A-Za-z0-9.+!_-]+( ; [^\n]+)?")
PLAIN_REQUIREMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?([<>=!~]=?[A-Za-z0-9.*+!-]+)?")


def detect_python(files: Mapping[str, bytes]) -> SetupPlan:
    pyproject = toml_document(files.get("pyproject.toml"))
    manager = _manager(files, pyproject)
    if manager is None:
        steps, reasons = _from_metadata(files, pyproject)
    else:
        steps, reasons = _MANAGERS[manager](files, pyproject)
    runner, why = _python_runner(files, pyproject)
    reasons.append(why)
    if runner == "pytest":
        steps.append("uv pip install pytest")  # nothing when the lock or the extras installed it
    pin, requires = python_pin(files), requires_python(files, pyproject)
    return SetupPlan(language="python", steps=[MAKE_VENV, *steps], test_runner=runner, suite_command=None,
                     timeouts=Timeouts(), setup_domains=list(PYPI), test_domains=[], env={},
                     source="detected", reasons=reasons, python_pin=pin, requires_python=requires,
                     package_manager=manager or "uv pip")


def _manager(files: Mapping[str, bytes], pyproject: dict[str, Any]) -> str | None:
    for lockfile, manager in zip(LOCKFILES, ("uv", "poetry", "pdm", "pipenv"), strict=True):
        if lockfile in files:
            return manager
    poetry = mapping(dig(pyproject, "tool", "poetry"))
    if any(key in poetry for key in ("dependencies", "group", "dev-dependencies")):
        return "poetry"
    return None


# -- with a lockfile (or Poetry) ------------------------------------------------------------


def _uv_sync(files: Mapping[str, bytes], pyproject: dict[str, Any]) -> tuple[list[str], list[str]]:
    groups = _test_groups(mapping(pyproject.get("dependency-groups")))
    extras = [e for e in TEST_EXTRAS if e in _extras(files, pyproject)][:1]
    options = "".join(f" --group {g}" for g in groups) + "".join(f" --extra {e}" for e in extras)
    step = f'uv sync --frozen --python "$FIXFLEET_PYTHON"{options}'
    return [step], ["uv.lock committed: a frozen uv sync installs the locked versions"
                    + _with(groups, "group") + _with(extras, "extra")]


def _poetry(files: Mapping[str, bytes], pyproject: dict[str, Any]) -> tuple[list[str], list[str]]:
    poetry = mapping(dig(pyproject, "tool", "poetry"))
    groups = _test_groups(mapping(poetry.get("group")))
    extras = [e for e in TEST_EXTRAS if e in _extras(files, pyproject) or e in mapping(poetry.get("extras"))][:1]
    version = _generated_by(files.get("poetry.lock"), "Poetry")
    tool = f"poetry=={version}" if version else "poetry"
    options = (f" --with {','.join(groups)}" if groups else "") + "".join(f" -E {e}" for e in extras)
    step = (f"POETRY_VIRTUALENVS_CREATE=false uv tool run --python \"$FIXFLEET_PYTHON\" --from '{tool}' "
            f"poetry install --no-interaction{options}")
    locked = "poetry.lock committed: Poetry installs the locked versions" if "poetry.lock" in files else \
        "a Poetry project without poetry.lock: Poetry resolves its dependencies"
    made_by = f" (Poetry {version}, which wrote the lock)" if version else ""
    return [step], [locked + made_by + _with(groups, "group") + _with(extras, "extra")]


def _pdm(files: Mapping[str, bytes], pyproject: dict[str, Any]) -> tuple[list[str], list[str]]:
    """pdm.lock's pinned packages of the default and test groups, installed as they are. (PDM's
    own releases drift out of step with their dependencies: installing a complete lock needs no
    resolver, so uv installs it.)"""
    declared = {**mapping(pyproject.get("dependency-groups")), **mapping(dig(pyproject, "tool", "pdm", "dev-dependencies")),
                **{e: [] for e in _extras(files, pyproject)}}
    groups = _test_groups(declared)
    pins = _pdm_pins(toml_document(files.get("pdm.lock")), {"default", *groups})
    steps = [f"uv pip install --no-deps -r /dev/stdin <<'{PINS_END}'\n" + "\n".join(pins) + f"\n{PINS_END}"]
    if "project" in pyproject and dig(pyproject, "tool", "pdm", "distribution") is not False:
        steps.append("uv pip install --no-deps -e /workspace")
    return steps, [(f"pdm.lock committed: its {len(pins)} locked packages of the group(s) "
                   f"{', '.join(['default', *groups])} installed as they are")]


def _pdm_pins(lock: dict[str, Any], wanted: set[str]) -> list[str]:
    """`name[extras]==version ; marker` of each locked package in a wanted group (a path, URL or
    VCS package has no version: the project itself, installed after)."""
    pins = []
    for package in lock.get("package") if isinstance(lock.get("package"), list) else []:
        package = mapping(package)
        name, version, groups = package.get("name"), package.get("version"), package.get("groups")
        if not isinstance(name, str) or not isinstance(version, str):
            continue
        if isinstance(groups, list) and not wanted & {g for g in groups if isinstance(g, str)}:
            continue
        extras = _strings(package.get("extras"))
        marker = package.get("marker")
        pin = name + (f"[{','.join(extras)}]" if extras else "") + f"=={version}" + (
            f" ; {marker}" if isinstance(marker, str) and marker else "")
        if PINNED.fullmatch(pin):
            pins.append(pin)
    return pins


def _pipenv(files: Mapping[str, bytes], pyproject: dict[str, Any]) -> tuple[list[str], list[str]]:
    step = "PIPENV_VERBOSITY=-1 uv tool run --python \"$FIXFLEET_PYTHON\" --from pipenv pipenv sync --dev"
    return [step], ["Pipfile.lock committed: Pipenv installs its default and develop packages"]


_MANAGERS = {"uv": _uv_sync, "poetry": _poetry, "pdm": _pdm, "pipenv": _pipenv}


def _generated_by(lock: bytes | None, tool: str) -> str | None:
    """The tool version a lockfile's header names ("@generated by Poetry 1.8.3")."""
    found = re.search(rb"@generated by " + tool.encode() + rb" (\d+\.\d+(?:\.\d+)?)\b", lock or b"")
    return found.group(1).decode() if found else None


def _test_groups(declared: dict[str, Any]) -> list[str]:
    """The test-ish groups a project declares (every one: a dev group often holds the fixtures)."""
    return [g for g in TEST_EXTRAS if g in declared]


def _with(names: list[str], kind: str) -> str:
    return f" with the {kind}(s) {', '.join(names)}" if names else ""


# -- from the declared metadata ------------------------------------------------------------


def _from_metadata(files: Mapping[str, bytes], pyproject: dict[str, Any]) -> tuple[list[str], list[str]]:
    steps: list[str] = []
    reasons: list[str] = []
    installable = any(name in files for name in ("pyproject.toml", "setup.py", "setup.cfg")) and (
        "project" in pyproject or "build-system" in pyproject or "setup.py" in files or "setup.cfg" in files)
    hatch_deps, hatch_features = _hatch_env(pyproject)
    if installable:
        declared = _extras(files, pyproject)
        extras = [e for e in TEST_EXTRAS if e in declared][:1]  # the test extra; `dev` only when there is none
        extras += [f for f in hatch_features if f in declared and f not in extras]
        target = f"/workspace[{','.join(extras)}]" if extras else "/workspace"
        steps.append(f"uv pip install -e '{target}'")
        reasons.append("installs the package editable" + (f" with its extras {', '.join(extras)}" if extras else ""))
    # requirements/base.txt is included by the others; requirements/requirements.txt is not a test file
    requirements = [name for name in ("requirements.txt", *TEST_REQUIREMENTS) if name in files]
    steps += [f"uv pip install -r {name}" for name in requirements]
    if requirements:
        reasons.append(f"installs {', '.join(requirements)}")
    groups = [g for g in TEST_EXTRAS if g in mapping(pyproject.get("dependency-groups"))][:1]
    steps += [f"uv pip install --group {group}" for group in groups]
    if groups:
        reasons.append(f"installs the dependency group(s) {', '.join(groups)}")
    for label, deps in (("Hatch's test environment", hatch_deps), ("PDM's dev dependencies", _pdm_dev(pyproject)),
                        ("tox.ini's test deps", _tox_deps(files.get("tox.ini"))),
                        ("the noxfile's session installs", _nox_deps(files.get("noxfile.py")))):
        if deps:
            steps.append("uv pip install " + " ".join(shell_quote(d) for d in deps))
            reasons.append(f"installs {label} ({', '.join(deps)})")
    if not installable and not requirements:
        reasons.append("no packaging or requirements files: tests run from the checkout")
    return steps, reasons


def _python_runner(files: Mapping[str, bytes], pyproject: dict[str, Any]) -> tuple[Runner, str]:
    if "pytest" in mapping(pyproject.get("tool")) or b"[pytest]" in files.get("tox.ini", b"") \
            or b"[tool:pytest]" in files.get("setup.cfg", b"") or "pytest.ini" in files:
        return "pytest", "pytest configuration found"
    named = [name for name, data in files.items() if name != CONFIG_FILE and re.search(rb"\bpytest\b", data)]
    if named:
        return "pytest", f"{named[0]} names pytest"
    return "unittest", "nothing names pytest: the standard library's unittest"


def _extras(files: Mapping[str, bytes], pyproject: dict[str, Any]) -> list[str]:
    extras = list(mapping(dig(pyproject, "project", "optional-dependencies")))
    if "setup.cfg" in files:
        parser = _ini(files["setup.cfg"])
        if parser is not None and parser.has_section("options.extras_require"):
            extras += list(parser["options.extras_require"])
    if "setup.py" in files:  # a regex over the text: nothing of setup.py runs here
        block = re.search(rb"extras_require\s*=\s*\{(.*?)\}", files["setup.py"], re.DOTALL)
        if block:
            extras += [m.decode() for m in re.findall(rb"['\"]([\w.-]+)['\"]\s*:", block.group(1))]
    return list(dict.fromkeys(extras))


def _hatch_env(pyproject: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(requirements, features) of Hatch's test environment: `test`/`tests`/`testing`, else `default`."""
    envs = mapping(dig(pyproject, "tool", "hatch", "envs"))
    name = next((n for n in ("test", "tests", "testing", "default") if isinstance(envs.get(n), dict)), None)
    if name is None:
        return [], []
    env = envs[name]
    deps = [d for key in ("dependencies", "extra-dependencies") for d in _strings(env.get(key))]
    return [d for d in deps if "{" not in d], _strings(env.get("features"))  # {root:uri} and friends: Hatch's own


def _pdm_dev(pyproject: dict[str, Any]) -> list[str]:
    groups = mapping(dig(pyproject, "tool", "pdm", "dev-dependencies"))
    deps = [d for g in _test_groups(groups) for d in _strings(groups[g])]
    return [d for d in deps if not d.startswith("-") and "${" not in d]  # `-e file:///${PROJECT_ROOT}`: the package


def _nox_deps(text: bytes | None) -> list[str]:
    """Plain requirements a noxfile's sessions install (`session.install("pytest", ...)`)."""
    deps = []
    for call in re.findall(rb"session\.install\(([^)]*)\)", text or b""):
        for literal in re.findall(rb"[\"']([^\"'\n]+)[\"']", call):
            value = literal.decode("utf-8", "replace")
            if PLAIN_REQUIREMENT.fullmatch(value):
                deps.append(value)
    return list(dict.fromkeys(deps))


def _tox_deps(text: bytes | None) -> list[str]:
    parser = _ini(text)
    if parser is None or not parser.has_option("testenv", "deps"):
        return []
    deps = []
    for line in parser.get("testenv", "deps").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-") or "{" in line or ":" in line.split()[0]:
            continue  # options, substitutions and factor-conditional lines: not plain requirements
        deps.append(line)
    return deps


def _ini(text: bytes | None) -> configparser.ConfigParser | None:
    if not text:
        return None
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(text.decode("utf-8", "replace"))
    except configparser.Error:
        return None
    return parser


def _strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


# -- the interpreter the repository pins -----------------------------------------------------


def python_pin(files: Mapping[str, bytes]) -> str | None:
    """`.python-version`'s first version as major.minor ("3.12.1" and "cpython-3.12" mean 3.12)."""
    for line in files.get(".python-version", b"").decode("utf-8", "replace").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            found = re.fullmatch(r"(?:cpython-|python)?(3\.\d{1,2})(?:\.\d+)?(?:[-+].*)?", line)
            return found.group(1) if found else line[:40]
    return None


def requires_python(files: Mapping[str, bytes], pyproject: dict[str, Any]) -> str | None:
    """The Python versions the packaging metadata accepts, as a PEP 440 specifier text."""
    declared = dig(pyproject, "project", "requires-python")
    if isinstance(declared, str):
        return declared
    poetry = dig(pyproject, "tool", "poetry", "dependencies", "python")
    if isinstance(poetry, str):
        return _poetry_constraint(poetry)
    parser = _ini(files.get("setup.cfg"))
    if parser is not None and parser.has_option("options", "python_requires"):
        return parser.get("options", "python_requires").strip()
    found = re.search(rb"python_requires\s*=\s*['\"]([^'\"]+)['\"]", files.get("setup.py", b""))
    return found.group(1).decode("utf-8", "replace") if found else None


def _poetry_constraint(text: str) -> str:
    """Poetry's `^3.9` / `~3.9` in PEP 440 terms; anything else as written."""
    found = re.fullmatch(r"\s*([\^~])\s*(\d+)\.(\d+)(?:\.\d+)?\s*", text)
    if not found:
        return text
    kind, major, minor = found.group(1), int(found.group(2)), int(found.group(3))
    upper = f"{major + 1}" if kind == "^" else f"{major}.{minor + 1}"
    return f">={major}.{minor},<{upper}"
