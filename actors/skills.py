"""The agents' skills: SKILL.md files under `skills/`, installed into each actor's CLI home.

The claude CLI discovers skills in `<CLAUDE_CONFIG_DIR>/skills/<name>/SKILL.md` and lists them in
its init message. A planner's CLI home must hold exactly the planning skills and an executor's
exactly the executor skills: a leftover skill from an older release (or the other role) would
be offered to the model as if it were current.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field

from fixfleet.config import DATA_DIR

SKILLS_ROOT = DATA_DIR / "skills"
ROLE_DIRS: dict[str, str] = {"planner": "planning", "executor": "executor"}
SKILL_FILE = "SKILL.md"

# The Agent Skills format: lowercase words joined by hyphens, at most 64 characters; the
# description is what the model reads to decide when to use the skill (at most 1024).
NAME_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
MAX_NAME = 64
MAX_DESCRIPTION = 1024
FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(?P<yaml>.*?)\r?\n---[ \t]*(\r?\n|\Z)(?P<body>.*)\Z",
                          re.DOTALL)


class SkillError(ValueError):
    """A SKILL.md that the CLI would ignore or misread; the message names the file."""


class Skill(BaseModel):
    name: str = Field(min_length=1)
    description: str = Field(min_length=1)
    body: str
    path: Path  # the SKILL.md file


def role_dir(role: str, root: Path = SKILLS_ROOT) -> Path:
    if role not in ROLE_DIRS:
        raise ValueError(f"unknown role {role!r}: expected one of {', '.join(ROLE_DIRS)}")
    return root / ROLE_DIRS[role]


def parse_skill(path: Path) -> Skill:
    """Read one SKILL.md and check its front matter."""
    text = path.read_text(encoding="utf-8")
    match = FRONT_MATTER.match(text)
    if match is None:
        raise SkillError(f"{path}: no YAML front matter (the file must start with a '---' block)")
    meta = _front_matter(path, match["yaml"])
    name = _required_text(path, meta, "name", MAX_NAME)
    description = _required_text(path, meta, "description", MAX_DESCRIPTION)
    if not NAME_PATTERN.match(name):
        raise SkillError(f"{path}: name {name!r} must be lowercase letters, digits and hyphens")
    if name != path.parent.name:
        raise SkillError(f"{path}: name {name!r} differs from its directory {path.parent.name!r}")
    body = match["body"].strip()
    if not body:
        raise SkillError(f"{path}: the skill has no instructions after the front matter")
    return Skill(name=name, description=description, body=body, path=path)


def _front_matter(path: Path, raw: str) -> dict:
    try:
        meta = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise SkillError(f"{path}: front matter is not valid YAML: {error}") from error
    if not isinstance(meta, dict):
        raise SkillError(f"{path}: front matter must be a mapping with name and description")
    return meta


def _required_text(path: Path, meta: dict, key: str, limit: int) -> str:
    value = meta.get(key)
    if not isinstance(value, str) or not value.strip():
        raise SkillError(f"{path}: front matter needs a non-empty '{key}'")
    value = " ".join(value.split())  # folded YAML keeps newlines; the CLI shows one line
    if len(value) > limit:
        raise SkillError(f"{path}: '{key}' is {len(value)} characters, at most {limit} allowed")
    return value


def load_skills(role: Literal["planner", "executor"] | str,
                root: Path = SKILLS_ROOT) -> list[Skill]:
    """Every skill of a role, sorted by name; any invalid skill fails the whole load."""
    directory = role_dir(role, root)
    if not directory.is_dir():
        raise SkillError(f"{directory}: no skills directory for the {role}")
    skills = []
    for skill_dir in sorted(p for p in directory.iterdir() if p.is_dir()):
        skill_file = skill_dir / SKILL_FILE
        if not skill_file.is_file():
            raise SkillError(f"{skill_dir}: a skill directory needs a {SKILL_FILE}")
        skills.append(parse_skill(skill_file))
    if not skills:
        raise SkillError(f"{directory}: the {role} has no skills")
    return skills


def install_skills(role: str, claude_config_dir: Path, root: Path = SKILLS_ROOT) -> list[str]:
    """Make `<claude_config_dir>/skills/` hold exactly the role's skills; returns their names.

    Everything is validated before anything is touched, so a broken SKILL.md leaves the
    previous installation in place rather than a half-updated one.
    """
    skills = load_skills(role, root)
    target = Path(claude_config_dir) / "skills"
    target.mkdir(parents=True, exist_ok=True)
    wanted = {skill.name for skill in skills}
    for entry in target.iterdir():
        if entry.name not in wanted:
            _remove(entry)
    for skill in skills:
        _replace_dir(skill.path.parent, target / skill.name)
    return [skill.name for skill in skills]


def _replace_dir(source: Path, destination: Path) -> None:
    """Copy next to the destination, then swap, so a reader never sees a half-copied skill."""
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}-", dir=destination.parent))
    try:
        shutil.copytree(source, staging / "copy", ignore=shutil.ignore_patterns("__pycache__"))
        if destination.exists() or destination.is_symlink():
            _remove(destination)
        (staging / "copy").rename(destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
