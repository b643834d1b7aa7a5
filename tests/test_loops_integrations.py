"""Closing the loops with Jira, Sentry and Slack (issue #22), against their stand-ins: the plan's
analysis, link, label and transitions on Jira; the revised plan announced on the pull request and
in the chat's thread; the chat's buttons replaced by the decision; a merge moving Jira and
resolving Sentry in the next release; a reject commented; Sentry's latest event fetched for the
planner; and each service down in turn: the step goes on, the failure logged once."""

from __future__ import annotations

import asyncio

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from actors.planner import planner_prompt
from actors.publish import Publisher
from fixfleet.approvals import Approvals, Principal
from fixfleet.commands.handlers import Commands
from fixfleet.config import Settings
from fixfleet.formats.adf import adf_to_text
from fixfleet.integrations.jira import text_to_adf
from fixfleet.logs import reset_log_once
from fixfleet.loops import Loops
from fixfleet.models import NewTask, PullOutcome, Source, Task, TaskStatus
from fixfleet.providers import Providers, connect
from fixfleet.redact import Redactor
from fixfleet.store import Store
from tests.fakes.github import FakeGitHub
from tests.fakes.jira import FakeJira
from tests.fakes.sentry import FakeSentry
from tests.fakes.slack import FakeSlack
from tests.ingress_world import GITHUB_TOKEN, REPO, configured

S = TaskStatus
FAST = {"attempts": 1, "backoff_s": 0.01, "max_wait_s": 0.1, "timeout_s": 5}
TRANSITIONS = {"PLANNING": "Start Progress", "AWAITING_APPROVAL": "In Review", "EXECUTING": "In Progress",
               "COMPLETED": "Ready for Review", "MERGED": "Done", "REJECTED": "Won't Do"}
PLAN = {"root_cause": "div() divides by a zero count", "confidence": 0.8, "risk": "low",
        "affected_files": [{"path": "app/calc.py", "reason": "the division"}]}
FRAMES = [{"filename": "app/calc.py", "abs_path": "/srv/app/calc.py", "function": "div", "lineno": 2,
           "in_app": True, "context_line": "    return a / b"}]


@pytest.fixture(autouse=True)
def _fresh_log_once() -> None:
    reset_log_once()


@pytest.fixture
def fakes() -> Iterator[tuple[FakeGitHub, FakeJira, FakeSentry, FakeSlack]]:
    with FakeGitHub(GITHUB_TOKEN) as github, FakeJira("bot@acme.test", "jira-token") as jira, \
            FakeSentry("sentry-token") as sentry, FakeSlack("xoxb-test") as slack:
        github.add_repo("acme/api")
        github.grant("acme/api", "maintainer", "maintain")
        jira.add_issue("OPS-7", "Totals crash", status="To Do")
        sentry.add_issue("4242", "ZeroDivisionError: division by zero", FRAMES)
        yield github, jira, sentry, slack


@pytest.fixture
def world(settings: Settings, fakes, tmp_path: Path) -> Settings:
    github, jira, sentry, slack = fakes
    base = configured(settings, github, tmp_path)
    return Settings.model_validate(base.model_dump() | {
        "github_token": GITHUB_TOKEN, "jira_base_url": jira.url, "jira_email": "bot@acme.test",
        "jira_api_token": "jira-token", "sentry_auth_token": "sentry-token", "sentry_api_url": f"{sentry.url}/api/0",
        "sentry_org": "acme",
        "slack_bot_token": "xoxb-test", "slack_api_url": slack.api_url, "slack_channel": "C0PLANS",
        "jira_transitions": TRANSITIONS, "slack_approvers": ["U_LEAD"], "public_url": "https://fixfleet.acme.test/"})


@pytest.fixture
async def providers(world: Settings) -> AsyncIterator[Providers]:
    async with connect(world, Redactor(), **FAST) as found:
        yield found


