"""Closing the loops (issue #22): what became of a completed task's pull request (webhook and
periodic check), recorded, shown and counted; a rejected or cancelled task's draft pull request
closed with the reason and its branch deleted. Against the GitHub stand-in, the real store and
the real ingress."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from fixfleet.config import Settings
from fixfleet.forges.base import ForgeError
from fixfleet.forges.github_api import GitHubClient
from fixfleet.logs import reset_log_once
from fixfleet.loops import Loops
from fixfleet.models import NewTask, PullOutcome, Source, Task, TaskStatus
from fixfleet.providers import connect
from fixfleet.redact import Redactor
from fixfleet.store import Store
from fixfleet.workspace.branches import delete_remote_branch
from fixfleet.workspace.git import GitError
from tests.fakes.github import FakeGitHub
from tests.gitrepos import Upstream, make_upstream
from tests.ingress_server import running_ingress
from tests.ingress_world import GITHUB_TOKEN, REPO, bearer, configured, post_github
from tests.corpus import CORPUS

S = TaskStatus
TO_COMPLETED = (S.PLANNING, S.AWAITING_APPROVAL, S.APPROVED, S.EXECUTING, S.COMPLETED)


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub(GITHUB_TOKEN) as fake:
        fake.add_repo("acme/api")
        fake.grant("acme/api", "maintainer", "maintain")
        yield fake


@pytest.fixture
def loop_settings(settings: Settings, github: FakeGitHub, tmp_path: Path) -> Settings:
    return configured(settings, github, tmp_path)


@pytest.fixture
async def loops(loop_settings: Settings, store: Store) -> AsyncIterator[Loops]:
    async with connect(loop_settings, Redactor()) as providers:
        yield Loops(loop_settings, store, providers)


async def task_with_pull(store: Store, github: FakeGitHub, *, upto: S = S.COMPLETED, n: int = 1) -> Task:
    """A task whose fixfleet branch has a draft pull request on acme/api, moved up to `upto`."""
    task, _ = await store.create_task(NewTask(source=Source.GITHUB, repo=REPO, title=f"boom {n}",
                                              external_ids={"github_issue": f"acme/api#{100 + n}"}))
    branch = f"fixfleet/{task.key}"
    github.push("acme/api", branch, {"PLAN.md": "plan"})
    async with GitHubClient(GITHUB_TOKEN, api_url=github.url) as client:
        pull = await client.create_pull("acme/api", branch, "main", f"fixfleet {task.key}", "plan", draft=True)
    ids = {"github_pr": f"acme/api#{pull['number']}"}
    for target in TO_COMPLETED[: TO_COMPLETED.index(upto) + 1]:
        task = await store.transition(task.id, target, actor="test", changes={
            "external_ids": task.external_ids | ids, "branch": branch, "pr_url": pull["html_url"]})
    return task


def pull_closed_payload(github: FakeGitHub, number: int, *, sender: str = "alice") -> dict[str, Any]:
    """GitHub's own `pull_request.closed` payload, about the stand-in's pull request."""
    payload = json.loads((CORPUS / "github-webhooks" / "pull_request.closed.payload.json").read_text())
    payload["pull_request"] = payload["pull_request"] | github.pull("acme/api", number)
    payload["number"] = number
    payload["repository"]["full_name"], payload["repository"]["clone_url"] = "acme/api", REPO
    payload["repository"]["html_url"] = "https://github.com/acme/api"
    payload["sender"] = {"login": sender, "type": "User"}
    return payload


# --- the store ----------------------------------------------------------------------------------


async def test_an_outcome_is_recorded_on_completed_tasks_only_and_merged_is_final(store: Store,
                                                                                   github: FakeGitHub) -> None:
    waiting = await task_with_pull(store, github, upto=S.AWAITING_APPROVAL, n=1)
    assert await store.record_outcome(waiting.id, PullOutcome.MERGED, by="alice", at=None, actor="t") is None
    done = await task_with_pull(store, github, n=2)
    closed = await store.record_outcome(done.id, PullOutcome.CLOSED, by="bob", at=None, actor="t")
    assert closed is not None and closed.outcome == PullOutcome.CLOSED and closed.merge_seconds is None
    assert await store.record_outcome(done.id, PullOutcome.CLOSED, by="bob", at=None, actor="t") is None  # unchanged
    merged = await store.record_outcome(done.id, PullOutcome.MERGED, by="alice", at=None, actor="t")
    assert merged is not None and merged.outcome_by == "alice" and merged.merge_seconds is not None
    assert await store.record_outcome(done.id, PullOutcome.CLOSED, by="x", at=None, actor="t") is None  # final
    notes = [e.reason for e in await store.events(done.id) if e.to_status is None]
    assert notes == ["pull request closed unmerged by bob", "pull request merged by alice"]
    assert (await store.get_task(done.id)).status == S.COMPLETED  # the state machine is untouched
    figures = await store.outcome_figures()
    assert (figures.completed, figures.merged, figures.closed, figures.open, figures.merge_rate) == (1, 1, 0, 0, 1.0)


# --- the webhook ---------------------------------------------------------------------------------


@pytest.fixture
def api(loop_settings: Settings, store: Store, redis: Redis) -> Iterator[str]:
    with running_ingress(loop_settings) as url:
        yield url


async def test_a_merge_webhook_records_the_outcome_shown_in_the_api_and_metrics(api: str, store: Store,
                                                                                 github: FakeGitHub) -> None:
    task = await task_with_pull(store, github)
    number = int(task.external_ids["github_pr"].split("#")[1])
    github.merge("acme/api", number, by="alice", at="2030-01-01T10:00:00Z")
    delivery = os.urandom(6).hex()
    answer = post_github(api, "pull_request", pull_closed_payload(github, number), delivery)
    assert answer.status_code == 200 and answer.json() == {"status": "outcome", "task": task.key, "detail": "merged",
                                                           "text": None}
    assert post_github(api, "pull_request", pull_closed_payload(github, number), delivery).json()["status"] == "duplicate"
    shown = httpx.get(f"{api}/tasks/{task.key}", headers=bearer("tok-read")).json()
    assert shown["status"] == "COMPLETED" and shown["outcome"] == "merged" and shown["outcome_by"] == "alice"
    assert shown["outcome_at"].startswith("2030-01-01T10:00:00") and shown["merge_seconds"] > 0
    events = httpx.get(f"{api}/tasks/{task.key}/events", headers=bearer("tok-read")).json()
    assert any(e["reason"] == "pull request merged by alice" and e["actor"] == "webhook:github" for e in events)
    metrics = httpx.get(f"{api}/metrics").text
    assert 'ai_agent_outcomes_total{outcome="merged"} 1.0' in metrics
    assert 'ai_agent_time_to_merge_seconds_count 1.0' in metrics


async def test_a_pull_request_closed_unmerged_and_one_that_is_no_tasks(api: str, store: Store,
                                                                      github: FakeGitHub) -> None:
    task = await task_with_pull(store, github)
    number = int(task.external_ids["github_pr"].split("#")[1])
    github.close_unmerged("acme/api", number)
    answer = post_github(api, "pull_request", pull_closed_payload(github, number, sender="bob"), os.urandom(6).hex())
    assert answer.json()["detail"] == "closed"
    shown = await store.get_task(task.id)
    assert (shown.outcome, shown.outcome_by) == (PullOutcome.CLOSED, "bob")
    github.push("acme/api", "feature", {"x": "y"})
    async with GitHubClient(GITHUB_TOKEN, api_url=github.url) as client:
        other = await client.create_pull("acme/api", "feature", "main", "someone's", "")
    github.close_unmerged("acme/api", other["number"])
    answer = post_github(api, "pull_request", pull_closed_payload(github, other["number"]), os.urandom(6).hex())
    assert answer.json()["status"] == "ignored"


# --- the periodic check -----------------------------------------------------------------------------


async def test_the_periodic_check_finds_a_merge_without_webhooks(loops: Loops, store: Store,
                                                                 github: FakeGitHub) -> None:
    task = await task_with_pull(store, github)
    assert await loops.check_outcomes() == 0  # still open: checked, noted as open
    assert (await store.get_task(task.id)).outcome == PullOutcome.OPEN
    assert await loops.check_outcomes() == 0 and len(github.calls_to(r"/pulls/\d+$", "GET")) == 1  # not again yet
    github.merge("acme/api", int(task.external_ids["github_pr"].split("#")[1]), by="carol")
    await store.pool.execute("UPDATE tasks SET outcome_checked_at = now() - interval '1 day'")
    assert await loops.check_outcomes() == 1
    merged = await store.get_task(task.id)
    assert (merged.outcome, merged.outcome_by) == (PullOutcome.MERGED, "carol")
    assert any(e.actor == "fixfleet:outcome-check" for e in await store.events(task.id))


# --- reject and cancel close the draft pull request -----------------------------------------------------


async def test_a_rejected_tasks_draft_pull_request_is_closed_with_the_reason_and_its_branch_deleted(
        api: str, store: Store, github: FakeGitHub) -> None:
    task = await task_with_pull(store, github, upto=S.AWAITING_APPROVAL)
    number = int(task.external_ids["github_pr"].split("#")[1])
    answer = httpx.post(f"{api}/tasks/{task.key}/reject", json={"reason": "wrong module"},
                        headers=bearer("tok-approve"))
    assert answer.status_code == 200 and answer.json()["status"] == "REJECTED"
    deadline = time.monotonic() + 5  # closed after the answer: the comment, the close, the branch, then the mark
    while "pull_closed_at" not in (await store.get_task(task.id)).context and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "pull_closed_at" in (await store.get_task(task.id)).context  # the sweep leaves it alone now
    assert github.pull("acme/api", number)["state"] == "closed"
    said = [c["body"] for c in github.comments_on("acme/api", number)]
    assert len(said) == 1 and f"{task.key} was rejected by " in said[0] and "wrong module" in said[0]
    assert f"fixfleet/{task.key}" not in github.repos["acme/api"].refs


async def test_cancel_keeps_the_branch_when_told_and_a_forge_outage_is_retried_by_the_sweep(
        loop_settings: Settings, store: Store, github: FakeGitHub, caplog: pytest.LogCaptureFixture) -> None:
    keep = loop_settings.model_copy(update={"keep_closed_branches": True})
    task = await task_with_pull(store, github, upto=S.APPROVED)
    await store.transition(task.id, S.CANCELLED, actor="cli:ops", reason="not needed any more")
    number = int(task.external_ids["github_pr"].split("#")[1])
    async with connect(keep, Redactor(), attempts=1) as providers:
        loops = Loops(keep, store, providers)
        github.fail_next(r"/pulls/\d+$", status=503, times=10)
        await loops.sweep()
        await loops.sweep()
        assert github.pull("acme/api", number)["state"] == "open"
        assert len([r for r in caplog.records if "github close failed" in r.getMessage()]) == 1  # logged once
        github.clear_faults()
        await loops.sweep()
    assert github.pull("acme/api", number)["state"] == "closed"
    assert f"fixfleet/{task.key}" in github.repos["acme/api"].refs  # kept
    assert "not needed any more" in github.comments_on("acme/api", number)[0]["body"]


async def test_a_github_task_that_ended_before_its_pull_request_has_its_branch_deleted(
        loops: Loops, store: Store, github: FakeGitHub) -> None:
    """Cancelled between the push of its plan and the opening of its draft pull request: no pull
    request to close, but the pushed branch would stay on GitHub for good."""
    task, _ = await store.create_task(NewTask(source=Source.GITHUB, repo=REPO, title="boom",
                                              external_ids={"github_issue": "acme/api#101"}))
    branch = f"fixfleet/{task.key}"
    github.push("acme/api", branch, {"PLAN.md": "plan"})
    github.push("acme/api", "feature/mine", {"notes.md": "mine"})
    task = await store.transition(task.id, S.PLANNING, actor="test", changes={"branch": branch})
    task = await store.transition(task.id, S.CANCELLED, actor="cli:ops", reason="not needed any more")
    forge = loops.providers.forges.for_repo(REPO)
    assert forge.pull_of(task) is None
    assert await loops.close_ended(task)
    assert branch not in github.repos["acme/api"].refs and "feature/mine" in github.repos["acme/api"].refs
    assert "pull_closed_at" in (await store.get_task(task.id)).context
    assert await forge.delete_branch(REPO, branch) is False  # gone: nothing to delete
    with pytest.raises(ForgeError, match="only fixfleet/"):
        await forge.delete_branch(REPO, "feature/mine")


async def plain_remote_task(store: Store, upstream: Upstream, target: S) -> Task:
    """A task on a plain git remote (no forge API: its pushed branch is the publication), ended as `target`."""
    task, _ = await store.create_task(NewTask(source=Source.API, repo=upstream.url, title="boom"))
    branch = f"fixfleet/{task.key}"
    upstream.commit({"PLAN.md": "plan v1\n"}, branch=branch, message=f"docs: plan v1 for {task.key}")
    for step in (S.PLANNING, S.AWAITING_APPROVAL):
        task = await store.transition(task.id, step, actor="test", changes={"branch": branch})
    return await store.transition(task.id, target, actor="cli:ops", reason="not this way")


@pytest.mark.parametrize("target", [S.REJECTED, S.CANCELLED])
async def test_a_plain_git_remotes_branch_is_deleted_on_reject_and_cancel_and_only_fixfleets(
        loops: Loops, store: Store, tmp_path: Path, target: S) -> None:
    upstream = make_upstream(tmp_path / "remote")
    upstream.commit({"notes.md": "mine\n"}, branch="feature/mine")
    task = await plain_remote_task(store, upstream, target)
    assert loops.providers.forges.for_repo(task.repo).kind == "git"
    assert await loops.close_ended(task)
    assert not upstream.has(task.branch) and upstream.has("main") and upstream.has("feature/mine")
    assert "pull_closed_at" in (await store.get_task(task.id)).context
    await loops.sweep()  # nothing left to do: the sweep does not come back to it
    assert await delete_remote_branch(loops.git, upstream.url, task.branch) is False  # gone: nothing to delete
    with pytest.raises(GitError, match="only fixfleet/"):
        await delete_remote_branch(loops.git, upstream.url, "feature/mine")
    assert upstream.has("feature/mine")


async def test_a_plain_git_remotes_branch_is_kept_when_told_and_an_unreachable_one_is_retried_by_the_sweep(
        loop_settings: Settings, store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    upstream = make_upstream(tmp_path / "remote")
    kept = await plain_remote_task(store, upstream, S.CANCELLED)
    keep = loop_settings.model_copy(update={"keep_closed_branches": True})
    async with connect(keep, Redactor()) as providers:
        assert await Loops(keep, store, providers).close_ended(kept)
    assert upstream.has(kept.branch)

    task = await plain_remote_task(store, upstream, S.REJECTED)
    reset_log_once()
    hidden = upstream.bare.rename(tmp_path / "away.git")  # the remote is unreachable for a while
    async with connect(loop_settings, Redactor()) as providers:
        loops = Loops(loop_settings, store, providers)
        assert not await loops.close_ended(task)
        assert "pull_closed_at" not in (await store.get_task(task.id)).context
        assert [r.getMessage() for r in caplog.records if "git delete-branch failed" in r.getMessage()]
        hidden.rename(upstream.bare)
        await loops.sweep()
    assert not upstream.has(task.branch) and "pull_closed_at" in (await store.get_task(task.id)).context


# --- how the figures read ------------------------------------------------------------------------------


async def test_status_and_the_backlog_say_merge_rate_and_time_to_merge(store: Store, github: FakeGitHub) -> None:
    from fixfleet.backlog.results import TaskResult, merge_summary
    from fixfleet.cli.app import outcomes_line

    tasks = [await task_with_pull(store, github, n=n) for n in range(1, 5)]
    await store.pool.execute("UPDATE task_events SET created_at = now() - interval '2 hours' WHERE to_status = 'COMPLETED'")
    await store.record_outcome(tasks[0].id, PullOutcome.MERGED, by="alice", at=None, actor="t")
    await store.record_outcome(tasks[1].id, PullOutcome.MERGED, by="bob", at=None, actor="t")
    await store.record_outcome(tasks[2].id, PullOutcome.CLOSED, by="carol", at=None, actor="t")
    line = outcomes_line((await store.outcome_figures()).as_dict())
    assert line == ("pull requests of 4 completed tasks: 2 merged, 1 closed unmerged, 1 open · merge rate 67 % · "
                    "median time to merge 2h00m")
    results = [TaskResult(source="github", external_id=str(n), title="t", task=f"FF-{n}", status=S.COMPLETED,
                          repository=REPO, pr_url=None, branch=None, cost_usd=0, tokens=0, duration_s=0, queued_s=0,
                          planning_s=0, waiting_for_approval_s=0, executing_s=0, attempts=1, failure=None,
                          approved_by=None, bulk_approved=False, created_at=tasks[0].created_at, ended_at=None,
                          pr_outcome=outcome, time_to_merge_s=seconds)
               for n, (outcome, seconds) in enumerate([("merged", 60.0), ("merged", 180.0), ("closed", None), (None, None)])]
    assert merge_summary(results) == ("2 of 4 completed merged, 1 closed unmerged (merge rate 67 % of decided), "
                                      "median time to merge 2m00s")


def test_a_command_in_a_github_comment_is_acknowledged_with_a_reaction(api: str, github: FakeGitHub) -> None:
    from tests.ingress_world import comment_payload

    payload = comment_payload("maintainer", "@agent help")
    assert post_github(api, "issue_comment", payload, os.urandom(6).hex()).json()["status"] == "command"
    deadline = time.monotonic() + 5
    while not github.reactions and time.monotonic() < deadline:
        time.sleep(0.05)
    assert github.reactions == [{"comment_id": payload["comment"]["id"], "content": "+1"}]


async def test_the_periodic_check_says_nothing_it_does_not_know(loop_settings: Settings, store: Store,
                                                                github: FakeGitHub,
                                                                caplog: pytest.LogCaptureFixture) -> None:

    reset_log_once()
    plain, _ = await store.create_task(NewTask(source=Source.CLI, repo="file:///srv/git/tool.git", title="plain"))
    for target in TO_COMPLETED:
        plain = await store.transition(plain.id, target, actor="test")
    on_github = await task_with_pull(store, github, n=2)
    github.fail_next(r"/pulls/\d+$", status=503, times=None)
    async with connect(loop_settings, Redactor(), attempts=1) as providers:
        loops = Loops(loop_settings, store, providers)
        assert await loops.check_outcomes() == 0
        await store.pool.execute("UPDATE tasks SET outcome_checked_at = now() - interval '1 day'")
        assert await loops.check_outcomes() == 0
    assert (await store.get_task(plain.id)).outcome is None  # a branch on a plain remote: no outcome to know
    assert (await store.get_task(on_github.id)).outcome is None  # GitHub did not answer: nothing recorded
    said = [r.getMessage() for r in caplog.records if "could not ask github" in r.getMessage()]
    assert len(said) == 1 and "503" in said[0]
