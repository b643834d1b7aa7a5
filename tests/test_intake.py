"""From verified payloads to typed events: the real GitHub and Sentry corpus, Jira filters and
ADF, Slack buttons and slash commands, delivery ids, and no crash on odd JSON."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from fixfleet.config import Settings
from fixfleet.intake import (
    CommandRequest,
    Ignored,
    ParseError,
    Ping,
    SlackAction,
    TaskRequest,
    delivery_id,
    parse_github,
    parse_jira,
    parse_sentry,
    parse_slack_command,
    parse_slack_interaction,
)
from fixfleet.formats.adf import adf_to_text
from fixfleet.formats.slack import slack_action_value
from fixfleet.models import Priority, Source
from tests.corpus import CORPUS

GITHUB_FILES = sorted((CORPUS / "github-webhooks").glob("*.json"))
SENTRY_DIR = CORPUS / "sentry-webhooks"
WEB_REPO = "https://github.com/acme/web.git"


def make_settings(**overrides: Any) -> Settings:
    """Explicit values for everything the parsers read, so the environment cannot leak in."""
    values: dict[str, Any] = {
        "github_label": "fixfleet",
        "github_bot_login": "fixfleet[bot]",
        "sentry_project_repos": {"front-end": WEB_REPO},
        "jira_project_repos": {"OPS": "https://github.com/acme/ops.git"},
        "jira_projects": [],
        "jira_labels": ["fixfleet"],
        "default_repo": None,
    }
    return Settings(_env_file=None, **(values | overrides))


@pytest.fixture
def settings() -> Settings:
    return make_settings()


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def github(name: str) -> dict[str, Any]:
    return load(CORPUS / "github-webhooks" / name)


def sentry(name: str) -> dict[str, Any]:
    return load(SENTRY_DIR / name)


# --- GitHub: the whole corpus --------------------------------------------------------------


def expected_class(event: str, action: str | None) -> type:
    if event == "ping":
        return Ping
    if (event, action) in {("issue_comment", "created"), ("issue_comment", "edited"),
                           ("pull_request_review_comment", "created")}:
        return CommandRequest
    # issues without the fixfleet label, pull_request events, deleted comments, and reviews
    # whose body is null (the corpus has only those) carry nothing to act on.
    return Ignored


def test_corpus_is_present():
    assert len(GITHUB_FILES) >= 70, f"GitHub corpus missing under {CORPUS}"


@pytest.mark.parametrize("path", GITHUB_FILES, ids=lambda p: p.name)
def test_every_github_payload_parses(path, settings):
    event = path.name.split(".")[0]
    payload = load(path)
    result = parse_github(event, payload, settings)
    assert isinstance(result, expected_class(event, payload.get("action")))
    if isinstance(result, Ignored):
        assert result.reason


def test_issue_labeled_fixfleet_becomes_a_task(settings):
    payload = github("issues.labeled.payload.json")
    payload["label"]["name"] = "fixfleet"
    result = parse_github("issues", payload, settings)
    assert isinstance(result, TaskRequest)
    task = result.new_task
    assert task.source == Source.GITHUB
    assert task.repo == "https://github.com/Codertocat/Hello-World.git"
    assert task.title == "Spelling error in the README file"
    assert task.body.startswith("It looks like you accidently spelled")
    assert task.external_ids == {"github_issue": "Codertocat/Hello-World#1"}
    assert result.new_task.external_ids["github_issue"] == "Codertocat/Hello-World#1"  # one open task per issue
    assert task.context["web_url"] == "https://github.com/Codertocat/Hello-World/issues/1"


def test_the_label_is_a_setting_and_case_insensitive():
    payload = github("issues.labeled.payload.json")  # labelled "bug"
    assert isinstance(parse_github("issues", payload, make_settings(github_label="BUG")), TaskRequest)
    assert isinstance(parse_github("issues", payload, make_settings()), Ignored)


def test_issue_opened_with_the_label_becomes_a_task(settings):
    payload = github("issues.opened.with-empty-body.payload.json")
    payload["issue"]["labels"].append({"name": "fixfleet"})
    result = parse_github("issues", payload, settings)
    assert isinstance(result, TaskRequest)
    assert result.new_task.body == ""  # null body


def test_priority_label_sets_priority(settings):
    payload = github("issues.labeled.payload.json")
    payload["label"]["name"] = "fixfleet"
    payload["issue"]["labels"] = [{"name": "fixfleet"}, {"name": "priority: critical"}]
    assert parse_github("issues", payload, settings).new_task.priority == Priority.CRITICAL


def test_labeling_a_closed_issue_or_a_pull_request_makes_no_task(settings):
    payload = github("issues.labeled.payload.json")
    payload["label"]["name"] = "fixfleet"
    closed = copy.deepcopy(payload)
    closed["issue"]["state"] = "closed"
    assert isinstance(parse_github("issues", closed, settings), Ignored)
    payload["issue"]["pull_request"] = {"url": "https://api.github.com/repos/x/y/pulls/1"}
    assert isinstance(parse_github("issues", payload, settings), Ignored)


def test_issue_comment_is_a_command_request(settings):
    result = parse_github("issue_comment", github("issue_comment.created.payload.json"), settings)
    assert isinstance(result, CommandRequest)
    assert result.source == Source.GITHUB
    assert result.text.startswith("You are totally right!")
    assert result.author == "Codertocat" and result.author_id == "21031067"
    assert result.repo == "https://github.com/Codertocat/Hello-World.git"
    assert result.repo_full_name == "Codertocat/Hello-World"
    assert result.issue_number == 1 and not result.is_pull_request
    assert result.comment_id == "492700400"
    assert result.comment_url == "https://github.com/Codertocat/Hello-World/issues/1#issuecomment-492700400"
    assert str(result.where) == "Codertocat/Hello-World#1"
    assert not result.edited


def test_edited_comment_says_so(settings):
    result = parse_github("issue_comment", github("issue_comment.edited.payload.json"), settings)
    assert isinstance(result, CommandRequest) and result.edited


def test_comment_on_a_pull_request(settings):
    payload = github("issue_comment.created.payload.json")
    payload["issue"]["pull_request"] = {"html_url": "https://github.com/Codertocat/Hello-World/pull/1"}
    result = parse_github("issue_comment", payload, settings)
    assert result.is_pull_request and result.pr_url == "https://github.com/Codertocat/Hello-World/pull/1"


@pytest.mark.parametrize("branch", ["fixfleet/FF-12", "fixfleet/12", "fixfleet/ff-12-fix-readme"])
def test_review_comment_on_a_fixfleet_branch_names_the_task(settings, branch):
    payload = github("pull_request_review_comment.created.payload.json")
    payload["pull_request"]["head"]["ref"] = branch
    result = parse_github("pull_request_review_comment", payload, settings)
    assert isinstance(result, CommandRequest)
    assert result.is_pull_request and result.issue_number == 2 and result.task_key == "FF-12"


def test_review_comment_on_another_branch_has_no_task_key(settings):
    result = parse_github("pull_request_review_comment", github("pull_request_review_comment.created.payload.json"), settings)
    assert isinstance(result, CommandRequest) and result.task_key is None


def test_submitted_review_with_a_body_is_a_command_request(settings):
    payload = github("pull_request_review.submitted.payload.json")
    payload["review"]["body"] = "@agent approve"
    result = parse_github("pull_request_review", payload, settings)
    assert isinstance(result, CommandRequest)
    assert result.text == "@agent approve" and result.is_pull_request and result.comment_id == "237895671"


@pytest.mark.parametrize("event", ["issue_comment", "pull_request_review_comment"])
def test_bot_sender_is_ignored(settings, event):
    name = "issue_comment.created.payload.json" if event == "issue_comment" else f"{event}.created.payload.json"
    payload = github(name)
    payload["sender"]["type"] = "Bot"
    assert parse_github(event, payload, settings) == Ignored(reason="our own comment")


def test_our_own_login_is_ignored(settings):
    payload = github("issue_comment.created.payload.json")
    payload["comment"]["user"]["login"] = "FixFleet[bot]"
    assert parse_github("issue_comment", payload, settings) == Ignored(reason="our own comment")


def test_unknown_github_event_is_ignored(settings):
    result = parse_github("deployment_status", {"action": "created"}, settings)
    assert isinstance(result, Ignored) and "deployment_status" in result.reason


# --- Sentry --------------------------------------------------------------------------------


def test_sentry_event_alert_yields_frames_and_the_mapped_repo(settings):
    result = parse_sentry("event_alert", sentry("event_alert.triggered.json"), settings)
    assert isinstance(result, TaskRequest)
    task = result.new_task
    assert task.source == Source.SENTRY and task.repo == WEB_REPO
    assert task.title == "ReferenceError: heck is not defined"
    assert task.priority == Priority.HIGH  # level error
    assert task.external_ids == {"sentry_issue": "1117540176"}
    assert result.new_task.external_ids["sentry_issue"] == "1117540176"
    frames = task.context["frames"]
    assert len(frames) == 3
    assert frames[-1] == {"filename": "<anonymous>", "abs_path": "<anonymous>", "function": None,
                          "lineno": 3, "in_app": False, "context_line": None}
    assert frames[0]["abs_path"] == "https://static.jsbin.com/js/prod/runner-4.1.7.min.js"
    assert task.context["culprit"] == "?(<anonymous>)"
    assert task.context["web_url"].startswith("https://sentry.io/organizations/test-org/issues/1117540176/")
    assert task.context["needs_event_fetch"] is False
    assert "heck is not defined" in task.body and 'File "<anonymous>", line 3' in task.body


def test_sentry_error_resource_reads_data_error(settings):
    payload = sentry("event_alert.triggered.json")
    payload["action"] = "created"
    payload["data"] = {"error": payload["data"]["event"]}
    result = parse_sentry("error", payload, settings)
    assert isinstance(result, TaskRequest) and len(result.new_task.context["frames"]) == 3


@pytest.mark.parametrize(
    ("level", "priority"),
    [("fatal", Priority.CRITICAL), ("error", Priority.HIGH), ("warning", Priority.NORMAL),
     ("info", Priority.LOW), (None, Priority.LOW)],
)
def test_sentry_level_sets_priority(settings, level, priority):
    payload = sentry("event_alert.triggered.json")
    payload["data"]["event"]["level"] = level
    assert parse_sentry("event_alert", payload, settings).new_task.priority == priority


def test_sentry_issue_created_needs_an_event_fetch(settings):
    result = parse_sentry("issue", sentry("issue.created.json"), settings)
    assert isinstance(result, TaskRequest)
    task = result.new_task
    assert task.repo == WEB_REPO and task.title == "ReferenceError: blooopy is not defined"
    assert task.context["needs_event_fetch"] is True and task.context["frames"] == []
    assert task.context["event_count"] == 1
    assert result.new_task.external_ids["sentry_issue"] == "1170820242"


@pytest.mark.parametrize(("resource", "name"), [("event_alert", "event_alert.triggered.json"), ("issue", "issue.created.json")])
def test_sentry_unmapped_project_is_ignored_naming_the_setting(resource, name):
    result = parse_sentry(resource, sentry(name), make_settings(sentry_project_repos={}))
    assert isinstance(result, Ignored)
    assert "front-end" in result.reason and "FIXFLEET_SENTRY_PROJECT_REPOS" in result.reason


def test_sentry_default_repo_catches_unmapped_projects():
    result = parse_sentry("issue", sentry("issue.created.json"), make_settings(sentry_project_repos={}, default_repo=WEB_REPO))
    assert isinstance(result, TaskRequest) and result.new_task.repo == WEB_REPO


@pytest.mark.parametrize(
    ("resource", "action"),
    [("installation", "created"), ("issue", "resolved"), ("event_alert", "resolved"), ("metric_alert", "critical"), ("comment", "created")],
)
def test_other_sentry_resources_are_ignored(settings, resource, action):
    assert isinstance(parse_sentry(resource, {"action": action, "data": {}}, settings), Ignored)


# --- Jira ----------------------------------------------------------------------------------

ADF_DESCRIPTION = {
    "type": "doc",
    "version": 1,
    "content": [
        {"type": "heading", "attrs": {"level": 2}, "content": [{"type": "text", "text": "Checkout fails"}]},
        {"type": "paragraph", "content": [
            {"type": "text", "text": "Seen by "},
            {"type": "mention", "attrs": {"id": "123", "text": "@alice"}},
            {"type": "text", "text": " at noon,"},
            {"type": "hardBreak"},
            {"type": "text", "text": "see ", "marks": [{"type": "strong"}]},
            {"type": "inlineCard", "attrs": {"url": "https://example.com/log"}},
        ]},
        {"type": "bulletList", "content": [
            {"type": "listItem", "content": [{"type": "paragraph", "content": [{"type": "text", "text": "cart is empty"}]}]},
            {"type": "listItem", "content": [{"type": "paragraph", "content": [{"type": "text", "text": "total is NaN"}]}]},
        ]},
        {"type": "orderedList", "content": [
            {"type": "listItem", "content": [{"type": "paragraph", "content": [{"type": "text", "text": "open /cart"}]}]},
        ]},
        {"type": "codeBlock", "attrs": {"language": "python"}, "content": [{"type": "text", "text": "total = sum(prices)"}]},
    ],
}
ADF_TEXT = (
    "Checkout fails\n\n"
    "Seen by @alice at noon,\n"
    "see https://example.com/log\n\n"
    "- cart is empty\n"
    "- total is NaN\n\n"
    "1. open /cart\n\n"
    "```python\ntotal = sum(prices)\n```"
)


def jira_payload(
    event: str = "jira:issue_created",
    *,
    project: str = "OPS",
    labels: list[str] | None = None,
    reporter: dict[str, Any] | None = None,
    description: Any = None,
    priority: str = "High",
) -> dict[str, Any]:
    human = {"accountId": "5aeacd57", "displayName": "Dana Smith", "accountType": "atlassian"}
    return {
        "timestamp": 1581880808538,
        "webhookEvent": event,
        "issue_event_type_name": "issue_created",
        "user": human,
        "issue": {
            "id": "10019",
            "self": "https://acme.atlassian.net/rest/api/2/issue/10019",
            "key": f"{project}-20",
            "fields": {
                "summary": "Checkout total is NaN",
                "description": copy.deepcopy(ADF_DESCRIPTION) if description is None else description,
                "project": {"id": "10001", "key": project, "name": project.title()},
                "labels": labels or [],
                "priority": {"name": priority, "id": "2"},
                "issuetype": {"name": "Bug"},
                "status": {"name": "To Do", "statusCategory": {"key": "new"}},
                "reporter": reporter or human,
                "creator": reporter or human,
            },
        },
    }


def test_adf_is_flattened():
    assert adf_to_text(ADF_DESCRIPTION) == ADF_TEXT
    assert adf_to_text("h2. wiki markup stays") == "h2. wiki markup stays"
    assert adf_to_text(None) == "" and adf_to_text(42) == ""


def test_jira_project_filter_makes_a_task():
    settings = make_settings(jira_projects=["ops"])
    result = parse_jira(jira_payload(), settings)
    assert isinstance(result, TaskRequest)
    task = result.new_task
    assert task.source == Source.JIRA and task.repo == "https://github.com/acme/ops.git"
    assert task.title == "Checkout total is NaN" and task.body == ADF_TEXT
    assert task.priority == Priority.HIGH
    assert task.external_ids == {"jira": "OPS-20"}
    assert task.context["web_url"] == "https://acme.atlassian.net/browse/OPS-20"
    assert task.context["matched_by"] == "project" and task.context["jira_event"] == "created"


def test_jira_label_filter_and_updates(settings):
    result = parse_jira(jira_payload("jira:issue_updated", labels=["backend", "FixFleet"]), settings)
    assert isinstance(result, TaskRequest)
    assert result.new_task.context["matched_by"] == "label" and result.new_task.context["jira_event"] == "updated"


def test_jira_ticket_created_by_sentry(settings):
    sentry_app = {"accountId": "557058:abc", "displayName": "Sentry", "accountType": "app"}
    result = parse_jira(jira_payload(reporter=sentry_app, description="plain text from Sentry"), settings)
    assert isinstance(result, TaskRequest) and result.new_task.context["matched_by"] == "sentry"
    assert result.new_task.body == "plain text from Sentry"


def test_jira_sentry_link_in_the_description(settings):
    description = "Sentry Issue: [FRONT-END-9|https://sentry.io/organizations/acme/issues/1170820242/?referrer=jira]"
    result = parse_jira(jira_payload(description=description), settings)
    assert isinstance(result, TaskRequest)
    assert result.new_task.external_ids == {"jira": "OPS-20", "sentry_issue": "1170820242"}


def test_jira_non_matching_ticket_is_ignored(settings):
    result = parse_jira(jira_payload(labels=["backend"]), settings)
    assert isinstance(result, Ignored)
    assert "FIXFLEET_JIRA_PROJECTS" in result.reason and "FIXFLEET_JIRA_LABELS" in result.reason


def test_jira_unmapped_project_is_ignored_naming_the_setting():
    result = parse_jira(jira_payload(project="WEB", labels=["fixfleet"]), make_settings())
    assert isinstance(result, Ignored) and "WEB" in result.reason and "FIXFLEET_JIRA_PROJECT_REPOS" in result.reason


def test_jira_done_ticket_is_ignored(settings):
    payload = jira_payload("jira:issue_updated", labels=["fixfleet"])
    payload["issue"]["fields"]["status"] = {"name": "Done", "statusCategory": {"key": "done"}}
    assert isinstance(parse_jira(payload, settings), Ignored)


@pytest.mark.parametrize("event", ["jira:issue_deleted", "comment_created", None])
def test_other_jira_events_are_ignored(settings, event):
    assert isinstance(parse_jira(jira_payload(event, labels=["fixfleet"]), settings), Ignored)


@pytest.mark.parametrize(
    ("name", "priority"),
    [("Highest", Priority.CRITICAL), ("High", Priority.HIGH), ("Medium", Priority.NORMAL),
     ("Low", Priority.LOW), ("Lowest", Priority.LOW), ("Custom", Priority.NORMAL)],
)
def test_jira_priority_mapping(settings, name, priority):
    assert parse_jira(jira_payload(labels=["fixfleet"], priority=name), settings).new_task.priority == priority


# --- Slack ---------------------------------------------------------------------------------


def slack_interaction(action_id: str = "approve", value: str = "FF-12:v2") -> dict[str, Any]:
    return {
        "type": "block_actions",
        "user": {"id": "U024BE7LH", "username": "alice", "name": "alice", "team_id": "T0"},
        "api_app_id": "A02",
        "trigger_id": "12466734323.1395872398",
        "team": {"id": "T0", "domain": "acme"},
        "container": {"type": "message", "message_ts": "1548261231.000200"},
        "response_url": "https://hooks.slack.com/actions/T0/123/abc",
        "actions": [{"action_id": action_id, "block_id": "plan", "type": "button", "value": value,
                     "action_ts": "1548426417.840180"}],
    }


def test_slack_approve_button():
    assert parse_slack_interaction(slack_interaction()) == SlackAction(
        action="approve", task_key="FF-12", plan_version=2, user_id="U024BE7LH", user_name="alice",
        response_url="https://hooks.slack.com/actions/T0/123/abc",
    )


def test_slack_reject_without_a_version():
    result = parse_slack_interaction(slack_interaction("reject", "ff-7"))
    assert isinstance(result, SlackAction)
    assert (result.action, result.task_key, result.plan_version) == ("reject", "FF-7", None)


def test_slack_action_value_round_trips():
    assert slack_action_value("FF-12", 2) == "FF-12:v2"
    result = parse_slack_interaction(slack_interaction(value=slack_action_value("FF-3", 10)))
    assert (result.task_key, result.plan_version) == ("FF-3", 10)


@pytest.mark.parametrize(
    "payload",
    [
        slack_interaction(value="twelve"),
        slack_interaction(action_id="open_pr"),
        {**slack_interaction(), "type": "view_submission"},
        {**slack_interaction(), "user": None},
        {**slack_interaction(), "actions": "nope"},
    ],
)
def test_slack_other_interactions_are_ignored(payload):
    assert isinstance(parse_slack_interaction(payload), Ignored)


def test_slack_slash_command():
    form = {"token": "x", "team_id": "T0", "channel_id": "C1", "user_id": "U024BE7LH", "user_name": "alice",
            "command": "/fixfleet", "text": "status ff-12", "response_url": "https://hooks.slack.com/commands/1",
            "trigger_id": "13345224609.738474920.8088930838d88f008e0"}
    result = parse_slack_command(form)
    assert isinstance(result, CommandRequest)
    assert result.source == Source.SLACK and result.text == "/fixfleet status ff-12"
    assert result.author == "alice" and result.author_id == "U024BE7LH"
    assert result.task_key == "FF-12" and result.response_url == "https://hooks.slack.com/commands/1"


def test_slack_ssl_check_and_broken_commands():
    assert parse_slack_command({"ssl_check": "1", "token": "x"}) == Ping()
    with pytest.raises(ParseError):
        parse_slack_command({"command": "/fixfleet", "text": "help"})


# --- structural errors and odd JSON --------------------------------------------------------


@pytest.mark.parametrize("body", [[], "text", 3, None])
def test_non_object_payloads_raise_parse_error(settings, body):
    for parse in (lambda: parse_github("issues", body, settings), lambda: parse_sentry("issue", body, settings),
                  lambda: parse_jira(body, settings), lambda: parse_slack_interaction(body)):
        with pytest.raises(ParseError):
            parse()
    assert issubclass(ParseError, ValueError)


MUTATIONS = [None, "x", 7, True, [], {}, [None]]
DELETE = object()


def paths(node: Any, prefix: tuple = (), depth: int = 0, max_depth: int = 3):
    """Every key path down to max_depth (the first two items of lists)."""
    if depth >= max_depth:
        return
    items = node.items() if isinstance(node, dict) else enumerate(node[:2]) if isinstance(node, list) else ()
    for key, value in list(items):
        yield prefix + (key,)
        yield from paths(value, prefix + (key,), depth + 1, max_depth)


def mutated(payload: dict[str, Any], max_depth: int):
    """Yield the payload with one value replaced or deleted, in place, restoring it after."""
    for path in list(paths(payload, max_depth=max_depth)):
        parent = payload
        for step in path[:-1]:
            parent = parent[step]
        original = parent[path[-1]]
        for value in [*MUTATIONS, DELETE]:
            if value is DELETE:
                if not isinstance(parent, dict):
                    continue
                del parent[path[-1]]
            else:
                parent[path[-1]] = value
            yield payload
            parent[path[-1]] = original


def one_per_kind(files: list[Path]) -> list[Path]:
    kinds: dict[str, Path] = {}
    for path in files:
        kinds.setdefault(".".join(path.name.split(".")[:2]), path)
    return list(kinds.values())


def test_odd_github_json_never_crashes():
    settings = make_settings(github_label="bug")  # so issues payloads reach the task builder
    for path in one_per_kind(GITHUB_FILES):
        event = path.name.split(".")[0]
        for payload in mutated(load(path), max_depth=3):
            assert isinstance(parse_github(event, payload, settings), TaskRequest | CommandRequest | Ignored | Ping)


def test_odd_sentry_jira_slack_json_never_crashes(settings):
    cases = [
        (lambda p: parse_sentry("event_alert", p, settings), sentry("event_alert.triggered.json"), 8),
        (lambda p: parse_sentry("issue", p, settings), sentry("issue.created.json"), 4),
        (lambda p: parse_jira(p, settings), jira_payload(labels=["fixfleet"]), 8),
        (parse_slack_interaction, slack_interaction(), 4),
    ]
    for parse, payload, depth in cases:
        for variant in mutated(payload, max_depth=depth):
            assert isinstance(parse(variant), TaskRequest | SlackAction | Ignored)


# --- delivery ids --------------------------------------------------------------------------


def test_delivery_ids_from_headers():
    assert delivery_id("github", {"X-GitHub-Delivery": "72d3162e"}, {}) == "72d3162e"
    assert delivery_id(Source.GITHUB, {"x-github-delivery": "72d3162e"}, {}) == "72d3162e"
    assert delivery_id("sentry", {"Request-ID": "abc-123"}, {}) == "abc-123"
    assert delivery_id("jira", {"X-Atlassian-Webhook-Identifier": "jira-9"}, {}) == "jira-9"


def test_jira_without_identifier_falls_back_to_a_body_hash():
    first = delivery_id("jira", {}, {"a": 1}, b'{"a": 1}')
    assert first.startswith("sha256:") and first == delivery_id("jira", {}, {"a": 1}, b'{"a": 1}')
    assert first != delivery_id("jira", {}, {"a": 2}, b'{"a": 2}')
    assert delivery_id("jira", {}, {"a": 1, "b": 2}) == delivery_id("jira", {}, {"b": 2, "a": 1})


def test_slack_delivery_ids():
    assert delivery_id("slack", {}, slack_interaction()) == "12466734323.1395872398"
    no_trigger = {k: v for k, v in slack_interaction().items() if k != "trigger_id"}
    assert delivery_id("slack", {}, no_trigger) == "1548426417.840180"
    assert delivery_id("slack", {}, {"trigger_id": "13345.73847", "user_id": "U1"}) == "13345.73847"
