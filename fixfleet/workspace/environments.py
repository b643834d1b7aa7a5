"""The repository's own environment: built once per dependency spec per node, in the sandbox,
shared by every agent on the node and by verification (the layout, leases and eviction are
env_cache.py's).

The hash covers what decides the contents: the setup plan (commands, runner, interpreter), the
bytes of the dependency files (pyproject.toml, lockfiles, ...) and whether those came from the
base commit or from a change. A change to any of them, the agent's included, means a new
environment while the old one keeps serving its users; an unchanged one is found under one lock.

A build runs the plan's commands in the sandbox on a clean checkout at /workspace, with /env
writable and only the registries the plan names reachable. Nothing the repository's code
makes is trusted by path: node_modules is kept only as a real directory (never a link) and
bound only after the same check; other files the setup makes reach checkouts only when the
repository's configuration names them (a version file), never code that runs at start-up or
test configuration. A build from a change's dependency files gets a private download cache:
the repository's shared one is written only by builds of its commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import semantic_version
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from pydantic import BaseModel, Field, PrivateAttr

from fixfleet.config import Settings, get_settings
from fixfleet.errors import PermanentError
from fixfleet.workspace import sweeper
from fixfleet.workspace.changes import ChangeRefused, apply_files
from fixfleet.workspace.egress import EgressPolicy, EgressProxy
from fixfleet.workspace.env_cache import Entry, EnvCache, Lease
from fixfleet.workspace.mirrors import (
    Checkout,
    FileContent,
    WorkspaceManager,
    disk_usage,
)
from fixfleet.workspace.repo_config import (
    CONFIG_FILE,
    SPEC_FILES,
    RepoConfig,
    SetupPlan,
    resolve,
)
from fixfleet.workspace.sandbox import Bridge, RunResult, Sandbox, SandboxSpec
from fixfleet.workspace.setup_plan import never_laid
from fixfleet.workspace.setup_python import MAKE_VENV

log = logging.getLogger(__name__)
RECIPE_VERSION = "3"  # 3: lockfiles and package managers; node_modules checked; metadata outside /env
PROXY_PORT = 3128
SETUP_TAIL = 4000
PRETEND_VERSION = "0.0.0"  # setuptools-scm / hatch-vcs need a version and there is no .git
TOOLCHAIN_BIN = ("/usr/bin", "/usr/local/bin")  # where other Python versions are looked for first
# Node LTS code names (.nvmrc's lts/<name>) -> major version
NODE_LTS = {"argon": 4, "boron": 6, "carbon": 8, "dubnium": 10, "erbium": 12, "fermium": 14, "gallium": 16,
            "hydrogen": 18, "iron": 20, "jod": 22, "krypton": 24}


class SetupFailed(PermanentError):
    """The repository could not be set up; carries the tail of the setup log. Permanent: the
    same commit and setup plan fail the same way, so the task fails at once with the log."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(f"{message}\n{log_tail}".rstrip())
        self.message, self.log_tail = message, log_tail


class Environment(BaseModel):
    """A ready environment: where it is, how it was made, what a checkout must receive. Held
    (eviction leaves it alone) from `ensure` until `release()`, or until the object is dropped."""

    path: Path  # mounted at /env
    hash: str
    plan: SetupPlan
    python_prefix: Path | None = None
    generated: list[str] = Field(default_factory=list)  # files the setup made that checkouts receive
    built_s: float = 0.0  # the build's own time (0 when reused)
    reused: bool = False
    _lease: Lease | None = PrivateAttr(default=None)

    @property
    def held(self) -> bool:
        return self._lease is not None and self._lease.held

    def release(self) -> None:
        if self._lease is not None:
            self._lease.release()

    @property
    def node_modules(self) -> Path | None:
        """The environment's node_modules, only as a real directory inside it (no link followed)."""
        path = self.path / "node_modules"
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return None
        if not stat.S_ISDIR(mode) or os.path.realpath(path) != str(path):
            raise SetupFailed(f"the environment's node_modules is not a real directory ({_kind(path)}): refused, "
                              "nothing is mounted")
        return path

    @property
    def mounts_node_modules(self) -> bool:
        return self.node_modules is not None

    def sandbox_env(self) -> dict[str, str]:
        if self.plan.language == "python":
            return {"PATH": "/env/bin:/usr/local/bin:/usr/bin:/bin", "VIRTUAL_ENV": "/env", **self.plan.env}
        # node_modules is the environment's, read-only: tools that keep a cache in
        # node_modules/.cache (find-cache-dir: nyc, ava; @babel/register) keep it in /tmp instead
        return {"PATH": "/workspace/node_modules/.bin:/env/bin:/usr/local/bin:/usr/bin:/bin",
                "COREPACK_HOME": "/env/corepack", "COREPACK_ENABLE_NETWORK": "0",
                "COREPACK_ENABLE_DOWNLOAD_PROMPT": "0", "CACHE_DIR": "/tmp/.cache",
                "BABEL_CACHE_PATH": "/tmp/.cache/babel.json", **self.plan.env}


