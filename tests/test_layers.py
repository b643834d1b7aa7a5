"""The layers and the dependencies, as the tools check them: a new import that points up, a cycle
between packages, or a package imported but not declared fails here, not in a review.

The contracts are in pyproject.toml ([tool.importlinter], [tool.deptry]); docs/ARCHITECTURE.md
says what each layer is.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert executable, f"{name} is not installed (pip install -e '.[dev]')"
    # This checkout's packages, whatever is installed (grimp finds them on sys.path).
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "NO_COLOR": "1"}
    return subprocess.run([executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("tool", [("lint-imports", "--no-cache"), ("deptry", ".")], ids=["import-linter", "deptry"])
def test_the_tools_find_nothing(tool: tuple[str, ...]) -> None:
    done = run_tool(*tool)
    assert done.returncode == 0, f"{' '.join(tool)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"


def test_the_architecture_page_shows_the_layers_the_tools_check() -> None:
    """docs/ARCHITECTURE.md's table of fixfleet's layers is the import-linter contract, in order."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (layered,) = [c for c in contracts if c["type"] == "layers" and c.get("containers") == ["fixfleet"]]
    checked = [sorted(name.strip() for name in re.split(r"[|:]", layer)) for layer in layered["layers"]]
    page = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    rows = re.findall(r"^\| (\d+) \| (`[^|]*`(?: \\\| `[^|]*`)*) \|", page, flags=re.MULTILINE)
    shown = [sorted(re.findall(r"`([\w.]+)`", modules)) for _, modules in rows]
    assert shown == checked, "docs/ARCHITECTURE.md's layers differ from pyproject.toml's contract"
