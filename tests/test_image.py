"""The container image for KubeRay (cluster/Dockerfile), tested without a container engine.

Its two build scripts are run or checked here: cluster/image/install-python.sh is replayed into a
temporary directory exactly as the Dockerfile's build stage runs it (same build context, filtered by
.dockerignore, same commands), and the result is checked as the image would be used: `fixfleet`,
`ray` at the locked version, the bundled Claude Code CLI, a consistent environment, and the PATH of
the login shell KubeRay starts Ray with. cluster/image/install-system.sh changes the system, so it
is only checked: its syntax and that every package it installs exists in Debian's archive. The
Dockerfile itself is parsed and held to what KubeRay and a read-only root need.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "cluster" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
IMAGE_DIR = ROOT / "cluster" / "image"
LOCK = IMAGE_DIR / "requirements.txt"
INSTALL_PYTHON = IMAGE_DIR / "install-python.sh"
INSTALL_SYSTEM = IMAGE_DIR / "install-system.sh"
LOCK_COMMAND = "uv pip compile pyproject.toml -o cluster/image/requirements.txt --python-version 3.11"
# What the platform and KubeRay's pods call (cluster/image/install-system.sh says why each).
REQUIRED_PACKAGES = {"git", "bubblewrap", "socat", "ca-certificates", "wget", "bash"}
NODE_PACKAGES = {"nodejs", "npm"}
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|KEY|CREDENTIAL", re.IGNORECASE)
PINNED_BASE = re.compile(r"^python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?$")


def _run(argv: list, **kwargs) -> subprocess.CompletedProcess[str]:
    """A command's result, its output captured as text; the caller checks the exit code."""
    return subprocess.run([str(a) for a in argv], check=False, capture_output=True, text=True, **kwargs)


def _uv() -> list[str]:
    """uv, a dependency of fixfleet: the one installed with this interpreter."""
    from uv import find_uv_bin

    return [find_uv_bin()]


def _lock_pins(text: str | None = None) -> dict[str, str]:
    pins = {}
    for line in (LOCK.read_text() if text is None else text).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"not an exact pin: {line}"
        pins[canonicalize_name(requirement.name)] = specifiers[0].version
    return pins


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


# --- the Dockerfile, parsed -------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    stage: str  # the stage's name ("" before the first FROM)


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order, continuation lines joined, comments dropped (a simple parser: no
    heredocs, which this Dockerfile does not use)."""
    instructions: list[Instruction] = []
    stage, pending = "", ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments and parser directives; inside a continuation Docker skips them too
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        logical, pending = pending + line, ""
        keyword, _, args = logical.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            stage = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(instructions))
        instructions.append(Instruction(keyword, args, stage))
    assert not pending, "the Dockerfile ends in a continuation line"
    return instructions


def _words(args: str) -> list[str]:
    """An instruction's words, without its --flags (COPY --from=..., RUN --mount=...)."""
    words = shlex.split(args)
    while words and words[0].startswith("--"):
        words.pop(0)
    return words


def _flags(args: str) -> dict[str, str]:
    flags = {}
    for word in shlex.split(args):
        if not word.startswith("--"):
            break
        name, _, value = word[2:].partition("=")
        flags[name] = value
    return flags