class EnvironmentBuilder:
    """Environments for repositories, from the node's cache (`cache`, shared by every agent
    process on the node; by default a private one beside the workspaces)."""

    def __init__(self, workspaces: WorkspaceManager, sandbox: Sandbox,
                 configs: Mapping[str, RepoConfig] | None = None, default_suite_command: str | None = None, *,
                 cache: EnvCache | None = None, holder: str | None = None) -> None:
        self.workspaces, self.sandbox = workspaces, sandbox
        self.configs = dict(configs or {})  # operator settings per repository URL
        self.default_suite_command = default_suite_command
        self.cache = cache or workspaces.cache
        self.holder = holder or f"pid {os.getpid()}"  # who holds a lease: shown to whoever looks

    async def plan_for(self, url: str, files: Mapping[str, bytes]) -> SetupPlan:
        try:
            return resolve(files, self.configs.get(url), self.default_suite_command)
        except ValueError as error:  # a broken .fixfleet.yml, no runner found: the task must say why
            hint = "" if CONFIG_FILE in str(error) else f" (name it in {CONFIG_FILE})"
            raise SetupFailed(f"cannot plan the repository's setup: {error}{hint}") from error

    async def spec_files_at(self, url: str, sha: str) -> dict[str, bytes]:
        return await self.workspaces.read_files(url, sha, SPEC_FILES)

    async def ensure(self, url: str, sha: str, *, overlay: Mapping[str, FileContent] | None = None) -> Environment:
        """The environment for the repository at `sha`, with `overlay` (a change to its
        dependency files) laid on top; built if needed (once per node: another agent building
        it is waited for). Returned held: `release()` it when done (or use `use`). Raises
        SetupFailed with the log's tail."""
        overlay = dict(overlay or {})
        base = await self.spec_files_at(url, sha)
        files = dict(base)
        for path, change in overlay.items():
            if change.content is None:
                files.pop(path, None)
            else:
                files[path] = change.content
        plan = await self.plan_for(url, files)
        interpreter, chosen = choose_interpreter(plan)
        plan = plan.model_copy(update={"reasons": [*plan.reasons, *chosen, *await node_reasons(plan)]})
        python = interpreter.parent.parent if interpreter else None
        from_change = files != base
        entry = self.cache.entry(self.workspaces.mirror_key(url), environment_hash(plan, files, interpreter, from_change))
        async with self.cache.locked(entry):
            built_s = None if entry.ready else await self._build(url, sha, plan, interpreter, entry, overlay,
                                                                 from_change)
            env = self._load(entry, plan, python, built_s)
            env._lease = self.cache.lease(entry, self.holder)
        if built_s is not None:
            await asyncio.to_thread(self.cache.evict)  # the new one is held: never its own victim
        return env

    @contextlib.asynccontextmanager
    async def use(self, url: str, sha: str, *,
                  overlay: Mapping[str, FileContent] | None = None) -> AsyncIterator[Environment]:
        """`ensure`, held for the block."""
        env = await self.ensure(url, sha, overlay=overlay)
        try:
            yield env
        finally:
            env.release()

    def prepare(self, env: Environment, checkout: Checkout) -> list[str]:
        """Lay the setup's generated files into a checkout (the ones the repository's config
        names, where the checkout has none), and the mount point for node_modules. Returns the
        paths the platform placed there (never part of a change)."""
        placed = []
        store = env.path.parent / "generated"
        for relative in env.generated:
            source, target = store / relative, checkout.path / relative
            if never_laid(relative) or os.path.lexists(target) or not _plain_file(source, store):
                continue
            try:
                apply_files(checkout.path, {relative: FileContent(content=source.read_bytes())})
            except ChangeRefused as refused:  # below a link the repository committed
                log.warning("%s is not laid into the checkout: %s", relative, refused)
                continue
            placed.append(relative)
        if env.node_modules is not None:
            mount_point = checkout.path / "node_modules"
            if os.path.lexists(mount_point) and not stat.S_ISDIR(os.lstat(mount_point).st_mode):
                raise SetupFailed(f"the checkout's node_modules is {_kind(mount_point)}: the environment's "
                                  "node_modules cannot be mounted there")
            mount_point.mkdir(exist_ok=True)
            placed.append("node_modules")
        return placed

    def spec(self, env: Environment, checkout: Checkout, **kwargs: object) -> SandboxSpec:
        """The sandbox of a session or a test run in `checkout` with this environment."""
        spec = SandboxSpec(workspace=checkout.path, env_dir=env.path, python_prefix=env.python_prefix,
                           env=env.sandbox_env(), **kwargs)  # type: ignore[arg-type]
        node_modules = env.node_modules  # checked again: a link is never handed to bubblewrap
        if node_modules is not None:
            spec.read_only["/workspace/node_modules"] = node_modules
        return spec

    # -- building ----------------------------------------------------------------------

    async def _build(self, url: str, sha: str, plan: SetupPlan, interpreter: Path | None, entry: Entry,
                     overlay: Mapping[str, FileContent], from_change: bool) -> float:
        """Build into a scratch directory and move it into place (the caller holds the lock);
        returns the seconds it took."""
        started = time.monotonic()
        with self.cache.scratch("build") as scratch:
            partial = scratch / "entry"
            (partial / "env").mkdir(parents=True)
            # a change's dependency files never write the repository's shared download cache
            cache = scratch / "cache" if from_change else self.cache.package_cache(entry.repo)
            cache.mkdir(exist_ok=True)
            checkout = await self.workspaces.checkout(url, sha, f"setup-{entry.digest[:12]}-{scratch.name[-8:]}")
            try:
                apply_files(checkout.path, overlay)
                before = set(await asyncio.to_thread(_files, checkout.path))
                result = await self._run_setup(plan, interpreter, checkout.path, partial / "env", cache)
                if result.exit_code != 0:
                    step = _failed_step(_setup_steps(plan), result.output_tail)
                    raise SetupFailed(f"setting up the repository failed (exit {result.exit_code}): {step}",
                                      result.output_tail[-SETUP_TAIL:])
                generated = await asyncio.to_thread(_keep_generated, checkout.path, partial, plan.generated, before)
            finally:
                await self.workspaces.discard(checkout)
            seconds = round(time.monotonic() - started, 2)
            meta = {"repo": entry.repo, "plan": plan.model_dump(), "python": str(interpreter) if interpreter else None,
                    "generated": generated, "from_change": from_change, "built_s": seconds, "built_at": time.time(),
                    "bytes": await asyncio.to_thread(disk_usage, partial), "log_tail": result.output_tail[-SETUP_TAIL:]}
            (partial / "meta.json").write_text(json.dumps(meta, indent=2))
            entry.directory.parent.mkdir(parents=True, exist_ok=True)
            os.rename(partial, entry.directory)
        log.info("built the environment %s for %s in %.1fs", entry.digest, url, seconds)
        return seconds

    async def _run_setup(self, plan: SetupPlan, interpreter: Path | None, tree: Path, env_dir: Path,
                         cache: Path) -> RunResult:
        async with network_access(plan.setup_domains) as network:
            spec = network.apply(SandboxSpec(workspace=tree, env_dir=env_dir, env_writable=True,
                                             python_prefix=interpreter.parent.parent if interpreter else None,
                                             writable={"/cache": cache},
                                             read_only={"/opt/fixfleet/bin/uv": Path(_uv_binary())},
                                             env=setup_env(plan, interpreter)))
            script = _setup_script(_setup_steps(plan))
            result = await self.sandbox.run(spec, ["/bin/bash", "-c", script], timeout_s=plan.timeouts.setup_s)
            if network.refused():
                result.output_tail += f"\n[fixfleet] the setup tried to reach {network.refused()}: not in network.setup"
            return result

    def _load(self, entry: Entry, plan: SetupPlan, python: Path | None, built_s: float | None) -> Environment:
        generated = [p for p in entry.meta().get("generated", []) if not never_laid(p)]
        return Environment(path=entry.env, hash=entry.digest, plan=plan, python_prefix=python, generated=generated,
                           built_s=built_s or 0.0, reused=built_s is None)


