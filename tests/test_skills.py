"""The skills the agents get: valid SKILL.md files, installed per role into a CLI home."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from actors.session_models import ExecutionReport, PlanOutput
from actors.skills import SKILLS_ROOT, SkillError, install_skills, load_skills, parse_skill

PLANNING = ["discovery", "jira-enrichment", "plan-changes", "submit-plan"]
EXECUTOR = ["code-review", "execution", "git-operations", "tdd-workflow"]


def skill_text(role_dir: str, name: str) -> str:
    return (SKILLS_ROOT / role_dir / name / "SKILL.md").read_text()


def json_blocks(text: str) -> list[dict]:
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)\n```", text, re.DOTALL)]


def write_skill(root: Path, role_dir: str, name: str, front: str, body: str = "Do it.") -> Path:
    path = root / role_dir / name / "SKILL.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"---\n{front}\n---\n\n{body}\n")
    return path


# -- the shipped skills -------------------------------------------------------------------------


@pytest.mark.parametrize(("role", "names"), [("planner", PLANNING), ("executor", EXECUTOR)])
def test_every_shipped_skill_parses_with_its_directory_name(role: str, names: list[str]) -> None:
    skills = load_skills(role)
    assert [skill.name for skill in skills] == names
    for skill in skills:
        assert skill.name == skill.path.parent.name
        assert len(skill.description) > 40
        assert "use " in skill.description.lower()  # says when to use it, as the CLI expects
        assert len(skill.body.splitlines()) >= 30


@pytest.mark.parametrize("path", sorted(SKILLS_ROOT.glob("*/*/SKILL.md")), ids=str)
def test_every_skill_ends_with_its_output_section(path: Path) -> None:
    headings = re.findall(r"^## (.+)$", path.read_text(), re.MULTILINE)
    assert headings[0].startswith("Inputs")
    assert headings[-1].startswith("Output")


def test_plan_skill_shows_every_submit_plan_field() -> None:
    text = skill_text("planning", "submit-plan")
    assert "submit_plan" in text
    for name in PlanOutput.model_fields:
        assert f"`{name}`" in text
    example = json_blocks(text)[-1]
    assert set(example) == set(PlanOutput.model_fields)
    assert 0 <= example["confidence"] <= 1
    assert example["risk"] in {"low", "medium", "high"}
    assert all(set(item) == {"path", "reason"} for item in example["affected_files"])
    assert all(set(item) == {"path", "description"} for item in example["tests_to_add"])


def test_revision_skill_submits_the_same_schema() -> None:
    example = json_blocks(skill_text("planning", "plan-changes"))[-1]
    assert set(example) == set(PlanOutput.model_fields)


def test_report_skill_example_is_a_valid_report() -> None:
    text = skill_text("executor", "execution")
    assert "report_result" in text
    report = ExecutionReport.model_validate(json_blocks(text)[-1])
    assert report.tests_added and report.files_changed


def test_tdd_skill_orders_red_before_fix_before_green_before_suite() -> None:
    text = skill_text("executor", "tdd-workflow")
    positions = [text.index(f"**{step}.**") for step in ("Red", "Fix", "Green", "Whole suite")]
    assert positions == sorted(positions)


def test_executor_skills_forbid_push_and_commit() -> None:
    text = skill_text("executor", "git-operations")
    forbidden = text.split("## Not allowed")[1].split("## Procedure")[0]
    assert "`git push`" in forbidden and "`git commit`" in forbidden


# -- parsing ------------------------------------------------------------------------------------


def test_missing_description_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = write_skill(tmp_path, "executor", "lint", "name: lint")
    with pytest.raises(SkillError, match=re.escape(str(path)) + ".*description"):
        parse_skill(path)


def test_missing_name_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = write_skill(tmp_path, "executor", "lint", "description: Use when linting.")
    with pytest.raises(SkillError, match=re.escape(str(path)) + ".*name"):
        parse_skill(path)


def test_name_must_match_the_directory(tmp_path: Path) -> None:
    path = write_skill(tmp_path, "executor", "lint", "name: linting\ndescription: Use it.")
    with pytest.raises(SkillError, match="differs from its directory"):
        parse_skill(path)


def test_file_without_front_matter_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "executor" / "lint" / "SKILL.md"
    path.parent.mkdir(parents=True)
    path.write_text("# Lint\n\nJust instructions.\n")
    with pytest.raises(SkillError, match="no YAML front matter"):
        parse_skill(path)


def test_folded_description_becomes_one_line(tmp_path: Path) -> None:
    path = write_skill(tmp_path, "executor", "lint",
                       "name: lint\ndescription: >\n  Use when the linter\n  complains.")
    assert parse_skill(path).description == "Use when the linter complains."


def test_unknown_role_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown role"):
        load_skills("reviewer")


# -- installation -------------------------------------------------------------------------------


def installed(config_dir: Path) -> list[str]:
    return sorted(p.name for p in (config_dir / "skills").iterdir())


def test_install_puts_exactly_the_roles_skills_in_place(tmp_path: Path) -> None:
    config = tmp_path / "claude"
    stale = config / "skills"
    (stale / "retired-skill").mkdir(parents=True)
    (stale / "retired-skill" / "SKILL.md").write_text("old")
    (stale / "discovery").mkdir()  # the other role's skill
    (stale / "notes.txt").write_text("stray")

    names = install_skills("executor", config)

    assert names == EXECUTOR
    assert installed(config) == EXECUTOR
    for name in EXECUTOR:
        assert (config / "skills" / name / "SKILL.md").read_text() == skill_text("executor", name)


def test_switching_role_leaves_none_of_the_other_roles_skills(tmp_path: Path) -> None:
    config = tmp_path / "claude"
    install_skills("executor", config)
    (config / "skills" / "execution" / "extra.md").write_text("left over")

    assert install_skills("planner", config) == PLANNING

    assert installed(config) == PLANNING
    assert not (config / "skills" / "execution").exists()
    for name in PLANNING:
        assert (config / "skills" / name / "SKILL.md").read_text() == skill_text("planning", name)


def test_edited_copy_is_restored_on_reinstall(tmp_path: Path) -> None:
    config = tmp_path / "claude"
    install_skills("planner", config)
    (config / "skills" / "discovery" / "SKILL.md").write_text("tampered")
    install_skills("planner", config)
    assert (config / "skills" / "discovery" / "SKILL.md").read_text() == skill_text(
        "planning", "discovery")


def test_broken_skill_leaves_previous_install_untouched(tmp_path: Path) -> None:
    root = tmp_path / "skills"
    shutil.copytree(SKILLS_ROOT, root)
    config = tmp_path / "claude"
    install_skills("executor", config, root=root)
    write_skill(root, "executor", "broken", "name: broken")  # no description

    with pytest.raises(SkillError, match="broken"):
        install_skills("executor", config, root=root)
    assert installed(config) == EXECUTOR