def _assignments(args: str) -> dict[str, str]:
    """ENV/ARG/LABEL `name=value ...` (or the old `ENV name value`)."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.partition("=")[::2] for word in words)


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def _stages(instructions: list[Instruction]) -> list[str]:
    return [i.stage for i in instructions if i.keyword == "FROM"]


def _final(instructions: list[Instruction]) -> list[Instruction]:
    last = _stages(instructions)[-1]
    return [i for i in instructions if i.stage == last]


def _base_images(instructions: list[Instruction]) -> list[str]:
    """Each FROM's image with the global ARGs' defaults substituted."""
    defaults = {}
    for i in instructions:
        if i.keyword == "FROM":
            break
        if i.keyword == "ARG":
            defaults |= _assignments(i.args)
    images = []
    for i in instructions:
        if i.keyword == "FROM":
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults[m.group(1) or m.group(2)], i.args.split()[0])
            images.append(image)
    return images


def _script_runs(instructions: list[Instruction]) -> list[tuple[Instruction, str, list[str]]]:
    """(RUN, script name, its arguments) for every shell script a RUN executes: a command's first
    word (after VAR=value prefixes), or the first argument of bash/sh."""
    runs = []
    for i in instructions:
        if i.keyword != "RUN":
            continue
        commands: list[list[str]] = [[]]
        for word in _words(i.args):
            if word in ("&&", "||", ";", "|"):
                commands.append([])
            elif word.endswith(";"):
                commands[-1].append(word[:-1])
                commands.append([])
            else:
                commands[-1].append(word)
        for words in commands:
            while words and re.fullmatch(r"\w+=\S*", words[0]):
                words.pop(0)
            if words and Path(words[0]).name in ("bash", "sh"):
                words.pop(0)
            if words and words[0].endswith(".sh"):
                runs.append((i, Path(words[0]).name, words[1:]))
    return runs


def test_base_image_is_an_exact_python_311_slim_bookworm_tag(dockerfile: list[Instruction]) -> None:
    images = _base_images(dockerfile)
    assert len(images) >= 2, "a build stage and a runtime stage"
    for image in images:
        assert PINNED_BASE.match(image), f"{image}: not an exact python:3.11.N-slim-bookworm tag"
        assert not image.endswith(":latest")
    # The environment built in one stage runs on the other's interpreter: one base for both.
    assert len(set(images)) == 1
    assert "digest" in DOCKERFILE.read_text(), "the Dockerfile tells the operator to pin the digest"


def test_dockerfile_runs_exactly_the_two_install_scripts(dockerfile: list[Instruction]) -> None:
    runs = _script_runs(dockerfile)
    assert {name for _, name, _ in runs} == {"install-system.sh", "install-python.sh"}
    system = [(i, args) for i, name, args in runs if name == "install-system.sh"]
    python = [(i, args) for i, name, args in runs if name == "install-python.sh"]
    final, build = _stages(dockerfile)[-1], _stages(dockerfile)[0]
    assert [i.stage for i, _ in system] == [final], "system packages once, in the image that ships"
    # The build stage makes the environment in two steps (dependencies, then the project) into one prefix.
    assert {i.stage for i, _ in python} == {build}
    assert [args[1:] for _, args in python] in ([["deps"], ["project"]], [[]], [["all"]])
    assert len({args[0] for _, args in python}) == 1
    # What runs is the repository's script, copied where the RUN finds it.
    run_path = next(w for w in _words(system[0][0].args) if w.endswith("install-system.sh"))
    assert any(_words(i.args) == ["cluster/image/install-system.sh", run_path]
               for i in _final(dockerfile) if i.keyword == "COPY")
    for script in (INSTALL_PYTHON, INSTALL_SYSTEM):
        assert os.access(script, os.X_OK), f"{script} must be executable (the Dockerfile runs it directly)"


def test_dockerfile_copies_the_lock_before_the_source(dockerfile: list[Instruction]) -> None:
    """The layer with Ray and every dependency is reused while only the code changes."""
    build = [i for i in dockerfile if i.stage == _stages(dockerfile)[0]]
    copies = [(n, _words(i.args)[:-1]) for n, i in enumerate(build) if i.keyword == "COPY"]
    lock_at = next(n for n, sources in copies if "cluster/image/requirements.txt" in sources)
    source_at = min(n for n, sources in copies if any(s.rstrip("/") in {"pyproject.toml", "fixfleet"} for s in sources))
    deps_at = next(n for n, i in enumerate(build) if i.keyword == "RUN" and "install-python.sh" in i.args)
    assert lock_at < deps_at < source_at
    lock_copy = next(sources for n, sources in copies if n == lock_at)
    assert set(lock_copy) <= {"cluster/image/requirements.txt", "cluster/image/install-python.sh"}, \
        "nothing that changes with the code may come before the dependencies' layer"


def test_image_runs_as_uid_1000_with_kuberays_command(dockerfile: list[Instruction]) -> None:
    final = _final(dockerfile)
    users = [i.args for i in final if i.keyword == "USER"]
    assert users, "the image must not run as root"
    uid = users[-1].split(":")[0]
    assert uid == "1000", f"USER {users[-1]}: KubeRay's pods run Ray as uid 1000 (numeric for runAsNonRoot)"
    assert not any(i.keyword == "ENTRYPOINT" for i in dockerfile), "KubeRay runs `bash -lc ... ray start`"
    workdirs = [i.args for i in final if i.keyword == "WORKDIR"]
    assert workdirs[-1] == "/home/ray"
    text = " ".join(i.args for i in final if i.keyword == "RUN")
    assert re.search(r"useradd\b.*--uid 1000\b.*--home-dir /home/ray\b.* ray\b", text)


def test_image_environment(dockerfile: list[Instruction]) -> None:
    env: dict[str, str] = {}
    for i in _final(dockerfile):
        if i.keyword == "ENV":
            env |= _assignments(i.args)
    prefix = next(args[0] for _, name, args in _script_runs(dockerfile) if name == "install-python.sh")
    assert env["PATH"].startswith(f"{prefix}/bin:") and env["PATH"].endswith("$PATH")
    assert env["HOME"] == "/home/ray"
    assert env["FIXFLEET_HOME"].startswith("/home/ray/"), "state on the pod's writable volume"
    # KubeRay's `bash -lc` reads /etc/profile, which resets PATH: the environment's profile file is linked in.
    runs = " ".join(i.args for i in _final(dockerfile) if i.keyword == "RUN")
    assert f"{prefix}/etc/profile.d/fixfleet.sh /etc/profile.d/" in runs
    copied = [_words(i.args) for i in _final(dockerfile) if i.keyword == "COPY" and "from" in _flags(i.args)]
    assert any(prefix.startswith(words[0].rstrip("/")) for words in copied), "the runtime stage gets the environment"
    labels: dict[str, str] = {}
    for i in _final(dockerfile):
        if i.keyword == "LABEL":
            labels |= _assignments(i.args)
    assert labels.get("org.opencontainers.image.version", _project()["version"]) == _project()["version"]


def test_image_writes_only_under_home_and_tmp(dockerfile: list[Instruction]) -> None:
    """With readOnlyRootFilesystem, what is written at run time must be on the pod's volumes."""
    final = _final(dockerfile)
    env: dict[str, str] = {}
    for i in final:
        if i.keyword == "ENV":
            env |= _assignments(i.args)
    writable = ("/home/ray", "/tmp")
    for name, value in env.items():
        if name.endswith(("_HOME", "_DIR", "_CACHE", "TMPDIR")) or name == "HOME":
            assert value.startswith(writable), f"{name}={value} is not on a writable volume"
    assert not any(i.keyword == "VOLUME" and not i.args.strip("[]\" ").startswith(writable) for i in final)