def setup_env(plan: SetupPlan, interpreter: Path | None) -> dict[str, str]:
    """The variables of a setup: where the tools cache (/cache), where they install (/env)."""
    path = "/env/bin:/opt/fixfleet/bin:/usr/local/bin:/usr/bin:/bin" if plan.language == "python" else \
        "/workspace/node_modules/.bin:/env/bin:/opt/fixfleet/bin:/usr/local/bin:/usr/bin:/bin"
    return {"PATH": path, "VIRTUAL_ENV": "/env", "FIXFLEET_PYTHON": str(interpreter or ""),
            "UV_CACHE_DIR": "/cache/uv", "UV_LINK_MODE": "copy", "UV_PYTHON_DOWNLOADS": "never",
            "UV_NO_PROGRESS": "1", "UV_PROJECT_ENVIRONMENT": "/env", "UV_TOOL_DIR": "/tmp/uv-tools",
            "POETRY_CACHE_DIR": "/cache/poetry", "POETRY_NO_INTERACTION": "1", "PDM_CACHE_DIR": "/cache/pdm",
            "PIPENV_CACHE_DIR": "/cache/pipenv", "PIP_CACHE_DIR": "/cache/pip", "XDG_CACHE_HOME": "/cache/xdg",
            "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
            "npm_config_cache": "/cache/npm", "npm_config_update_notifier": "false",
            "npm_config_store_dir": "/cache/pnpm", "YARN_CACHE_FOLDER": "/cache/yarn",
            "YARN_ENABLE_GLOBAL_CACHE": "false", "YARN_ENABLE_TELEMETRY": "0",
            # corepack fetches pnpm and yarn from the npm registry, like any package. The
            # registry here serves no signatures, so corepack's key check is off: the download
            # is still TLS from the registry, and a packageManager hash is still verified.
            "COREPACK_HOME": "/env/corepack", "COREPACK_NPM_REGISTRY": "https://registry.npmjs.org",
            "COREPACK_INTEGRITY_KEYS": "0", "COREPACK_ENABLE_DOWNLOAD_PROMPT": "0",
            "COREPACK_ENABLE_AUTO_PIN": "0",
            "SETUPTOOLS_SCM_PRETEND_VERSION": PRETEND_VERSION, **plan.env}