async def planned(store: Store, publisher: Publisher, github: FakeGitHub, *, versions: int = 1) -> Task:
    """A task from a GitHub issue, linked to Jira OPS-7 and Sentry 4242, with its plan published `versions` times."""
    task, _ = await store.create_task(NewTask(source=Source.GITHUB, repo=REPO, title="totals crash", external_ids={
        "github_issue": "acme/api#7", "jira": "OPS-7", "sentry_issue": "4242"}))
    branch = f"fixfleet/{task.key}"
    github.push("acme/api", branch, {"PLAN.md": "v1"})
    task = await store.transition(task.id, S.PLANNING, actor="planner", changes={"branch": branch})
    for version in range(1, versions + 1):
        plan = PLAN | ({"affected_files": [*PLAN["affected_files"], {"path": "app/api.py", "reason": "guard"}]}
                       if version > 1 else {})
        published = await publisher.plan_ready(task, plan, version, branch)
        task = await store.transition(task.id, S.AWAITING_APPROVAL, actor="planner", context=published.context,
                                      changes={"plan": plan, "plan_version": version, "pr_url": published.pr_url,
                                               "external_ids": task.external_ids | published.external_ids})
        if version < versions:
            task = await store.transition(task.id, S.REVISING, actor="github:maintainer", reason="guard the api too")
            task = await store.transition(task.id, S.PLANNING, actor="planner")
    return task


async def completed(store: Store, publisher: Publisher, github: FakeGitHub) -> Task:
    """`planned`, then approved, executed and COMPLETED (its pull request ready, not merged yet)."""
    task = await planned(store, publisher, github)
    for target in (S.APPROVED, S.EXECUTING, S.COMPLETED):
        task = await store.transition(task.id, target, actor="t")
    return task


def number(task: Task) -> int:
    return int(task.external_ids["github_pr"].split("#")[1])


async def test_a_plan_is_labelled_fixes_its_issue_and_a_revision_is_announced_on_every_side(
        store: Store, world: Settings, providers: Providers, fakes) -> None:
    github, jira, _, slack = fakes
    task = await planned(store, Publisher(world, store, providers), github, versions=2)
    pull = github.pull("acme/api", number(task))
    assert "Fixes #7" in pull["body"]
    assert {label["name"] for label in pull["labels"]} == {"fixfleet", "priority: normal", "fixfleet: awaiting approval"}
    revised = [c["body"] for c in github.comments_on("acme/api", number(task))]
    assert len(revised) == 1 and "plan v2 is ready (revised from v1)" in revised[0] and "`app/api.py`" in revised[0]
    analysis = [adf_to_text(c["body"]) for c in jira.comments("OPS-7")]
    assert len(analysis) == 1 and "plan v2" in analysis[0] and "app/api.py" in analysis[0]  # one comment, kept current
    assert "Confidence: 0.8" in analysis[0] and pull["html_url"] in analysis[0]
    links = jira.remote_links["OPS-7"]
    assert len(links) == 1 and links[0]["object"]["url"] == pull["html_url"]
    assert "fixfleet" in jira.issues["OPS-7"]["fields"]["labels"] and jira.status("OPS-7") == "In Review"
    replies = [m for m in slack.messages if m["thread_ts"]]
    assert len(replies) == 1 and "plan v2 is ready" in replies[0]["text"]


async def test_approval_replaces_the_slack_buttons_with_who_decided_and_when(
        store: Store, world: Settings, providers: Providers, fakes) -> None:
    github, _, _, slack = fakes
    task = await planned(store, Publisher(world, store, providers), github)
    loops = Loops(world, store, providers)
    commands = Commands(store, Approvals(store, world, providers.forges), on_decision=loops.decided)
    await commands.run(Principal(kind="slack", name="U_LEAD"), "approve", task_ref=task.key)
    message = slack.message("C0PLANS", task.context["slack_ts"])
    assert "approved by <@U_LEAD>, " in message["text"] and " UTC" in message["text"]
    assert not any(block["type"] == "actions" for block in message["blocks"])  # the buttons are gone
    assert f"<https://fixfleet.acme.test/ui/tasks/{task.key}|Task page>" in message["blocks"][0]["text"]["text"]


