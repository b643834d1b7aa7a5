"""The command language: definitions.yaml, the loader, the parser and the generated help."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fixfleet.commands import (
    CommandDefinitionError,
    Scope,
    default_commands,
    help_text,
    load_commands,
    parse_commands,
    parse_invocation,
    unknown_reply,
)
from fixfleet.commands.loader import DEFINITIONS
from fixfleet.models import Priority

REQUIRED = {
    "approve", "reject", "revise", "status", "retry", "cancel", "help", "plan", "diff", "cost",
    "logs", "priority", "pause", "resume", "rerun-tests", "explain", "assign",
}
SCOPES = {
    Scope.APPROVE: {"approve", "reject", "revise"},
    Scope.READ: {"status", "help", "plan", "diff", "cost", "logs", "explain"},
    Scope.SUBMIT: {"retry", "rerun-tests", "priority", "pause", "resume", "cancel", "assign"},
}


def one(text: str, **kwargs):
    """The single command in `text`; fails when there are none or several."""
    found = parse_commands(text, **kwargs)
    assert len(found) == 1, f"expected one command in {text!r}, got {found}"
    return found[0]


def packaged_yaml() -> dict:
    return yaml.safe_load((Path(__file__).parents[1] / "fixfleet" / "commands" / DEFINITIONS).read_text())


# --- definitions ------------------------------------------------------------------------------


def test_definitions_hold_every_required_command():
    commands = default_commands()
    assert len(commands) >= 17
    assert REQUIRED <= set(commands.names)


@pytest.mark.parametrize("scope", list(SCOPES))
def test_scopes_follow_the_issue(scope):
    for name in SCOPES[scope]:
        assert default_commands()[name].scope is scope, name


def test_every_command_has_help_and_an_example_that_parses_to_itself():
    for spec in default_commands():
        assert spec.help and "\n" not in spec.help
        parsed = one(spec.example)
        assert parsed.command == spec.name and parsed.error is None, (spec.name, parsed)


def test_definitions_are_loaded_once():
    assert default_commands() is default_commands()
    assert load_commands() is default_commands()


def test_priority_argument_admits_exactly_the_model_priorities():
    for level in Priority:
        assert one(f"@agent priority {level.value}").args["level"] is level


# --- the forms the issue names ----------------------------------------------------------------


def test_plain_mention():
    parsed = one("@agent approve")
    assert parsed.ok and parsed.command == "approve" and parsed.args == {} and parsed.task_key is None


def test_fixfleet_mention_with_alias():
    parsed = one("@fixfleet lgtm")
    assert parsed.command == "approve" and parsed.name == "lgtm"


def test_slash_command_with_task_key():
    parsed = one("/fixfleet status FF-12")
    assert parsed.command == "status" and parsed.task_key == "FF-12" and parsed.ok


def test_revise_keeps_the_whole_feedback():
    parsed = one("@agent revise add a regression test for empty input")
    assert parsed.args == {"feedback": "add a regression test for empty input"}


def test_revise_keeps_inline_code_and_task_keys_inside_the_feedback():
    parsed = one("@agent revise FF-3 call `str.strip()` first, like FF-2 did.")
    assert parsed.task_key == "FF-3"
    assert parsed.args["feedback"] == "call `str.strip()` first, like FF-2 did."


def test_command_in_the_middle_of_a_comment():
    text = "Thanks, the root cause makes sense.\nLooks good. @agent approve\nCheers"
    parsed = one(text)
    assert parsed.command == "approve" and parsed.raw == "Looks good. @agent approve"


def test_case_and_punctuation_are_forgiven():
    assert one("@Agent: LGTM!").command == "approve"
    assert one("**@AGENT Approve**.").command == "approve"
    assert one("@agent priority HIGH ff-07").args == {"level": Priority.HIGH}
    assert one("@agent priority HIGH ff-07").task_key == "FF-7"


@pytest.mark.parametrize(
    "text, task_key",
    [("@agent retry FF-12", "FF-12"), ("@agent priority low FF-4", "FF-4"), ("/fixfleet FF-5 cancel", "FF-5"),
     ("@agent approve v2 (FF-9)", "FF-9")],
)
def test_task_key_may_appear_on_any_command(text, task_key):
    assert one(text).task_key == task_key and one(text).ok


def test_several_commands_one_per_line():
    found = parse_commands("@agent priority critical\n@fixfleet assign @octocat\n/fixfleet status")
    assert [parsed.command for parsed in found] == ["priority", "assign", "status"]
    assert found[1].args == {"user": "octocat"}


def test_aliases_resolve_to_their_command():
    for spec in default_commands():
        for alias in spec.aliases:
            assert one(f"@agent {alias}").command == spec.name, alias


def test_typed_arguments():
    assert one("@agent approve v3").args == {"plan_version": 3}
    assert one("@agent logs 2").args == {"session": 2}
    assert one("@agent help lgtm").args == {"command": "approve"}


def test_slash_command_text_without_mention():
    assert parse_invocation("status FF-12").task_key == "FF-12"
    assert parse_invocation("").command == "help"
    assert parse_invocation("FF-12").command == "status"


# --- text that is not a command ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "```\n@agent approve\n```",
        "~~~text\n@agent approve\n~~~",
        "````\n```\n@agent approve\n```\n````",  # an inner fence does not close the outer one
        "Say `@agent approve` when ready.",
        "Say ``@agent `approve` `` when ready.",
        "> @agent approve",
        "  > > Looks good. @agent approve",
        "<!-- reviewers: @agent approve -->",
        "<!--\n@agent approve\n-->",
        "mail me@agent.com approve",
        "cc: ops@fixfleet status page is down",  # an address whose domain part is a mention
        "see @agent.com approve",
        "@agents approve",
        "@agent-bot approve",
        "cd src/fixfleet status",
        "@agent",
        "hey @agent can you look at this?",  # prose, not a command nor close to one
    ],
)
def test_text_that_is_not_a_command(text):
    assert parse_commands(text) == []


def test_commands_after_a_code_block_and_a_quote_are_read():
    text = "> @agent reject\n```\n@agent cancel\n```\n@agent approve"
    assert [parsed.command for parsed in parse_commands(text)] == ["approve"]


def test_only_the_configured_mentions_count():
    assert parse_commands("@agent approve", mentions=("fixfleet-bot",)) == []
    assert one("@fixfleet-bot approve", mentions=("fixfleet-bot",)).command == "approve"
    assert one("<@U024BE7LH> approve", mentions=("U024BE7LH",)).command == "approve"


# --- mistakes ---------------------------------------------------------------------------------


def test_unknown_command_suggests_the_closest():
    parsed = one("@agent aprove")
    assert parsed.spec is None and parsed.name == "aprove"
    assert parsed.suggestions[0] == "approve"
    assert unknown_reply(parsed).startswith("I don't know `aprove`. Did you mean `approve`")
    assert unknown_reply(parsed).endswith("Say `@agent help` for the list.")


def test_unknown_command_far_from_any_says_so():
    parsed = one("@agent frobnicate")
    assert parsed.suggestions == ()
    assert unknown_reply(parsed) == "I don't know `frobnicate`. Say `@agent help` for the list."


def test_typo_in_the_middle_of_a_comment_is_still_answered():
    assert one("Looks good. @agent aprove").suggestions[0] == "approve"


def test_suggestions_name_each_command_once():
    assert one("@agent stauts").suggestions.count("status") == 1
    assert "state" not in one("@agent stauts").suggestions


def test_missing_required_argument():
    parsed = one("@agent revise")
    assert not parsed.ok and "needs feedback" in parsed.error and "@agent revise" in parsed.error
    assert "needs user" in one("@agent assign").error


def test_invalid_priority_names_the_allowed_values():
    parsed = one("@agent priority urgent")
    assert not parsed.ok and "urgent" in parsed.error
    assert all(level.value in parsed.error for level in Priority)


def test_trailing_words_are_refused_not_ignored():
    # `approve not yet` must never approve.
    parsed = one("@agent approve not yet")
    assert parsed.command == "approve" and not parsed.ok and "not yet" in parsed.error
    parsed = one("@agent cancel FF-3")
    assert parsed.ok
    parsed = one("@agent retry FF-3 tomorrow")
    assert not parsed.ok and "tomorrow" in parsed.error


def test_unknown_reply_is_only_for_unknown_commands():
    with pytest.raises(ValueError):
        unknown_reply(one("@agent approve"))


# --- help -------------------------------------------------------------------------------------


def test_help_lists_every_command_and_alias():
    text = help_text()
    for spec in default_commands():
        assert f"`{spec.name}" in text and spec.help in text
        assert all(f"`{alias}`" in text for alias in spec.aliases)


def test_help_follows_the_yaml(tmp_path, monkeypatch):
    # Proof that help is generated, not written by hand: a changed definition changes it.
    data = packaged_yaml()
    data["commands"][0]["help"] = "A sentence no one would write by hand."
    path = tmp_path / "defs.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setattr("fixfleet.commands.parser.default_commands", lambda: load_commands(path))
    assert "A sentence no one would write by hand." in help_text()


def test_help_for_one_command_shows_arguments_and_example():
    text = help_text("lgtm")
    assert "`approve`" in text and "`plan_version`" in text and "`@agent approve v2`" in text
    assert "ship-it" in text and "approvers" in text


def test_help_for_an_unknown_command():
    assert help_text("aprove").startswith("I don't know `aprove`. Did you mean `approve`")


def test_the_bots_own_help_is_not_read_as_commands():
    # Every example sits in inline code, so the help reply cannot trigger itself.
    assert parse_commands(help_text()) == []
    assert all(parse_commands(help_text(name)) == [] for name in default_commands().names)


# --- broken definitions -----------------------------------------------------------------------


def write_definitions(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "definitions.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_packaged_definitions_load_from_a_file(tmp_path):
    assert load_commands(write_definitions(tmp_path, packaged_yaml())).names == default_commands().names


def test_duplicate_alias_is_refused(tmp_path):
    data = packaged_yaml()
    reject = next(command for command in data["commands"] if command["name"] == "reject")
    reject["aliases"].append("lgtm")
    path = write_definitions(tmp_path, data)
    with pytest.raises(CommandDefinitionError) as refused:
        load_commands(path)
    message = str(refused.value)
    assert str(path) in message
    assert "alias 'lgtm' of command 'reject' is already an alias of command 'approve'" in message


def test_alias_shadowing_a_name_is_refused(tmp_path):
    data = packaged_yaml()
    data["commands"][0]["aliases"].append("status")
    with pytest.raises(CommandDefinitionError, match="'status' .* is already the name of command 'status'"):
        load_commands(write_definitions(tmp_path, data))


@pytest.mark.parametrize(
    "breakage, complaint",
    [
        (lambda command: command.update(scope="everyone"), r"commands\[0\] \(approve\)\.scope"),
        (lambda command: command.update(requried=True), "requried"),
        (lambda command: command["args"][0].update(kind="colour"), r"args\[0\]\.kind"),
        (lambda command: command.pop("help"), "help"),
        (lambda command: command.update(aliases=["Ship It"]), "lowercase words"),
        (lambda command: command["args"].insert(0, {"name": "why", "kind": "text", "help": "x"}),
         "must be the last argument"),
    ],
)
def test_malformed_command_is_refused(tmp_path, breakage, complaint):
    data = packaged_yaml()
    breakage(data["commands"][0])
    with pytest.raises(CommandDefinitionError, match=complaint):
        load_commands(write_definitions(tmp_path, data))


def test_invalid_yaml_is_refused(tmp_path):
    path = tmp_path / "definitions.yaml"
    path.write_text("commands: [\n")
    with pytest.raises(CommandDefinitionError, match="not valid YAML"):
        load_commands(path)