@dataclasses.dataclass
class Network:
    """The way out of a sandbox to some domains: an egress proxy's socket bridged inside, and
    the variables that point programs at it. With no domains: nothing, no network at all."""

    bridges: list[Bridge]
    env: dict[str, str]
    proxy: EgressProxy | None = None

    def apply(self, spec: SandboxSpec) -> SandboxSpec:
        return dataclasses.replace(spec, bridges=[*spec.bridges, *self.bridges], env={**spec.env, **self.env})

    def refused(self) -> str:
        hosts = sorted({f"{r.host}:{r.port}" for r in self.proxy.refused}) if self.proxy else []
        return ", ".join(hosts)


@contextlib.asynccontextmanager
async def network_access(domains: list[str], policy: EgressPolicy | None = None) -> AsyncIterator[Network]:
    """An egress proxy allowing only `domains`, for the length of the block, within `policy`
    (default: the platform's, from the settings): the node and its services stay out of reach."""
    if not domains:
        yield Network([], {})
        return
    policy = policy or await platform_egress_policy(get_settings())
    socket_dir = Path(tempfile.mkdtemp(prefix="ff-egress-", dir=os.environ.get("FIXFLEET_SOCKET_DIR", "/tmp")))
    sweeper.claim(socket_dir)
    try:
        async with EgressProxy(socket_dir / "egress.sock", domains, policy=policy) as proxy:
            url = f"http://127.0.0.1:{PROXY_PORT}"
            env = {name: url for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")}
            yield Network([Bridge(socket=socket_dir / "egress.sock", port=PROXY_PORT)],
                          env | {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}, proxy)
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)
        sweeper.release(socket_dir)