async def test_a_reject_comments_on_jira_and_replaces_the_buttons(store: Store, world: Settings,
                                                                  providers: Providers, fakes) -> None:
    github, jira, _, slack = fakes
    task = await planned(store, Publisher(world, store, providers), github)
    loops = Loops(world, store, providers)
    commands = Commands(store, Approvals(store, world, providers.forges), on_decision=loops.decided)
    await commands.run(Principal(kind="slack", name="U_LEAD"), "reject", task_ref=task.key,
                       args={"reason": "the count is validated upstream"})
    said = adf_to_text(jira.comments("OPS-7")[-1]["body"])
    assert f"{task.key} was rejected by <@U_LEAD>" in said and "validated upstream" in said
    message = slack.message("C0PLANS", task.context["slack_ts"])
    assert "rejected by <@U_LEAD>" in message["text"] and message["blocks"][0]["type"] == "section"
    assert github.pull("acme/api", number(task))["state"] == "closed"


async def test_a_merge_moves_jira_to_done_and_resolves_sentry_in_the_next_release(
        store: Store, world: Settings, providers: Providers, fakes) -> None:
    github, jira, sentry, slack = fakes
    task = await completed(store, Publisher(world, store, providers), github)
    loops = Loops(world, store, providers)
    merged = await loops.pull_changed(task.external_ids["github_pr"], (await providers.forges.for_repo(REPO).pull_state(
        providers.forges.for_repo(REPO).pull_of(task))).model_copy(update={"outcome": PullOutcome.MERGED, "by": "alice"}))
    assert merged is not None and merged.outcome == PullOutcome.MERGED
    await loops.sweep()  # tells what the webhook's background step would have
    assert jira.status("OPS-7") == "Done"
    assert sentry.issues["4242"]["status"] == "resolved" and sentry.issues["4242"]["statusDetails"] == {"inNextRelease": True}
    notes = sentry.notes["4242"]
    assert any(merged.pr_url in n["data"]["text"] and "merged by alice" in n["data"]["text"] for n in notes)
    assert any(m["thread_ts"] and "merged by alice" in m["text"] for m in slack.messages)
    await loops.sweep()  # told once
    assert len(sentry.calls_to(r"/organizations/acme/issues/4242/$", "PUT")) == 1


async def test_a_merge_told_by_the_webhook_and_the_sweep_at_once_is_told_once(
        store: Store, world: Settings, providers: Providers, fakes) -> None:
    github, jira, sentry, slack = fakes
    task = await completed(store, Publisher(world, store, providers), github)
    await store.record_outcome(task.id, PullOutcome.MERGED, by="alice", at=None, actor="t")
    merged = await store.get_task(task.id)
    webhook, sweeper = Loops(world, store, providers), Loops(world, store, providers)

    await asyncio.gather(webhook.tell_merged(merged), sweeper.sweep(), webhook.tell_merged(merged))
    await sweeper.sweep()  # whichever stood aside finds it told

    assert len([m for m in slack.messages if m["thread_ts"] and "merged by alice" in m["text"]]) == 1
    assert len(sentry.calls_to(r"/organizations/acme/issues/4242/$", "PUT")) == 1


async def test_sentry_resolution_can_be_turned_off(store: Store, world: Settings, providers: Providers, fakes) -> None:
    github, _, sentry, _ = fakes
    off = world.model_copy(update={"sentry_resolve_on_merge": False})
    task = await completed(store, Publisher(off, store, providers), github)
    await store.record_outcome(task.id, PullOutcome.MERGED, by="alice", at=None, actor="t")
    await Loops(off, store, providers).sweep()
    assert sentry.issues["4242"]["status"] == "unresolved" and not sentry.calls_to(r"/organizations/acme/issues/4242/$", "PUT")


async def test_a_missing_jira_transition_is_logged_once_per_project_with_the_available_ones(
        store: Store, world: Settings, providers: Providers, fakes, caplog: pytest.LogCaptureFixture) -> None:
    github, jira, _, _ = fakes
    publisher = Publisher(world, store, providers)
    jira.add_issue("OPS-8", "another")
    for key in ("OPS-7", "OPS-8"):
        task, _ = await store.create_task(NewTask(source=Source.JIRA, repo=REPO, title=key, external_ids={"jira": key}))
        await publisher.task_failed(task.id, "the suite never passed")  # FAILED is not mapped: nothing moves
        await providers.trackers[0].move(key, "REJECTED")  # mapped to "Won't Do", which the workflow lacks
    said = [r.getMessage() for r in caplog.records if "Won't Do" in r.getMessage()]
    assert len(said) == 1 and "available: Start Progress, Ready for Review, Done" in said[0]
    assert "the suite never passed" in adf_to_text(jira.comments("OPS-7")[0]["body"])


