"""The forge seam: threads named and read back in one format, the forge a repository is on, and
GitHub's implementation against its stand-in (pull requests, comments, permissions), a plain git
remote's (the pushed branch is the publication; it has no threads)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest

from fixfleet.forges.base import ForgeError
from fixfleet.forges.git_remote import PlainGitRemote
from fixfleet.forges.github import GitHubForge
from fixfleet.forges.github_api import GitHubClient
from fixfleet.forge_refs import ForgeRef, ForgeRepo, host_of
from fixfleet.forges.registry import Forges
from fixfleet.models import Priority, Source, Task, TaskStatus, check_external_id
from tests.fakes.github import FakeGitHub

TOKEN = "ghp_forgeTestToken0123456789abcdef"
FAST = {"attempts": 2, "backoff_s": 0.01, "max_wait_s": 1.0}
REPO_URL = "https://github.com/acme/api.git"


def task(repo: str = REPO_URL, **external_ids: str) -> Task:
    now = datetime.now(UTC)
    return Task(id=1, key="FF-1", source=Source.API, external_ids=external_ids, repo=repo, title="mean() crashes",
                body="", priority=Priority.NORMAL, status=TaskStatus.PLANNING, version=1, attempts=1, plan=None,
                plan_version=0, branch=None, pr_url=None, context={}, cost_usd=0.0, tokens=0, created_at=now,
                updated_at=now)


@pytest.fixture
def fake_github() -> Iterator[FakeGitHub]:
    with FakeGitHub(TOKEN) as fake:
        fake.add_repo("acme/api", {"calc.py": "def div(a, b):\n    return a / b\n"})
        yield fake


@pytest.fixture
async def github(fake_github: FakeGitHub) -> AsyncIterator[GitHubForge]:
    client = GitHubClient(TOKEN, api_url=fake_github.url, **FAST)
    yield GitHubForge(client, {"https://git.acme.internal/mirrors/api.git": "acme/api"})
    await client.aclose()


# --- references --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["acme/api#12", "ghe.acme.internal/acme/api#3", "ghe.acme.internal:8443/acme/my.api#7"])
def test_a_thread_reads_back_as_it_was_written(text: str) -> None:
    ref = ForgeRef.parse(text)
    assert str(ref) == text and ForgeRef.parse(str(ref)) == ref
    check_external_id("github_issue", text)  # what the task API accepts is what the seam reads


@pytest.mark.parametrize("text", ["acme#1", "acme/api", "acme/api#", "acme/api#x", "a/b/c/d#1", " acme/api#1",
                                  "acme/api#1 ", "acme/a pi#1", "", "acme/api#12345678901234567890"])
def test_anything_else_is_no_thread(text: str) -> None:
    with pytest.raises(ValueError):
        ForgeRef.parse(text)


def test_github_com_threads_are_named_without_a_host() -> None:
    assert host_of("https://github.com/acme/api") is None and host_of("https://api.github.com") is None
    assert host_of("https://GHE.acme.internal/api/v3") == "ghe.acme.internal"
    assert str(ForgeRepo(host=host_of("https://ghe.acme.internal/api/v3"), name="acme/api").thread(4)) == \
        "ghe.acme.internal/acme/api#4"
    assert ForgeRef.parse("acme/api#4") != ForgeRef.parse("ghe.acme.internal/acme/api#4")  # two things


def test_a_task_names_its_threads_and_an_unreadable_one_names_nothing(github: GitHubForge) -> None:
    both = task(github_pr="acme/api#7", github_issue="acme/api#3")
    assert github.pull_of(both) == ForgeRef.parse("acme/api#7")
    assert [str(r) for r in github.threads_of(both)] == ["acme/api#7", "acme/api#3"]  # the pull request first
    assert github.pull_of(task(github_pr="not a thread")) is None
    assert github.threads_of(task()) == []


# --- which forge --------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "name"), [
    ("https://github.com/acme/api.git", "acme/api"), ("https://github.com/acme/api", "acme/api"),
    ("git@github.com:acme/api.git", "acme/api"), ("ssh://git@github.com/acme/api.git", "acme/api"),
    ("https://git.acme.internal/mirrors/api.git", "acme/api"),  # FIXFLEET_GITHUB_REPOS
    ("https://gitlab.com/acme/api.git", None), ("file:///srv/repos/api", None),
    ("https://github.com.evil.test/acme/api.git", None),
])
def test_the_forge_a_repository_is_on(github: GitHubForge, url: str, name: str | None) -> None:
    forges = Forges(github)
    chosen = forges.for_repo(url)
    assert (chosen is github) == (name is not None) and isinstance(Forges().for_repo(url), PlainGitRemote)
    repo = chosen.repo_of(url)
    assert (repo.name if repo else None) == name
    assert forges.of_kind("github") is github and Forges().of_kind("github") is None


# --- GitHub -------------------------------------------------------------------------------------


async def test_github_opens_one_draft_pull_request_per_branch(github: GitHubForge, fake_github: FakeGitHub) -> None:
    fake_github.push("acme/api", "fixfleet/FF-1", {"PLAN.md": "# Plan v1\n"})
    first = await github.open_pull(REPO_URL, "fixfleet/FF-1", "fixfleet FF-1: mean", "Plan v1")
    again = await github.open_pull(REPO_URL, "fixfleet/FF-1", "fixfleet FF-1: mean", "Plan v2")
    assert first is not None and again is not None and again.ref == first.ref
    assert first.ref.repo.host == "127.0.0.1"  # the stand-in's host names the thread, as an Enterprise server's would
    assert first.url == f"https://github.com/acme/api/pull/{first.ref.number}"
    pull = fake_github.pull("acme/api", first.ref.number)
    assert len(fake_github.pulls) == 1 and pull["draft"] and pull["body"] == "Plan v2"  # the open one took the new plan
    assert pull["base"]["ref"] == "main"


async def test_github_marks_the_pull_request_ready_with_the_evidence(github: GitHubForge,
                                                                     fake_github: FakeGitHub) -> None:
    fake_github.push("acme/api", "fixfleet/FF-2", {"PLAN.md": "# Plan\n"})
    pull = await github.open_pull(REPO_URL, "fixfleet/FF-2", "fixfleet FF-2", "Plan v1")
    await github.update_pull(pull.ref, body="## Evidence")
    assert fake_github.pull("acme/api", pull.ref.number)["draft"]  # not ready unless asked
    await github.update_pull(pull.ref, body="## Evidence\nRED 1, GREEN 0", ready=True)
    shown = fake_github.pull("acme/api", pull.ref.number)
    assert not shown["draft"] and shown["body"].endswith("GREEN 0")


async def test_github_comments_once_per_marker_and_answers_plainly(github: GitHubForge,
                                                                   fake_github: FakeGitHub) -> None:
    thread = ForgeRef.parse("acme/api#5")
    await github.upsert_comment(thread, "FF-1-done", "tests pass")
    await github.upsert_comment(thread, "FF-1-done", "tests pass again")
    await github.comment(thread, "FF-1 is now APPROVED")
    bodies = [c["body"] for c in fake_github.comments_on("acme/api", 5)]
    assert bodies == ["tests pass again\n\n<!-- fixfleet:FF-1-done -->", "FF-1 is now APPROVED"]


async def test_github_asks_the_permission_of_the_repository_the_url_names(github: GitHubForge,
                                                                          fake_github: FakeGitHub) -> None:
    fake_github.grant("acme/api", "maintainer", "maintain")
    assert await github.permission(REPO_URL, "maintainer") == "maintain"
    assert await github.permission("https://git.acme.internal/mirrors/api.git", "maintainer") == "maintain"
    assert await github.permission(REPO_URL, "stranger") == "none"
    assert await github.permission("https://gitlab.com/acme/api.git", "maintainer") == "none"  # not on GitHub: not asked
    assert not [c for c in fake_github.calls if "gitlab" in c.path]


# --- a plain git remote ---------------------------------------------------------------------------


async def test_a_plain_git_remote_publishes_the_branch_and_has_no_threads() -> None:
    plain = PlainGitRemote()
    on_it = task("file:///srv/repos/api", github_pr="acme/api#7")
    assert plain.repo_of("file:///srv/repos/api") is None
    assert plain.pull_of(on_it) is None and plain.threads_of(on_it) == []
    assert await plain.open_pull("file:///srv/repos/api", "fixfleet/FF-1", "t", "b") is None
    assert await plain.permission("file:///srv/repos/api", "anyone") == "none"
    for write in (plain.comment(ForgeRef.parse("acme/api#7"), "x"),
                  plain.upsert_comment(ForgeRef.parse("acme/api#7"), "m", "x"),
                  plain.update_pull(ForgeRef.parse("acme/api#7"), body="x")):
        with pytest.raises(ForgeError, match="no pull requests or comments"):
            await write