async def platform_egress_policy(settings: Settings) -> EgressPolicy:
    """What no sandbox of this platform reaches: its services (as the settings and this process's
    environment name them), the operator's ranges, private ranges unless allowed."""
    environ = dict(os.environ)
    for name, url in (("DATABASE_URL", settings.database_url), ("REDIS_URL", settings.redis_url)):
        if url is not None:
            environ[name] = url.get_secret_value()
    return await EgressPolicy.for_platform(allow_private=settings.egress_allow_private,
                                           allow_cidrs=settings.egress_allow_cidrs,
                                           deny_cidrs=settings.egress_deny_cidrs, environ=environ)


# -- the toolchain: which interpreter, which node -------------------------------------------


def find_interpreter(plan: SetupPlan) -> Path | None:
    """The interpreter a Python environment is made with (see choose_interpreter)."""
    return choose_interpreter(plan)[0]


def choose_interpreter(plan: SetupPlan) -> tuple[Path | None, list[str]]:
    """(the interpreter, why) for a Python environment, resolved so its prefix can be mounted:
    the version the configuration insists on (missing: SetupFailed), or an absolute path the
    operator (never a repository) names; else the version `.python-version` pins, else one
    `requires-python` accepts, when the toolchain has it (a mismatch is said, not fatal); else
    the platform's own base installation (its site-packages hidden in the sandbox)."""
    if plan.language != "python":
        return None, []
    own_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    own = (Path(sys.base_prefix) / "bin" / f"python{own_version}").resolve()
    if plan.python:
        return _configured_interpreter(plan, own_version, own), []
    reasons = []
    if plan.python_pin:
        found = own if plan.python_pin == own_version else toolchain_pythons().get(plan.python_pin)
        if found:
            return found, [f"python {plan.python_pin}, as .python-version pins"]
        reasons.append(f".python-version pins python {plan.python_pin}, which the toolchain lacks")
    if plan.requires_python:
        try:
            accepted = SpecifierSet(plan.requires_python)
        except InvalidSpecifier:
            return own, [*reasons, (f"requires-python {plan.requires_python!r} is not a version specifier: "
                                   f"python {own_version}")]
        if accepted.contains(platform_python_version(), prereleases=True):
            return own, [*reasons, f"python {own_version} (requires-python {plan.requires_python})"]
        for version, path in sorted(toolchain_pythons().items(), key=lambda item: _version_key(item[0]), reverse=True):
            if accepted.contains(f"{version}.0", prereleases=True) or accepted.contains(f"{version}.99"):
                return path, [*reasons, (f"python {version}: the newest here that requires-python "
                                        f"{plan.requires_python} accepts")]
        reasons.append(f"no python here satisfies requires-python {plan.requires_python}")
    if reasons:
        reasons[-1] += f"; python {own_version} is used"
    return own, reasons


def _configured_interpreter(plan: SetupPlan, own_version: str, own: Path) -> Path:
    wanted = plan.python or ""
    if wanted == own_version:
        return own
    if wanted.startswith("/"):
        if plan.source != "settings":
            raise SetupFailed("python: an interpreter path may only be set by the operator (FIXFLEET_REPO_CONFIGS); "
                              'a repository names a version such as "3.12"')
        path = Path(wanted)
        if path.is_file() and os.access(path, os.X_OK):
            return path.resolve()
        raise SetupFailed(f"python {wanted} is not installed here; install it or name an installed version")
    found = toolchain_pythons().get(wanted)
    if found is None:
        looked = ", ".join(f"{d}/python{wanted}" for d in TOOLCHAIN_BIN)
        raise SetupFailed(f"python {wanted} is not installed here (looked for {looked}, pyenv's and uv's "
                          "versions); install it or name an installed version in .fixfleet.yml")
    return found