def test_dockerfile_holds_no_secrets(dockerfile: list[Instruction]) -> None:
    for i in dockerfile:
        if i.keyword in ("ENV", "ARG"):
            for name, value in _assignments(i.args).items():
                assert not SECRET_NAME.search(name), f"{i.keyword} {name}: secrets come from the pod's Secret"
                assert not re.search(r"sk-ant-|ghp_|github_pat_|xox[bp]-", value)
    text = DOCKERFILE.read_text()
    assert not re.search(r"(COPY|ADD)\s+[^\n]*(\.env|credentials|\.pem|id_rsa)", text)


# --- the build context ------------------------------------------------------------------------------


def _dockerignore() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go's filepath.Match plus `**`), anchored at the context's root."""
    pattern, out, n = pattern.strip("/"), "", 0
    while n < len(pattern):
        if pattern.startswith("**/", n):
            out, n = out + "(?:.*/)?", n + 3
        elif pattern.startswith("**", n):
            out, n = out + ".*", n + 2
        elif pattern[n] == "*":
            out, n = out + "[^/]*", n + 1
        elif pattern[n] == "?":
            out, n = out + "[^/]", n + 1
        elif pattern[n] == "[":
            end = pattern.index("]", n)
            out, n = out + pattern[n:end + 1], end + 1
        else:
            out, n = out + re.escape(pattern[n]), n + 1
    return re.compile(out)


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` (relative to the context) out: the last pattern matching it or
    one of its parent folders decides; `!` brings a path back."""
    parts, result = path.split("/"), False
    for raw in patterns:
        negate, regex = raw.startswith("!"), _pattern(raw.lstrip("!"))
        if any(regex.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            result = not negate
    return result


def _context_files() -> list[str]:
    """The repository's files that a build context would offer (tracked or new, not git-ignored)."""
    listed = _run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT)
    if listed.returncode == 0:
        return [name for name in listed.stdout.splitlines() if (ROOT / name).is_file()]
    return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts]


def test_dockerignore_keeps_what_the_build_copies_and_drops_the_rest(dockerfile: list[Instruction]) -> None:
    patterns = _dockerignore()
    sources = {s.rstrip("/") for i in dockerfile if i.keyword == "COPY" and "from" not in _flags(i.args)
               for s in _words(i.args)[:-1]}
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not ignored(source, patterns), f"COPY {source}: .dockerignore leaves it out of the context"
    copied = [f for f in _context_files() if any(f == s or f.startswith(s + "/") for s in sources)]
    left_out = [f for f in copied if ignored(f, patterns)]
    assert not left_out, f"files the image needs are left out of the context: {left_out[:10]}"
    # The package build needs these; the image needs the agents' skills and the Serve config.
    for needed in ("pyproject.toml", "README.md", "skills/mcp.json", "cluster/serve_config.yaml",
                   "fixfleet/store/migrations", "fixfleet/workspace/sandbox_helpers"):
        assert any(f == needed or f.startswith(needed + "/") for f in copied), f"{needed} is not copied"
    for junk in (".git/config", ".env", "fixfleet/.env", "tests/test_image.py", "fixfleet/__pycache__/cli.pyc",
                 "actors/x.pyc", "fixfleet.egg-info/PKG-INFO", ".venv/bin/python", ".pytest_cache/v/cache",
                 ".benchmarks/Linux/0001.json", "build/lib/fixfleet/cli.py", "notebooks/.ipynb_checkpoints/a.ipynb"):
        assert ignored(junk, patterns), f"{junk} would be sent to the builder"


# --- the lock ---------------------------------------------------------------------------------------


def test_lock_pins_every_dependency_exactly() -> None:
    pins = _lock_pins()
    assert pins, "an empty lock"
    for line in _project()["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in the lock"
        assert requirement.specifier.contains(Version(pins[name]), prereleases=True), \
            f"the lock pins {name}=={pins[name]}, which pyproject's {line!r} does not allow"
    assert "fixfleet" not in pins, "the project itself is installed from its wheel (--no-deps)"
    header = LOCK.read_text().split("\n\n")[0]
    assert LOCK_COMMAND in header, "the lock's header says how to regenerate it"


def test_lock_is_the_resolution_of_pyproject(tmp_path: Path) -> None:
    """Resolved again with the lock's versions as constraints, pyproject gives exactly the lock:
    no dependency (of an extra such as ray[serve] either) is missing, none is left over."""
    out = tmp_path / "requirements.txt"
    done = _run([*_uv(), "pip", "compile", "pyproject.toml", "--python-version", "3.11", "--constraint", LOCK,
                 "--no-header", "--no-annotate", "--quiet", "-o", out], cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    resolved, pins = _lock_pins(out.read_text()), _lock_pins()
    assert set(resolved) - set(pins) == set(), "needed but not in the lock"
    assert set(pins) - set(resolved) == set(), "in the lock but not needed"
    assert resolved == pins


# --- install-system.sh ------------------------------------------------------------------------------


def _system_packages(with_node: str) -> list[str]:
    done = _run(["bash", INSTALL_SYSTEM, "--print-packages"], env={**os.environ, "WITH_NODE": with_node}, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_install_system_script_is_valid_bash() -> None:
    done = _run(["bash", "-n", str(INSTALL_SYSTEM)])
    assert done.returncode == 0, done.stderr
    text = INSTALL_SYSTEM.read_text()
    assert "--no-install-recommends" in text and "rm -rf /var/lib/apt/lists/*" in text
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text


@pytest.mark.parametrize("with_node", ["1", "0"])
def test_install_system_package_list(with_node: str) -> None:
    packages = _system_packages(with_node)
    assert REQUIRED_PACKAGES <= set(packages)
    assert (NODE_PACKAGES <= set(packages)) == (with_node == "1")
    assert len(packages) == len(set(packages))


def test_install_system_packages_exist_in_debian() -> None:
    """Every package either variant installs is in apt's cache (this machine: Debian bookworm, as the image)."""
    packages = sorted(set(_system_packages("1")) | set(_system_packages("0")))
    if shutil.which("apt-cache") is None:
        pytest.skip("apt-cache is not installed here: the packages' existence is not checked")
    shown = _run(["apt-cache", "show", "--no-all-versions", *packages], timeout=120)
    found = set(re.findall(r"^Package: (\S+)$", shown.stdout, re.MULTILINE))
    missing = [p for p in packages if p not in found]
    assert not missing, f"not in apt's cache (run apt-get update on a Debian bookworm machine?): {missing}"


def test_install_system_rejects_a_bad_switch() -> None:
    done = _run(["bash", INSTALL_SYSTEM, "--print-packages"], env={**os.environ, "WITH_NODE": "yes"}, timeout=30)
    assert done.returncode == 2 and "WITH_NODE" in done.stderr


# --- install-python.sh: replayed as the Dockerfile's build stage runs it ----------------------------


def test_install_python_script_usage() -> None:
    for args in ([], ["/tmp/x", "everything"], ["/tmp/x", "deps", "extra"]):
        done = _run(["bash", str(INSTALL_PYTHON), *args], timeout=30)
        assert done.returncode == 2 and "usage:" in done.stderr
    done = _run(["bash", "-n", str(INSTALL_PYTHON)])
    assert done.returncode == 0, done.stderr


@dataclass
class Built:
    root: Path  # stands for the image's /
    prefix: Path  # the environment (the image's /opt/fixfleet/venv)
    source: Path  # the project's source (the build stage's /opt/fixfleet/src: its wheel is built there)
    log: str

    def run(self, *argv: str | Path, **kwargs) -> subprocess.CompletedProcess[str]:
        return _run(list(argv), timeout=120, cwd=self.root, env=_clean_env(), **kwargs)


def _clean_env() -> dict[str, str]:
    """This machine's environment without a virtualenv, PYTHONPATH or a uv on PATH (the build stage
    has none: the script bootstraps the version the lock pins, as it does there)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "UV")}
    env["PATH"] = os.pathsep.join(d for d in env.get("PATH", "/usr/bin:/bin").split(os.pathsep)
                                  if d and not (Path(d) / "uv").exists())
    return env


def _replay_build_stage(instructions: list[Instruction], root: Path) -> str:
    """The build stage's COPYs (through .dockerignore) and RUNs, with the image's / at `root`."""
    def here(path: str) -> Path:
        return root / path.lstrip("/")

    patterns, workdir, log = _dockerignore(), "/", []
    env = _clean_env() | {"PYTHON": sys.executable, "UV_COMPILE_BYTECODE": "0"}  # bytecode: not worth the time here
    for i in instructions:
        if i.keyword == "WORKDIR":
            workdir = os.path.join(workdir, i.args)
            here(workdir).mkdir(parents=True, exist_ok=True)
        elif i.keyword == "COPY":
            *sources, dest = _words(i.args)
            target = here(os.path.join(workdir, dest))
            for source in sources:
                origin = ROOT / source
                if origin.is_dir():
                    for file in origin.rglob("*"):  # symbolic links are not followed, and kept: as COPY does
                        rel = file.relative_to(ROOT).as_posix()
                        if (file.is_file() or file.is_symlink()) and not ignored(rel, patterns):
                            (target / file.relative_to(origin)).parent.mkdir(parents=True, exist_ok=True)
                            shutil.copy2(file, target / file.relative_to(origin), follow_symlinks=False)
                else:
                    into = target / origin.name if dest.endswith("/") or len(sources) > 1 else target
                    into.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, into)
        elif i.keyword == "RUN":
            argv = [str(here(w)) if w.startswith("/") else w for w in _words(i.args)]
            done = _run(argv, cwd=here(workdir), env=env, timeout=1800)
            log.append(f"$ {shlex.join(argv)}\n{done.stdout}{done.stderr}")
            assert done.returncode == 0, "\n".join(log)[-6000:]
        else:
            assert i.keyword in ("FROM", "ENV", "ARG", "LABEL"), f"the replay does not know {i.keyword}"
    return "\n".join(log)


@pytest.fixture(scope="module")
def built(dockerfile: list[Instruction], tmp_path_factory: pytest.TempPathFactory) -> Built:
    build = [i for i in dockerfile if i.stage == _stages(dockerfile)[0]]
    root = tmp_path_factory.mktemp("image") / "root"
    log = _replay_build_stage(build, root)
    prefix = next(args[0] for _, name, args in _script_runs(build) if name == "install-python.sh")
    workdir = [i.args for i in build if i.keyword == "WORKDIR"][-1]
    return Built(root=root, prefix=root / prefix.lstrip("/"), source=root / workdir.lstrip("/"), log=log)


@pytest.mark.image
def test_install_python_builds_the_locked_environment(built: Built) -> None:
    assert "install-python.sh: ok:" in built.log
    assert (built.prefix / "bin" / "python").exists() and (built.prefix / "pyvenv.cfg").is_file()
    version = built.run(built.prefix / "bin" / "python", "-c", "import sys; print(sys.version_info[:2])")
    assert version.stdout.strip() == "(3, 11)"
    # Exactly the lock, plus fixfleet itself (from its wheel: not editable, nothing read from the source).
    frozen = built.run(*_uv(), "pip", "freeze", "--python", built.prefix / "bin" / "python")
    assert frozen.returncode == 0, frozen.stderr
    lines = frozen.stdout.splitlines()
    assert not [line for line in lines if line.startswith("-e ")], "fixfleet is installed editable"
    project = [line for line in lines if canonicalize_name(re.split(r"[ =@]", line)[0]) == "fixfleet"]
    assert len(project) == 1, lines
    assert _lock_pins("\n".join(line for line in lines if line not in project)) == _lock_pins()


@pytest.mark.image
def test_installed_environment_passes_pip_check(built: Built) -> None:
    done = built.run(*_uv(), "pip", "check", "--python", built.prefix / "bin" / "python")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.image
def test_fixfleet_command_works(built: Built) -> None:
    done = built.run(built.prefix / "bin" / "fixfleet", "--help")
    assert done.returncode == 0, done.stderr
    assert "demo" in done.stdout and "up" in done.stdout


@pytest.mark.image
def test_ray_is_the_pinned_version(built: Built) -> None:
    done = built.run(built.prefix / "bin" / "ray", "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"ray, version {_lock_pins()['ray']}"
    assert _lock_pins()["ray"] == "2.60.0"


@pytest.mark.image
def test_bundled_claude_cli_answers(built: Built) -> None:
    """The CLI fixfleet binds into the agents' sandbox (actors.session.BUNDLED_CLI) is there and runs."""
    probe = ("import subprocess; from actors.session import BUNDLED_CLI; print(BUNDLED_CLI); "
             "print(subprocess.run([str(BUNDLED_CLI), '--version'], capture_output=True, text=True).stdout)")
    done = built.run(built.prefix / "bin" / "python", "-I", "-c", probe)
    assert done.returncode == 0, done.stderr
    path, answer = done.stdout.split("\n", 1)
    assert Path(path).is_relative_to(built.prefix), f"{path}: not the environment's"
    assert "(Claude Code)" in answer
    shipped = (Path(path).parent / "claude.version").read_text().strip()
    assert answer.strip() == shipped, "the CLI is the one claude-agent-sdk ships"


@pytest.mark.image
def test_installed_fixfleet_finds_its_skills_and_serve_config(built: Built) -> None:
    probe = ("import importlib.util; from actors.skills import SKILLS_ROOT; from actors.mcp import DEFAULT_TEMPLATE; "
             "from fixfleet.platform import CONFIG_PATH; print(importlib.util.find_spec('serve_app.deployment').origin, "
             "SKILLS_ROOT, DEFAULT_TEMPLATE, CONFIG_PATH, sep='\\n')")
    done = built.run(built.prefix / "bin" / "python", "-I", "-c", probe)
    assert done.returncode == 0, done.stderr
    deployment, skills, template, config = map(Path, done.stdout.split())
    site = built.prefix.resolve()
    assert deployment.resolve().is_relative_to(site), "fixfleet runs from the environment, not a source tree"
    assert skills.resolve().is_relative_to(site) and (skills / "planning").is_dir() and (skills / "executor").is_dir()
    assert template.is_file() and template.resolve().is_relative_to(site)
    # cluster/serve_config.yaml, package data (load_config reads it; `serve run` takes the file itself).
    assert config.is_file() and config.resolve().is_relative_to(site)


@pytest.mark.image
def test_kuberays_login_shell_finds_the_environment(built: Built) -> None:
    """KubeRay runs `/bin/bash -lc -- "ulimit -n 65536; ray start ..."`: Debian's /etc/profile resets
    PATH, then sources /etc/profile.d/*.sh, where the image links the environment's profile file."""
    if not Path("/etc/profile").is_file():
        pytest.skip("no /etc/profile on this machine")
    profile = built.prefix / "etc" / "profile.d" / "fixfleet.sh"
    script = f". /etc/profile; . {shlex.quote(str(profile))}; . {shlex.quote(str(profile))}; " \
             "echo \"$PATH\"; command -v ray fixfleet python"
    done = _run(["bash", "--noprofile", "--norc", "-c", script], timeout=60,
                env={"HOME": str(built.root), "PATH": f"{built.prefix / 'bin'}:/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    path, *found = done.stdout.splitlines()
    assert path.split(":").count(str(built.prefix / "bin")) == 1
    assert path.startswith(str(built.prefix / "bin") + ":")
    assert found == [str(built.prefix / "bin" / name) for name in ("ray", "fixfleet", "python")]
