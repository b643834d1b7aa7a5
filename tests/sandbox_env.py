"""The sandbox of a session whose repository environment is a plain virtualenv."""

from __future__ import annotations

import sys
from pathlib import Path

from fixfleet.workspace.sandbox import SandboxSpec


def python_env_spec(workspace: Path, env: Path) -> SandboxSpec:
    """The sandbox of a session in `workspace` with the virtualenv `env` at /env."""
    return SandboxSpec(workspace=workspace, env_dir=env, python_prefix=Path(sys.base_prefix),
                       env={"PATH": "/env/bin:/usr/local/bin:/usr/bin:/bin", "VIRTUAL_ENV": "/env"})
