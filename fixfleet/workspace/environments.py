"""The repository's own environment: built once per dependency spec, in the sandbox, kept warm.

    envs/<repo>/<hash>/          what the sandbox mounts read-only at /env: a virtualenv, or
                                 node_modules; `.fixfleet/env.json` says how it was made
    envs/<repo>/<hash>.lock      held while it is built (two agents never build it twice)
    envs/<repo>/cache/           uv's and npm's download caches for this repository only

The hash covers what decides the contents: the setup plan (commands, runner, interpreter) and
the bytes of the dependency files (pyproject.toml, requirements*.txt, lockfiles, ...). A
change to any of them, the agent's included, means a new environment; an unchanged one is
found by one stat. The build runs the plan's commands in the sandbox on a clean checkout at
/workspace, with /env writable and only the registries the plan names reachable. Files the
setup generates in the checkout (a setuptools-scm `_version.py`, `*.egg-info`) are kept with
the environment and laid into every checkout that uses it; they are never part of a change.
The directory goes with the mirror when the mirror is evicted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from pydantic import BaseModel, Field

from fixfleet.config import Settings, get_settings
from fixfleet.errors import PermanentError
from fixfleet.workspace.changes import apply_files
from fixfleet.workspace.egress import EgressPolicy, EgressProxy
from fixfleet.workspace.mirrors import (
    Checkout,
    FileContent,
    WorkspaceManager,
    remove_tree,
)
from fixfleet.workspace.repo_config import (
    CONFIG_FILE,
    SPEC_FILES,
    RepoConfig,
    SetupPlan,
    resolve,
)
from fixfleet.workspace.sandbox import Bridge, RunResult, Sandbox, SandboxSpec

log = logging.getLogger(__name__)
RECIPE_VERSION = "2"  # 2: a Python setup always starts from a virtualenv at /env
META = ".fixfleet"
PROXY_PORT = 3128
SETUP_TAIL = 4000
PRETEND_VERSION = "0.0.0"  # setuptools-scm / hatch-vcs need a version and there is no .git
# Idempotent: a detected plan makes the venv itself; `.fixfleet.yml` setups (documented as plain
# `uv pip install ...` with VIRTUAL_ENV=/env) need one to install into.
MAKE_VENV = 'uv venv --allow-existing --quiet --python "$FIXFLEET_PYTHON" /env'
TOOLCHAIN_BIN = ("/usr/bin", "/usr/local/bin")  # where other Python versions are looked for


class SetupFailed(PermanentError):
    """The repository could not be set up; carries the tail of the setup log. Permanent: the
    same commit and setup plan fail the same way, so the task fails at once with the log."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(f"{message}\n{log_tail}".rstrip())
        self.message, self.log_tail = message, log_tail


class Environment(BaseModel):
    """A ready environment: where it is, how it was made, what a checkout must receive."""

    path: Path
    hash: str
    plan: SetupPlan
    python_prefix: Path | None = None
    generated: list[str] = Field(default_factory=list)  # files the setup made in the checkout
    built_s: float = 0.0  # the build's own time (0 when reused)
    reused: bool = False

    @property
    def mounts_node_modules(self) -> bool:
        return (self.path / "node_modules").is_dir()

    def sandbox_env(self) -> dict[str, str]:
        path = "/env/bin:" if self.plan.language == "python" else "/workspace/node_modules/.bin:"
        extra = {"VIRTUAL_ENV": "/env"} if self.plan.language == "python" else {}
        return {"PATH": path + "/usr/local/bin:/usr/bin:/bin", **extra, **self.plan.env}