def platform_python_version() -> str:
    return ".".join(str(part) for part in sys.version_info[:3])


@functools.cache
def toolchain_pythons() -> dict[str, Path]:
    """major.minor -> an interpreter of that version the machine has: /usr/bin, /usr/local/bin,
    then pyenv's and uv's installed versions (never a shim: the sandbox has no pyenv)."""
    found: dict[str, Path] = {}
    candidates = [Path(d) / f"python3.{minor}" for d in TOOLCHAIN_BIN for minor in range(6, 20)]
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    uv = Path(os.environ.get("UV_PYTHON_INSTALL_DIR") or Path.home() / ".local/share/uv/python")
    for root in (pyenv, uv):
        with contextlib.suppress(OSError):
            for version_dir in sorted(root.iterdir(), reverse=True):
                candidates += sorted(version_dir.glob("bin/python3.[0-9]*"))
    for candidate in candidates:
        version = re.fullmatch(r"python(3\.\d+)", candidate.name)
        if version and version.group(1) not in found and candidate.is_file() and os.access(candidate, os.X_OK):
            found[version.group(1)] = candidate.resolve()
    return found


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


async def node_reasons(plan: SetupPlan) -> list[str]:
    """What the toolchain's node is against what the project pins (engines, .nvmrc): said, not fatal."""
    if plan.language != "node" or not (plan.node_engines or plan.node_pin):
        return []
    version = await asyncio.to_thread(toolchain_node_version)
    if version is None:
        return ["node is not installed on this machine"]
    reasons = []
    if plan.node_engines:
        try:
            fits = semantic_version.NpmSpec(plan.node_engines).match(semantic_version.Version(version))
            reasons.append(f"node {version}" + (f" satisfies engines.node {plan.node_engines}" if fits else
                                                f" does not satisfy package.json's engines.node {plan.node_engines} "
                                                "(the only node here): setup and tests run with it"))
        except ValueError:
            reasons.append(f"engines.node {plan.node_engines!r} is not an npm range fixfleet reads; node {version} is used")
    if plan.node_pin and not _matches_pin(version, plan.node_pin):
        reasons.append(f".nvmrc/.node-version pins node {plan.node_pin}; the toolchain has {version}, which is used")
    return reasons


def _matches_pin(version: str, pin: str) -> bool:
    pin = pin.strip().lower().removeprefix("v")
    if pin in ("node", "stable", "current", "lts/*", "latest"):
        return True
    if pin.startswith("lts/"):
        return NODE_LTS.get(pin[4:]) == int(version.split(".")[0])
    parts = pin.split(".")
    return all(a == b for a, b in zip(parts, version.split("."), strict=False)) and len(parts) <= 3


@functools.cache
def toolchain_node_version() -> str | None:
    node = shutil.which("node")
    if node is None:
        return None
    try:
        done = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip().removeprefix("v") or None


# -- the build's parts ---------------------------------------------------------------------


def environment_hash(plan: SetupPlan, files: Mapping[str, bytes], interpreter: Path | None,
                     from_change: bool = False) -> str:
    digest = hashlib.sha256()
    digest.update(f"recipe {RECIPE_VERSION}\n".encode())
    digest.update(json.dumps(plan.model_dump(exclude={"reasons", "source"}), sort_keys=True).encode())
    digest.update(f"\npython {interpreter}\nfrom a change {from_change}\n".encode())
    for name in sorted(files):
        digest.update(f"{name}\0{hashlib.sha256(files[name]).hexdigest()}\n".encode())
    return digest.hexdigest()[:24]


