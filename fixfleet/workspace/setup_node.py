"""How a JavaScript/TypeScript repository is set up and tested, read from its package.json and
lockfiles the way its developers do it.

The `packageManager` field, else the committed lockfile, decides npm, pnpm or yarn; pnpm and yarn
come through corepack (from the npm registry, like any package), at the version the field names
or the lockfile's format implies. A lockfile means a frozen install (`npm ci`, `--frozen-lockfile`,
`--immutable`). The tests run with the project's runner itself (choose_test_command): never a
script that chains lint or type checks, never an interactive mode. Pure functions over bytes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from fixfleet.workspace.runners.scripts import choose_test_command
from fixfleet.workspace.setup_plan import (
    NPM,
    YARN,
    InvalidRepoConfig,
    Runner,
    SetupPlan,
    Timeouts,
    json_object,
    mapping,
)

PACKAGE_MANAGER = re.compile(r"(npm|pnpm|yarn)@(\d+)((?:\.\d+){0,2}(?:-[0-9A-Za-z.]+)?)(?:\+[0-9A-Za-z.]+)?")
LOCKFILES = {"pnpm-lock.yaml": "pnpm", "yarn.lock": "yarn", "package-lock.json": "npm", "npm-shrinkwrap.json": "npm"}
YARN_CLASSIC = "1.22.22"  # the last yarn 1 release: what a v1 yarn.lock without packageManager gets
# pnpm's lockfile format -> the pnpm major that writes it
PNPM_FOR_LOCKFILE = {"9.0": "9", "6.1": "8", "6.0": "8", "5.4": "7", "5.3": "6"}
NPM_FLAGS = "--no-audit --no-fund"


@dataclass
class Install:
    steps: list[str]
    domains: list[str]
    manager: str
    reasons: list[str] = field(default_factory=list)


def detect_node(files: Mapping[str, bytes], runner: Runner | None = None) -> SetupPlan:
    """`runner`: the one the configuration names; detection cannot fail the repository then."""
    package = json_object(files.get("package.json"))
    install = node_install(files, package)
    scripts = {k: v for k, v in mapping(package.get("scripts")).items() if isinstance(v, str)}
    dependencies = {**mapping(package.get("dependencies")), **mapping(package.get("devDependencies"))}
    try:
        command = choose_test_command(scripts, dependencies, runner)
    except ValueError:
        script = scripts.get("test")
        raise InvalidRepoConfig(f"package.json's test script ({script or 'none'}) names no runner fixfleet knows "
                                "(jest, vitest, mocha, node --test): set test_runner in .fixfleet.yml") from None
    engines = mapping(package.get("engines")).get("node")
    return SetupPlan(language="node", steps=install.steps, test_runner=command.runner, test_script=command.command,
                     suite_command=None, timeouts=Timeouts(), setup_domains=install.domains, test_domains=[], env={},
                     source="detected", reasons=[*install.reasons, command.why], node_pin=node_pin(files),
                     node_engines=engines[:100] if isinstance(engines, str) else None, package_manager=install.manager)


def node_install(files: Mapping[str, bytes], package: dict) -> Install:
    """How the dependencies are installed: the package manager and its frozen install."""
    value = package.get("packageManager")
    declared = PACKAGE_MANAGER.fullmatch(value) if isinstance(value, str) else None
    reasons = []
    if isinstance(value, str) and not declared:
        reasons.append(f"package.json's packageManager ({value[:60]}) is not npm, pnpm or yarn: ignored")
    locks = [name for name in LOCKFILES if name in files]
    manager = declared.group(1) if declared else (LOCKFILES[locks[0]] if locks else "npm")
    lock = next((name for name in locks if LOCKFILES[name] == manager), None)
    if declared:
        reasons.append(f"package.json's packageManager is {declared.group(0).split('+')[0]}")
    ignored = [name for name in locks if LOCKFILES[name] != manager]
    if ignored:
        reasons.append(f"{', '.join(ignored)} ignored: the project installs with {manager}")
    install = {"npm": _npm, "pnpm": _pnpm, "yarn": _yarn}[manager](files, lock, declared)
    install.reasons[:0] = reasons
    return install


def _npm(files: Mapping[str, bytes], lock: str | None, declared: re.Match | None) -> Install:
    if lock:
        return Install([f"npm ci {NPM_FLAGS}"], list(NPM), "npm", [f"npm ci with the committed {lock}"])
    return Install([f"npm install {NPM_FLAGS} --no-package-lock"], list(NPM), "npm",
                   ["no lockfile: npm install resolves the dependencies afresh"])


def _pnpm(files: Mapping[str, bytes], lock: str | None, declared: re.Match | None) -> Install:
    if declared:
        tool, version = "corepack pnpm", declared.group(2) + declared.group(3)
    else:
        found = re.search(rb"^lockfileVersion:\s*['\"]?([\d.]+)", files.get("pnpm-lock.yaml", b""), re.MULTILINE)
        version = PNPM_FOR_LOCKFILE.get(found.group(1).decode() if found else "", "9")
        tool = f"corepack pnpm@{version}"
    if lock:
        return Install([f"{tool} install --frozen-lockfile"], list(NPM), f"pnpm@{version}",
                       [f"pnpm {version} (through corepack) installs the committed pnpm-lock.yaml as it is"])
    return Install([f"{tool} install --no-frozen-lockfile"], list(NPM), f"pnpm@{version}",
                   [f"pnpm {version} (through corepack) resolves the dependencies: no pnpm-lock.yaml"])


def _yarn(files: Mapping[str, bytes], lock: str | None, declared: re.Match | None) -> Install:
    berry = int(declared.group(2)) >= 2 if declared else b"__metadata:" in files.get("yarn.lock", b"")
    if declared:
        tool, version = "corepack yarn", declared.group(2) + declared.group(3)
    elif berry:
        found = re.search(rb"__metadata:\s*\n\s*version:\s*(\d+)", files.get("yarn.lock", b""))
        format_version = int(found.group(1)) if found else 8
        version = "4" if format_version >= 8 else "3" if format_version >= 6 else "2"
        tool = f"corepack yarn@{version}"
    else:
        tool, version = f"corepack yarn@{YARN_CLASSIC}", YARN_CLASSIC
    if berry:  # the runners start node_modules/.bin: Plug'n'Play installs have none
        step = f"YARN_NODE_LINKER=node-modules {tool} install" + (" --immutable" if lock else "")
        why = f"yarn {version} (through corepack) installs into node_modules" + (
            " from the committed yarn.lock as it is" if lock else ": no yarn.lock")
    else:  # the toolchain's node is checked against the project's pin by the platform, which says so
        step = f"{tool} install --non-interactive --ignore-engines" + (" --frozen-lockfile" if lock else "")
        why = f"yarn {version} (classic, through corepack)" + (
            " installs the committed yarn.lock as it is" if lock else " resolves the dependencies: no yarn.lock") + \
            "; yarn's engines check is left to the platform (a mismatch is reported, not fatal)"
    return Install([step], list(YARN), f"yarn@{version}", [why])


def node_pin(files: Mapping[str, bytes]) -> str | None:
    """`.nvmrc` or `.node-version`: the node version the developers use ("20", "v20.11.0", "lts/iron")."""
    for name in (".nvmrc", ".node-version"):
        for line in files.get(name, b"").decode("utf-8", "replace").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                return line[:40]
    return None