async def test_the_planner_is_given_sentrys_latest_event_and_told_when_sentry_is_down(
        store: Store, world: Settings, providers: Providers, fakes, caplog: pytest.LogCaptureFixture) -> None:
    _, _, sentry, _ = fakes
    publisher = Publisher(world, store, providers)
    task, _ = await store.create_task(NewTask(source=Source.SENTRY, repo=REPO, title="ZeroDivisionError",
                                              external_ids={"sentry_issue": "4242"},
                                              context={"needs_event_fetch": True, "frames": []}))
    fetched = await publisher.fetch_context(task)
    assert fetched.context["frames"][0]["context_line"] == "    return a / b"
    prompt = planner_prompt(fetched, [])
    assert "ZeroDivisionError: division by zero" in prompt and "app/calc.py:2 in div" in prompt
    assert "return a / b" in prompt and "release api@1.4.2" in prompt and "environment production" in prompt
    assert "GET /totals?count=0" in prompt and "user_count 1" in prompt
    assert await publisher.fetch_context(fetched) is fetched  # once
    other, _ = await store.create_task(NewTask(source=Source.SENTRY, repo=REPO, title="other",
                                               external_ids={"sentry_issue": "4243"}, context={"needs_event_fetch": True}))
    sentry.fail_next(r"/events/latest/", status=503, times=None)
    for _ in range(2):
        down = await publisher.fetch_context(other)
    assert "Sentry could not be reached" in planner_prompt(down, [])
    assert len([r for r in caplog.records if "could not be fetched" in r.getMessage()]) == 1


async def test_the_planner_is_given_the_jira_ticket(store: Store, world: Settings, providers: Providers, fakes) -> None:
    _, jira, _, _ = fakes
    await providers.jira.add_comment("OPS-7", "happens only for empty carts", marker="human-1")  # marked: fixfleet's
    jira.issue_comments["OPS-7"].append({"id": "77", "body": text_to_adf("the cart may be empty on Sundays")})
    jira.remote_links["OPS-7"] = [{"id": 1, "object": {"url": "https://acme.sentry.io/issues/4242/", "title": "s"}}]
    task, _ = await store.create_task(NewTask(source=Source.JIRA, repo=REPO, title="Totals crash",
                                              external_ids={"jira": "OPS-7"}))
    prompt = planner_prompt(await Publisher(world, store, providers).fetch_context(task), [])
    assert "It fails." in prompt and "Linked Sentry issues: https://acme.sentry.io/issues/4242/" in prompt
    assert "happens only for empty carts" not in prompt  # marked as fixfleet's own comment: left out
    assert "Comment: the cart may be empty on Sundays" in prompt
    jira.fail_next(r"/issue/", status=503, times=None)
    other, _ = await store.create_task(NewTask(source=Source.JIRA, repo=REPO, title="x", external_ids={"jira": "OPS-9"}))
    assert "The Jira ticket could not be read" in planner_prompt(await Publisher(world, store, providers).fetch_context(other), [])