class EnvironmentBuilder:
    def __init__(self, workspaces: WorkspaceManager, sandbox: Sandbox,
                 configs: Mapping[str, RepoConfig] | None = None, default_suite_command: str | None = None) -> None:
        self.workspaces, self.sandbox = workspaces, sandbox
        self.configs = dict(configs or {})  # operator settings per repository URL
        self.default_suite_command = default_suite_command

    async def plan_for(self, url: str, files: Mapping[str, bytes]) -> SetupPlan:
        try:
            return resolve(files, self.configs.get(url), self.default_suite_command)
        except ValueError as error:  # a broken .fixfleet.yml, no runner found: the task must say why
            hint = "" if CONFIG_FILE in str(error) else f" (name it in {CONFIG_FILE})"
            raise SetupFailed(f"cannot plan the repository's setup: {error}{hint}") from error

    async def spec_files_at(self, url: str, sha: str) -> dict[str, bytes]:
        return await self.workspaces.read_files(url, sha, SPEC_FILES)

    @staticmethod
    def spec_files_in(tree: Path) -> dict[str, bytes]:
        found = {}
        for name in SPEC_FILES:
            path = tree / name
            if path.is_file() and not path.is_symlink():
                found[name] = path.read_bytes()
        return found

    async def ensure(self, url: str, sha: str, *, overlay: Mapping[str, FileContent] | None = None) -> Environment:
        """The environment for the repository at `sha`, with `overlay` (a change to its
        dependency files) laid on top; built if needed. Raises SetupFailed with the log's tail."""
        overlay = dict(overlay or {})
        files = await self.spec_files_at(url, sha)
        for path, change in overlay.items():
            if change.content is None:
                files.pop(path, None)
            else:
                files[path] = change.content
        plan = await self.plan_for(url, files)
        interpreter = find_interpreter(plan)
        python = interpreter.parent.parent if interpreter else None
        digest = environment_hash(plan, files, interpreter)
        directory = self.workspaces.envs_dir / self.workspaces.mirror_key(url)
        final = directory / digest
        if (final / META / "env.json").exists():
            return self._load(final, plan, python, reused=True)
        directory.mkdir(parents=True, exist_ok=True)
        async with _file_lock(directory / f"{digest}.lock"):
            if (final / META / "env.json").exists():  # built by someone else while we waited
                return self._load(final, plan, python, reused=True)
            return await self._build(url, sha, plan, python, directory, final, overlay)

    def prepare(self, env: Environment, checkout: Checkout) -> list[str]:
        """Lay the setup's generated files into a checkout, and the mount point for node_modules.
        Returns the paths the platform placed there (never part of a change)."""
        placed = []
        source = env.path / META / "generated"
        for relative in env.generated:
            target = checkout.path / relative
            if not target.exists() and not target.is_symlink():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source / relative, target, follow_symlinks=False)
            placed.append(relative)
        if env.mounts_node_modules:
            (checkout.path / "node_modules").mkdir(exist_ok=True)
            placed.append("node_modules")
        return placed

    def spec(self, env: Environment, checkout: Checkout, **kwargs: object) -> SandboxSpec:
        """The sandbox of a session or a test run in `checkout` with this environment."""
        spec = SandboxSpec(workspace=checkout.path, env_dir=env.path, python_prefix=env.python_prefix,
                           env=env.sandbox_env(), **kwargs)  # type: ignore[arg-type]
        if env.mounts_node_modules:
            spec.read_only["/workspace/node_modules"] = env.path / "node_modules"
        return spec

    # -- building ----------------------------------------------------------------------

    async def _build(self, url: str, sha: str, plan: SetupPlan, python: Path | None,
                     directory: Path, final: Path, overlay: Mapping[str, FileContent]) -> Environment:
        started = time.monotonic()
        partial = directory / f".partial-{uuid.uuid4().hex[:8]}"
        partial.mkdir()
        cache = directory / "cache"
        cache.mkdir(exist_ok=True)
        checkout = await self.workspaces.checkout(url, sha, f"setup-{final.name[:12]}-{uuid.uuid4().hex[:6]}")
        apply_files(checkout.path, overlay)
        before = set(_files(checkout.path))
        try:
            result = await self._run_setup(plan, python, checkout.path, partial, cache)
            if result.exit_code != 0:
                step = _failed_step(_setup_steps(plan), result.output_tail)
                raise SetupFailed(f"setting up the repository failed (exit {result.exit_code}): {step}",
                                  result.output_tail[-SETUP_TAIL:])
            generated = self._keep_generated(checkout.path, partial, before)
            seconds = round(time.monotonic() - started, 2)
            meta = {"plan": plan.model_dump(), "python": str(python) if python else None, "generated": generated,
                    "built_s": seconds, "built_at": time.time(), "log_tail": result.output_tail[-SETUP_TAIL:]}
            (partial / META).mkdir(exist_ok=True)
            (partial / META / "env.json").write_text(json.dumps(meta, indent=2))
            os.rename(partial, final)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(remove_tree, partial))
            raise
        finally:
            await self.workspaces.discard(checkout)
        log.info("built the environment %s for %s in %.1fs", final.name, url, seconds)
        env = self._load(final, plan, python, reused=False)
        return env.model_copy(update={"built_s": seconds})

    async def _run_setup(self, plan: SetupPlan, python: Path | None, tree: Path, env_dir: Path,
                         cache: Path) -> RunResult:
        async with network_access(plan.setup_domains) as network:
            spec = network.apply(SandboxSpec(workspace=tree, env_dir=env_dir, env_writable=True, python_prefix=python,
                                             writable={"/cache": cache},
                                             read_only={"/opt/fixfleet/bin/uv": Path(_uv_binary())},
                                             env=self._setup_env(plan)))
            script = _setup_script(_setup_steps(plan))
            result = await self.sandbox.run(spec, ["/bin/bash", "-c", script], timeout_s=plan.timeouts.setup_s)
            if network.refused():
                result.output_tail += f"\n[fixfleet] the setup tried to reach {network.refused()}: not in network.setup"
            return result

    def _setup_env(self, plan: SetupPlan) -> dict[str, str]:
        interpreter = find_interpreter(plan) or ""
        path = "/env/bin:/opt/fixfleet/bin:/usr/local/bin:/usr/bin:/bin" if plan.language == "python" else \
            "/workspace/node_modules/.bin:/opt/fixfleet/bin:/usr/local/bin:/usr/bin:/bin"
        return {"PATH": path, "UV_CACHE_DIR": "/cache/uv",
                "UV_LINK_MODE": "copy", "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1",
                "VIRTUAL_ENV": "/env", "FIXFLEET_PYTHON": str(interpreter),
                "npm_config_cache": "/cache/npm", "npm_config_update_notifier": "false",
                "SETUPTOOLS_SCM_PRETEND_VERSION": PRETEND_VERSION, **plan.env}

    @staticmethod
    def _keep_generated(tree: Path, env_dir: Path, before: set[str]) -> list[str]:
        """Move node_modules into the environment; keep copies of other files the setup made."""
        if (tree / "node_modules").is_dir():
            os.rename(tree / "node_modules", env_dir / "node_modules")
        generated = sorted(p for p in _files(tree) if p not in before and not p.startswith("node_modules/"))
        store = env_dir / META / "generated"
        for relative in generated:
            (store / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(tree / relative, store / relative, follow_symlinks=False)
        return generated

    def _load(self, final: Path, plan: SetupPlan, python: Path | None, *, reused: bool) -> Environment:
        meta = json.loads((final / META / "env.json").read_text())
        return Environment(path=final, hash=final.name, plan=plan, python_prefix=python,
                           generated=meta.get("generated", []), built_s=meta.get("built_s", 0.0), reused=reused)


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
    try:
        async with EgressProxy(socket_dir / "egress.sock", domains, policy=policy) as proxy:
            url = f"http://127.0.0.1:{PROXY_PORT}"
            env = {name: url for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")}
            yield Network([Bridge(socket=socket_dir / "egress.sock", port=PROXY_PORT)],
                          env | {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}, proxy)
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)


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


def find_interpreter(plan: SetupPlan) -> Path | None:
    """The interpreter a Python environment is made with (resolved, so its prefix can be mounted):
    the platform's own base installation (its site-packages hidden in the sandbox), another
    installed version a repository asks for ("3.12": python3.12 from the toolchain), or an
    absolute path the operator (never a repository) names."""
    if plan.language != "python":
        return None
    own = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    wanted = plan.python
    if not wanted or wanted == f"{sys.version_info.major}.{sys.version_info.minor}":
        return own.resolve()
    if wanted.startswith("/"):
        if plan.source != "settings":
            raise SetupFailed("python: an interpreter path may only be set by the operator (FIXFLEET_REPO_CONFIGS); "
                              'a repository names a version such as "3.12"')
        candidates = [Path(wanted)]
    else:
        candidates = [Path(directory) / f"python{wanted}" for directory in TOOLCHAIN_BIN]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate.resolve()
    raise SetupFailed(f"python {wanted} is not installed here (looked for {', '.join(map(str, candidates))}); "
                      "install it or name an installed version in .fixfleet.yml")


def environment_hash(plan: SetupPlan, files: Mapping[str, bytes], interpreter: Path | None) -> str:
    digest = hashlib.sha256()
    digest.update(f"recipe {RECIPE_VERSION}\n".encode())
    digest.update(json.dumps(plan.model_dump(exclude={"reasons", "source"}), sort_keys=True).encode())
    digest.update(f"\npython {interpreter}\n".encode())
    for name in sorted(files):
        digest.update(f"{name}\0{hashlib.sha256(files[name]).hexdigest()}\n".encode())
    return digest.hexdigest()[:24]


def _setup_steps(plan: SetupPlan) -> list[str]:
    venv = plan.language == "python" and MAKE_VENV not in plan.steps
    return [MAKE_VENV, *plan.steps] if venv else list(plan.steps)


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


@contextlib.asynccontextmanager
async def _file_lock(path: Path):  # noqa: ANN202 - an async context manager
    """An exclusive lock across processes, waited for without blocking the event loop."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(0.2)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock
