#!/usr/bin/env bash
# fixfleet's Python side in a virtual environment at PREFIX, made with uv:
#
#   cluster/image/install-python.sh PREFIX [deps|project|all]
#
#   deps     the pinned dependencies of cluster/image/requirements.txt, exactly (uv pip sync)
#   project  fixfleet itself, a wheel built from the checkout this script is in (--no-deps), then checks the result
#   all      both (the default); cluster/Dockerfile runs `deps` before it copies the source, so a
#            change of the code does not reinstall Ray
#
# The project is installed from its wheel, not editable: everything fixfleet reads (the agents'
# skills, the Serve config, migrations, templates) is package data in site-packages, so the
# checkout is needed only while the wheel is built (the image leaves it in the build stage).
#
# Environment: PYTHON   the interpreter, Python 3.11 (default python3.11)
#              UV       uv's executable (default: the environment's own, the one on PATH, else
#                       the version the lock pins, installed with pip into a temporary directory)
#              UV_COMPILE_BYTECODE=1  precompile everything (the image does: its root is read-only)
# Needs the package index (PyPI, or UV_DEFAULT_INDEX) unless uv's cache holds every file.
set -euo pipefail

die() { echo "install-python.sh: $*" >&2; exit 1; }
[[ $# -ge 1 && $# -le 2 ]] || { echo "usage: $0 PREFIX [deps|project|all]" >&2; exit 2; }
PREFIX=$(realpath -m -- "$1")
PHASE=${2:-all}
case $PHASE in deps|project|all) ;; *) echo "usage: $0 PREFIX [deps|project|all]" >&2; exit 2 ;; esac

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
PROJECT=$(cd -- "$HERE/../.." && pwd)
LOCK=$HERE/requirements.txt
PYTHON=${PYTHON:-python3.11}
VENV_PYTHON=$PREFIX/bin/python
export UV_PYTHON_DOWNLOADS=never  # the image's own interpreter, never one uv would download

[[ -f $LOCK ]] || die "the lock $LOCK is missing"
pinned() {  # the version the lock pins for a package: pinned NAME
  sed -n -E "s/^$1(\[[^]]*\])?==([^ ;]+).*/\2/p" "$LOCK" | head -n 1
}

if [[ -z ${UV:-} ]]; then
  if [[ -x $PREFIX/bin/uv ]]; then  # the locked uv, installed by the deps phase
    UV=$PREFIX/bin/uv
  elif command -v uv >/dev/null; then
    UV=$(command -v uv)
  else
    version=$(pinned uv)
    [[ -n $version ]] || die "uv is not installed and the lock pins no uv"
    bootstrap=$(mktemp -d)
    trap 'rm -rf -- "$bootstrap"' EXIT
    "$PYTHON" -m pip install --quiet --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
      --target "$bootstrap" "uv==$version"
    UV=$bootstrap/bin/uv
  fi
fi
echo "install-python.sh: $("$UV" --version), prefix $PREFIX, phase $PHASE"

if [[ $PHASE != project ]]; then
  if [[ ! -x $VENV_PYTHON ]]; then
    "$UV" venv --python "$PYTHON" "$PREFIX"
  fi
  "$VENV_PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || die "$VENV_PYTHON is not Python 3.11 (the lock is resolved for 3.11)"
  "$UV" pip sync --python "$VENV_PYTHON" "$LOCK"
fi

if [[ $PHASE == deps ]]; then
  exit 0
fi

[[ -x $VENV_PYTHON ]] || die "no environment at $PREFIX: run the deps phase first"
[[ -f $PROJECT/pyproject.toml ]] || die "no project at $PROJECT (pyproject.toml is missing)"
wheels=$(mktemp -d)
"$UV" build --quiet --wheel --out-dir "$wheels" "$PROJECT"
"$UV" pip install --python "$VENV_PYTHON" --no-deps --reinstall-package fixfleet "$wheels"/fixfleet-*.whl
rm -rf -- "$wheels" "$PROJECT/build"

# On a login shell's PATH too: KubeRay starts Ray with `bash -lc`, and Debian's /etc/profile resets
# PATH; the image links this file into /etc/profile.d.
mkdir -p "$PREFIX/etc/profile.d"
cat > "$PREFIX/etc/profile.d/fixfleet.sh" <<PROFILE
# fixfleet's environment first on PATH (written by cluster/image/install-python.sh)
case ":\$PATH:" in
  *":$PREFIX/bin:"*) ;;
  *) PATH="$PREFIX/bin:\$PATH"; export PATH ;;
esac
PROFILE

# The result: consistent, the commands there, and the Claude Code CLI fixfleet runs found and executable.
"$UV" pip check --python "$VENV_PYTHON"
"$PREFIX/bin/fixfleet" --help >/dev/null || die "fixfleet --help failed"
ray_version=$("$PREFIX/bin/ray" --version)
[[ $ray_version == "ray, version $(pinned ray)" ]] \
  || die "ray --version says '$ray_version'; the lock pins $(pinned ray)"
"$VENV_PYTHON" -I - "$PREFIX" "$PROJECT" <<'PY'  # -I: the installed code, not the working directory's
import os
import subprocess
import sys
from pathlib import Path

prefix, project = Path(sys.argv[1]), Path(sys.argv[2])
from actors.session import BUNDLED_CLI  # where fixfleet finds the CLI it runs in the sandbox
from actors.skills import SKILLS_ROOT
from fixfleet.workspace.environments import _uv_binary  # the uv it binds into the sandbox

if not (BUNDLED_CLI.is_file() and os.access(BUNDLED_CLI, os.X_OK)):
    sys.exit(f"install-python.sh: the bundled Claude Code CLI is not an executable at {BUNDLED_CLI}")
env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
       "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1"}
done = subprocess.run([str(BUNDLED_CLI), "--version"], capture_output=True, text=True, timeout=120, env=env)
if done.returncode != 0 or "Claude Code" not in done.stdout:
    sys.exit(f"install-python.sh: {BUNDLED_CLI} --version failed ({done.returncode}): "
             f"{done.stdout}{done.stderr}")
if not SKILLS_ROOT.resolve().is_relative_to(prefix.resolve()) or not (SKILLS_ROOT / "planning").is_dir():
    sys.exit(f"install-python.sh: fixfleet looks for its skills at {SKILLS_ROOT}, not in the installed package")
if not Path(_uv_binary()).is_relative_to(prefix.resolve()):
    sys.exit(f"install-python.sh: fixfleet would use the uv at {_uv_binary()}, not the one in {prefix}")
print(f"install-python.sh: ok: {done.stdout.strip()} at {BUNDLED_CLI}")
PY
fixfleet_version=$("$VENV_PYTHON" -c 'import importlib.metadata as m; print(m.version("fixfleet"))')
echo "install-python.sh: ok: $ray_version, fixfleet $fixfleet_version in $PREFIX"