@pytest.mark.parametrize("down", ["jira", "slack", "sentry", "github"])
async def test_each_integration_down_leaves_the_plan_published_and_is_logged_once(
        store: Store, world: Settings, providers: Providers, fakes, down: str, caplog: pytest.LogCaptureFixture) -> None:
    """GitHub "down" is its comments, labels and review requests: the pull request itself is the
    task's path, and the fix is ready for review without them."""
    github, jira, sentry, slack = fakes
    only = r"/issues/(\d+/)?(comments|labels)|/requested_reviewers" if down == "github" else r"."
    {"jira": jira, "slack": slack, "sentry": sentry, "github": github}[down].fail_next(only, status=503, times=None)
    publisher = Publisher(world, store, providers)
    task = await planned(store, publisher, github, versions=2)  # a revised plan is announced on the PR too
    assert task.status == S.AWAITING_APPROVAL and github.pull("acme/api", number(task))["state"] == "open"
    run = {"command": "pytest", "exit_code": 0, "output_tail": "1 passed"}
    await publisher.fix_ready(task, {"red": run, "green": run, "suite": run, "fail_to_pass": ["t"]}, ["abc"], 0.0)
    assert not github.pull("acme/api", number(task))["draft"]  # ready for review, whatever was down
    await publisher.tests_rerun(task, "abc123", "passes", run)
    await publisher.task_failed(task.id, "just to say it twice")
    missed = await publisher.question_answered(task, ["why div?"], "a zero count", "2026-12-05T10:00:00Z")
    assert missed == (["the pull request"] if down == "github" else [])  # Slack down: no thread to answer in
    if down != "slack":  # GitHub down does not keep the answer from the chat thread
        assert any(m["thread_ts"] and "a zero count" in m["text"] for m in slack.messages)
    failures = [r for r in caplog.records if r.levelno == logging.WARNING and r.getMessage().startswith(down)]
    assert failures and len({r.getMessage().split(":")[0] for r in failures}) == len(failures)  # once per step
    assert all("503" in r.getMessage() or "Unavailable" in r.getMessage() for r in failures)


async def test_an_answer_the_chat_could_not_take_still_reaches_the_pull_request_and_says_so(
        store: Store, world: Settings, providers: Providers, fakes, caplog: pytest.LogCaptureFixture) -> None:
    github, _, _, slack = fakes
    publisher = Publisher(world, store, providers)
    task = await planned(store, publisher, github)  # its plan is in the chat, with a thread
    slack.fail_next(r".", status=503, times=None)
    assert await publisher.question_answered(task, ["why div?"], "a zero count", "t1") == ["the chat thread"]
    comments = github.comments_on("acme/api", number(task))
    assert any("a zero count" in c["body"] for c in comments)
    assert [r.getMessage().split(":")[0] for r in caplog.records if r.levelno == logging.WARNING] == ["slack answer failed"]
    assert not [r for r in caplog.records if r.exc_info]  # an outage is a line, not a traceback


def test_codeowners_name_the_owners_of_the_files_a_plan_touches() -> None:
    from fixfleet.forges.codeowners import owners_for

    codeowners = """# owners
*           @acme/core
*.md        docs@acme.test
/app/       @carol
app/calc.py @dave @acme/math   # the last matching line wins
docs/**     @erin
"""
    assert owners_for(codeowners, ["app/calc.py"]) == (["dave"], ["acme/math"])
    assert owners_for(codeowners, ["app/api.py", "README.md", "setup.py"]) == (["carol"], ["acme/core"])
    assert owners_for(codeowners, ["docs/a/b.txt", "src/app/x.py"]) == (["erin"], ["acme/core"])
    assert owners_for("", ["app/calc.py"]) == ([], [])


async def test_the_ready_pull_request_asks_the_code_owners_and_the_tasks_owner_to_review(
        store: Store, world: Settings, providers: Providers, fakes) -> None:
    github, _, _, _ = fakes
    github.grant("acme/api", "dave", "write")
    github.grant("acme/api", "olivia", "write")
    task = await planned(store, Publisher(world, store, providers), github)
    task = await store.update_fields(task.id, context={"reviewers": {"users": ["dave", "fixfleet[bot]"],
                                                                     "teams": ["acme/math"]}}, owner="olivia")
    run = {"command": "pytest", "exit_code": 0, "output_tail": "1 passed"}
    await Publisher(world, store, providers).fix_ready(task, {"red": run, "green": run, "suite": run}, ["abc"], 0.0)
    pull = github.pull("acme/api", number(task))
    assert "fixfleet: ready for review" in [label["name"] for label in pull["labels"]]
    assert "fixfleet: awaiting approval" not in [label["name"] for label in pull["labels"]]  # one state label
    assert [r["login"] for r in pull["requested_reviewers"]] == ["dave", "olivia"]
    assert [t["slug"] for t in pull["requested_teams"]] == ["math"]