def _setup_steps(plan: SetupPlan) -> list[str]:
    """The plan's steps, with what the platform adds: a virtualenv to install into first, and
    the package manager's command at /env/bin for sessions (offline, from /env/corepack)."""
    steps = list(plan.steps)
    if plan.language == "python" and MAKE_VENV not in steps:
        steps.insert(0, MAKE_VENV)
    manager = re.fullmatch(r"(pnpm|yarn)@([\w.+-]+)", plan.package_manager or "")
    if manager:
        steps.append(f"mkdir -p /env/bin && corepack install -g {manager.group(0)} "
                     f"&& corepack enable --install-directory /env/bin {manager.group(1)}")
    return steps


def _setup_script(steps: list[str]) -> str:
    """One bash script that stops at the first failure, echoing each step first (quoted: a
    step's own quotes must not end the echo and run the rest of the step as code)."""
    return "set -e\n" + "\n".join(f"echo {shlex.quote('+ ' + step)}\n{step}" for step in steps)


def _failed_step(steps: list[str], output: str) -> str:
    """The step echoed last before the script stopped: the one that failed."""
    for line in reversed(output.splitlines()):
        for step in steps:
            if line == f"+ {step.splitlines()[0] if step else ''}":
                return step
    return steps[-1] if steps else ""


def _keep_generated(tree: Path, entry_dir: Path, allowed: list[str], before: set[str]) -> list[str]:
    """Move node_modules into the environment (a real directory only); keep copies of the
    files the repository's config names that the setup made (plain files only)."""
    _keep_node_modules(tree / "node_modules", entry_dir / "env" / "node_modules")
    kept = []
    for relative in allowed:
        source = tree / relative
        if relative in before or never_laid(relative) or not _plain_file(source, inside=tree):
            continue
        target = entry_dir / "generated" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
        kept.append(relative)
    return kept


def _keep_node_modules(made: Path, kept: Path) -> None:
    if os.path.lexists(kept):  # /env was writable: the setup could have put anything there
        raise SetupFailed(f"the setup made /env/node_modules itself ({_kind(kept)}): refused, nothing is mounted")
    if not os.path.lexists(made):
        return
    if not stat.S_ISDIR(os.lstat(made).st_mode):
        raise SetupFailed(f"the setup left node_modules as {_kind(made)}: refused, nothing is mounted "
                          "(a setup's node_modules must be a real directory)")
    os.rename(made, kept)


def _plain_file(path: Path, inside: Path) -> bool:
    """A regular file below `inside`, reached through real directories only (no link followed)."""
    try:
        parts = path.relative_to(inside).parts
    except ValueError:
        return False
    current = inside
    for index, part in enumerate(parts):
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except OSError:
            return False
        if not (stat.S_ISREG(mode) if index == len(parts) - 1 else stat.S_ISDIR(mode)):
            return False
    return bool(parts)


def _kind(path: Path) -> str:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "missing"
    if stat.S_ISLNK(mode):
        return f"a symbolic link to {os.readlink(path)}"
    return "a directory" if stat.S_ISDIR(mode) else "a file" if stat.S_ISREG(mode) else "a special file"


def _files(tree: Path) -> list[str]:
    found = []
    for directory, dirnames, filenames in os.walk(tree):
        rel = os.path.relpath(directory, tree)
        if rel == "node_modules" or rel.startswith("node_modules/"):
            dirnames.clear()
            continue
        dirnames[:] = [d for d in dirnames if d not in ("__pycache__", ".git")]
        found += [name if rel == "." else f"{rel}/{name}" for name in filenames]
    return found


def _uv_binary() -> str:
    """uv's own executable, to bind into the sandbox: the one installed with the platform's
    interpreter first, then PATH's. A shim is skipped: pyenv's is a bash script that runs
    pyenv, which the sandbox does not have (a process started by its interpreter's path, not
    through the shim, keeps the shims first on PATH)."""
    directories = [str(Path(sys.executable).parent), *os.environ.get("PATH", "").split(os.pathsep)]
    for directory in filter(None, directories):
        candidate = Path(directory) / "uv"
        if candidate.is_file() and os.access(candidate, os.X_OK) and _is_elf(candidate):
            return str(candidate.resolve())
    raise SetupFailed("uv is not installed on the platform's side (pip install uv): it builds "
                      "repository environments")


def _is_elf(path: Path) -> bool:
    with path.open("rb") as binary:
        return binary.read(4) == b"\x7fELF"
