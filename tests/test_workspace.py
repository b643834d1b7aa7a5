"""Warm workspaces against real git: mirrors, spares, worktrees, eviction, credentials.

The credential tests serve a repository over HTTPS (self-signed certificate, `git
http-backend` as CGI behind a server that demands a Basic token), so the token path runs
for real; the suite then greps every file under the workspace root for the token.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import os
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import SecretStr

from tests.gitrepos import Upstream, git, isolated_git, make_upstream, upstream  # noqa: F401 - the fixtures
from fixfleet.errors import PermanentError
from fixfleet.workspace.git import PushRefused, RepositoryUnavailable
from fixfleet.workspace.mirrors import Checkout, FileContent, WorkspaceError, WorkspaceManager, disk_usage

BIG_BUDGET = 10**12
TOKEN = "ghp_FAKEtoken0123456789abcdefSECRET"
BASIC = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
pytestmark = pytest.mark.usefixtures("isolated_git")  # every test: its own git config


# -- helpers ------------------------------------------------------------------------------


def used_long_ago(mirror: Path) -> None:
    """Make a mirror the least recently used one on the node."""
    last_used = mirror.parent / "last_used"
    last_used.touch()
    os.utime(last_used, (1, 1))


def worktree_paths(mirror: Path) -> list[str]:
    listing = git("worktree", "list", "--porcelain", cwd=mirror)
    return [line.split(" ", 1)[1] for line in listing.splitlines() if line.startswith("worktree ")]


def files_containing(root: Path, needle: bytes) -> list[Path]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
            hits.append(path)
    return hits


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[WorkspaceManager]:
    workspace = WorkspaceManager(tmp_path / "agent", BIG_BUDGET)
    yield workspace
    await workspace.close()


@pytest.fixture
async def cold_manager(tmp_path: Path) -> AsyncIterator[WorkspaceManager]:
    """No spares: every worktree is a cold `git worktree add` (and sizes stay exact)."""
    workspace = WorkspaceManager(tmp_path / "cold", BIG_BUDGET, warm_spares=0)
    yield workspace
    await workspace.close()


# -- mirrors ------------------------------------------------------------------------------


async def test_clones_once_then_fetches(manager: WorkspaceManager, upstream: Upstream) -> None:
    mirror = await manager.ensure_mirror(upstream.url)
    inode = os.stat(mirror / "objects").st_ino
    new_sha = upstream.commit({"src/app.py": "print('v2')\n"})

    assert await manager.ensure_mirror(upstream.url) == mirror
    assert os.stat(mirror / "objects").st_ino == inode  # same repository, not re-cloned
    assert (manager.stats.clones, manager.stats.fetches) == (1, 1)
    assert git("rev-parse", "refs/remotes/origin/main", cwd=mirror) == new_sha
    assert git("rev-parse", "refs/remotes/origin/HEAD", cwd=mirror) == new_sha


async def test_concurrent_calls_share_one_clone(manager: WorkspaceManager, upstream: Upstream) -> None:
    mirrors = await asyncio.gather(*(manager.ensure_mirror(upstream.url) for _ in range(6)))
    assert len(set(mirrors)) == 1
    assert manager.stats.clones == 1
    assert manager.stats.fetches == 0  # the five latecomers joined the clone in flight
    assert not list(manager.mirrors_dir.glob("*/.partial-*"))


async def test_fetch_prunes_deleted_upstream_branches(manager: WorkspaceManager, upstream: Upstream) -> None:
    upstream.commit({"f.txt": "x\n"}, branch="short-lived")
    mirror = await manager.ensure_mirror(upstream.url)
    assert "origin/short-lived" in git("branch", "-r", cwd=mirror)
    git("push", "-q", "origin", "--delete", "short-lived", cwd=upstream.seed)
    await manager.ensure_mirror(upstream.url)
    assert "origin/short-lived" not in git("branch", "-r", cwd=mirror)
    assert await manager.branch_head(upstream.url, "short-lived") is None


async def test_failed_clone_leaves_nothing_behind(manager: WorkspaceManager, tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError) as raised:
        await manager.ensure_mirror((tmp_path / "missing.git").as_uri())
    assert "does not appear to be a git repository" in raised.value.stderr
    assert not list(manager.mirrors_dir.glob("*/git")) and not list(manager.mirrors_dir.glob("*/.partial-*"))


async def test_files_are_read_from_the_mirror_as_data(manager: WorkspaceManager, upstream: Upstream) -> None:
    sha = upstream.commit({"pyproject.toml": "[project]\nname = 'x'\n", "bin/run": "#!/bin/sh\n"})
    await manager.ensure_mirror(upstream.url)
    files = await manager.read_files(upstream.url, sha, ["pyproject.toml", "README.md", "missing.txt", "src"])
    assert files == {"pyproject.toml": b"[project]\nname = 'x'\n", "README.md": b"hello\n"}
    tree = await manager.list_tree(upstream.url, sha)
    assert set(tree) == {"README.md", "src/app.py", "pyproject.toml", "bin/run"}


# -- checkouts ----------------------------------------------------------------------------


@pytest.mark.parametrize("spares", [0, 1], ids=["cold", "spare"])
async def test_checkout_is_a_plain_tree_cut_loose_from_the_mirror(
    tmp_path: Path, upstream: Upstream, spares: int
) -> None:
    workspace = WorkspaceManager(tmp_path / "agent", BIG_BUDGET, warm_spares=spares)
    try:
        mirror = await workspace.warm(upstream.url)
        head = await workspace.resolve(upstream.url)
        first = await workspace.checkout(upstream.url, head, "FF-1-exec")
        await workspace.warm(upstream.url)  # the next spare, if any
        second = await workspace.checkout(upstream.url, head, "FF-2-exec")

        assert first.from_spare == second.from_spare == bool(spares)
        for checkout in (first, second):
            assert checkout.sha == head == upstream.sha("main")
            assert checkout.path.parent == workspace.checkouts_dir
            assert not (checkout.path / ".git").exists()  # nothing points back at the mirror
            assert (checkout.path / "src/app.py").read_text() == "print('v1')\n"
        assert worktree_paths(mirror) == [str(mirror)]  # no registration left behind

        (first.path / "src/app.py").write_text("print('changed in task 1')\n")
        (first.path / "new.txt").write_text("task 1 only\n")
        assert (second.path / "src/app.py").read_text() == "print('v1')\n"
        assert not (second.path / "new.txt").exists()
    finally:
        await workspace.close()


async def test_the_agents_private_git_is_shallow_and_knows_nothing_of_the_mirror(
    manager: WorkspaceManager, upstream: Upstream
) -> None:
    first = upstream.sha("main")
    second = upstream.commit({"src/app.py": "print('v2')\n"}, message="second")
    third = upstream.commit({"src/app.py": "print('v3')\n"}, message="third")
    mirror = await manager.ensure_mirror(upstream.url)
    git("config", "core.hooksPath", "/nonexistent", cwd=mirror)  # the mirror's config stays the mirror's

    checkout = await manager.checkout(upstream.url, third, "FF-3-plan", history=2, branch="fixfleet/FF-3")

    tree = checkout.path
    assert git("status", "--porcelain", cwd=tree) == ""
    assert git("symbolic-ref", "--short", "HEAD", cwd=tree) == "fixfleet/FF-3"
    assert git("log", "--format=%H", cwd=tree).split() == [third, second]  # two commits, no more
    assert first not in git("log", "--all", "--format=%H", cwd=tree)
    assert git("remote", cwd=tree) == ""
    assert "hooksPath" not in (tree / ".git" / "config").read_text()
    (tree / "src/app.py").write_text("print('fixed')\n")
    assert "-print('v3')" in git("diff", cwd=tree)


async def test_a_spare_brings_the_agents_repository_built_ahead(tmp_path: Path, upstream: Upstream) -> None:
    workspace = WorkspaceManager(tmp_path / "agent", BIG_BUDGET, history=1)
    try:
        await workspace.warm(upstream.url)
        base = upstream.sha("main")
        plan = upstream.commit({"PLAN.md": "# plan\n"}, branch="fixfleet/FF-1", message="plan")  # child of main
        other = upstream.commit({"x.txt": "x\n"}, branch="elsewhere", message="unrelated")
        await workspace.resolve(upstream.url, "fixfleet/FF-1", branch=True)
        for sha, name in ((base, "FF-0"), (plan, "FF-1"), (other, "FF-2")):
            await workspace.warm(upstream.url)  # a spare (with its repository) for each checkout
            checkout = await workspace.checkout(upstream.url, sha, name, branch=f"fixfleet/{name}")
            assert checkout.from_spare
            assert git("rev-parse", "HEAD", cwd=checkout.path) == sha
            assert git("status", "--porcelain", cwd=checkout.path) == ""
            assert git("cat-file", "-t", base, cwd=checkout.path) == "commit"
        assert git("log", "--format=%s", cwd=checkout.path).splitlines()[0] == "unrelated"
        kept = {s.git_dir for state in workspace._states.values() for s in state.spares}
        assert set(workspace.spares_dir.glob("*/*.git")) == kept  # a used spare's repository went with it
    finally:
        await workspace.close()


async def test_concurrent_checkouts_fetches_and_spare_builds_on_one_mirror(
    manager: WorkspaceManager, upstream: Upstream
) -> None:
    await manager.ensure_mirror(upstream.url)
    head = upstream.sha("main")
    results = await asyncio.gather(
        *(manager.checkout(upstream.url, head, f"FF-c{i}", history=1) for i in range(4)),
        *(manager.ensure_mirror(upstream.url) for _ in range(3)),
    )
    checkouts = [c for c in results if isinstance(c, Checkout)]
    assert len({c.path for c in checkouts}) == 4
    for checkout in checkouts:
        assert git("status", "--porcelain", cwd=checkout.path) == ""
    await asyncio.gather(*(manager.discard(c) for c in checkouts))
    assert list(manager.checkouts_dir.iterdir()) == []


async def test_spare_follows_a_moved_default_branch(manager: WorkspaceManager, upstream: Upstream) -> None:
    await manager.warm(upstream.url)  # spare checked out at the first commit
    moved = upstream.commit({"src/app.py": "print('v2')\n", "docs/new.md": "new\n"})

    checkout = await manager.checkout(upstream.url, await manager.resolve(upstream.url), "FF-3")

    assert checkout.from_spare and checkout.sha == moved
    assert (checkout.path / "src/app.py").read_text() == "print('v2')\n"
    assert (checkout.path / "docs/new.md").exists()


async def test_base_may_be_a_branch_tag_or_commit(cold_manager: WorkspaceManager, upstream: Upstream) -> None:
    first = upstream.sha("main")
    feature = upstream.commit({"feature.txt": "f\n"}, branch="feature")
    git("push", "-q", "origin", f"{first}:refs/tags/v1.0", cwd=upstream.seed)

    assert await cold_manager.resolve(upstream.url, "feature") == feature
    assert await cold_manager.resolve(upstream.url, "v1.0") == first
    assert await cold_manager.resolve(upstream.url, feature[:12]) == feature
    assert await cold_manager.resolve(upstream.url, "feature", branch=True) == feature
    with pytest.raises(WorkspaceError, match="not found"):
        await cold_manager.resolve(upstream.url, "no-such-branch")
    with pytest.raises(WorkspaceError, match="not found"):
        await cold_manager.resolve(upstream.url, "v1.0", branch=True)  # a tag is not a branch


async def test_discard_leaves_nothing(manager: WorkspaceManager, upstream: Upstream) -> None:
    checkout = await manager.checkout(upstream.url, await manager.resolve(upstream.url), "FF-4", history=1)
    (checkout.path / "scratch.txt").write_text("untracked\n")
    os.chmod(checkout.path / "src", 0o500)  # an agent may leave read-only directories
    await manager.discard(checkout)
    assert not checkout.path.exists()
    assert list(manager.checkouts_dir.iterdir()) == []


async def test_same_name_twice_is_refused_while_live(manager: WorkspaceManager, upstream: Upstream) -> None:
    head = await manager.resolve(upstream.url)
    live = await manager.checkout(upstream.url, head, "FF-5")
    with pytest.raises(WorkspaceError, match="in use"):
        await manager.checkout(upstream.url, head, "FF-5")
    assert (live.path / "README.md").exists()  # the refused call did not touch it


async def test_leftover_of_a_crashed_process_is_replaced(tmp_path: Path, upstream: Upstream) -> None:
    crashed = WorkspaceManager(tmp_path / "agent", BIG_BUDGET, warm_spares=0)
    old = await crashed.checkout(upstream.url, await crashed.resolve(upstream.url), "FF-6")
    (old.path / "half-done.txt").write_text("left behind\n")

    restarted = WorkspaceManager(tmp_path / "agent", BIG_BUDGET, warm_spares=0)
    new = await restarted.checkout(upstream.url, old.sha, "FF-6")

    assert new.path == old.path
    assert not (new.path / "half-done.txt").exists()


async def test_a_branch_pushed_after_a_recent_fetch_is_found(tmp_path: Path, upstream: Upstream) -> None:
    # With a long freshness window the mirror would not fetch; a missing branch forces it.
    workspace = WorkspaceManager(tmp_path / "agent", BIG_BUDGET, warm_spares=0, fetch_max_age_s=3600)
    await workspace.ensure_mirror(upstream.url)
    pr_head = upstream.commit({"PLAN.md": "# plan\n"}, branch="fixfleet/8")
    assert await workspace.branch_head(upstream.url, "fixfleet/8") == pr_head


# -- commits and pushes -------------------------------------------------------------------


async def test_a_commit_is_made_from_data_without_running_anything(
    manager: WorkspaceManager, upstream: Upstream, tmp_path: Path
) -> None:
    base = await manager.resolve(upstream.url)
    mirror = await manager.ensure_mirror(upstream.url)
    canary = tmp_path / "hook-ran"
    hooks = mirror / "hooks"
    hooks.mkdir(exist_ok=True)
    for name in ("pre-commit", "post-commit", "pre-push", "reference-transaction", "post-index-change"):
        (hooks / name).write_text(f"#!/bin/sh\ntouch {canary}\n")
        (hooks / name).chmod(0o755)
    git("config", "filter.evil.clean", f"touch {canary}", cwd=mirror)
    files = {"src/app.py": FileContent(content=b"print('fixed')\n"),
             "bin/tool": FileContent(content=b"#!/bin/sh\necho hi\n", mode="100755"),
             "link": FileContent(content=b"src/app.py", mode="120000"),
             ".gitattributes": FileContent(content=b"* filter=evil\n"),
             "README.md": FileContent(content=None)}

    sha = await manager.commit(upstream.url, base, files, "fix: the bug (FF-1)")
    await manager.push(upstream.url, sha, "fixfleet/FF-1", expected=None)

    assert upstream.sha("fixfleet/FF-1") == sha and not canary.exists()
    assert git("log", "-1", "--format=%s%n%an <%ae>%n%P", sha, cwd=upstream.bare).splitlines() == [
        "fix: the bug (FF-1)", "fixfleet <fixfleet@users.noreply.local>", base]
    listing = git("ls-tree", "-r", sha, cwd=upstream.bare)
    assert "100755 blob" in next(line for line in listing.splitlines() if line.endswith("bin/tool"))
    assert "120000 blob" in next(line for line in listing.splitlines() if line.endswith("link"))
    assert "README.md" not in listing
    assert git("show", f"{sha}:src/app.py", cwd=upstream.bare) == "print('fixed')"
    assert git("rev-parse", "refs/remotes/origin/fixfleet/FF-1", cwd=mirror) == sha


async def test_push_goes_to_fixfleet_branches_only(manager: WorkspaceManager, upstream: Upstream) -> None:
    base = await manager.resolve(upstream.url)
    sha = await manager.commit(upstream.url, base, {"x": FileContent(content=b"x")}, "x")
    for branch in ("main", "release/1.0", "fixfleet"):
        with pytest.raises(WorkspaceError, match="refused to push"):
            await manager.push(upstream.url, sha, branch, expected=base)
    assert upstream.sha("main") == base


async def test_push_refuses_to_lose_someone_elses_commits(cold_manager: WorkspaceManager, upstream: Upstream) -> None:
    base = await cold_manager.resolve(upstream.url)
    ours = await cold_manager.commit(upstream.url, base, {"a.txt": FileContent(content=b"a")}, "one")
    await cold_manager.push(upstream.url, ours, "fixfleet/10", expected=None)
    theirs = upstream.commit({"human.txt": "pushed by a human\n"}, branch="fixfleet/10")
    again = await cold_manager.commit(upstream.url, ours, {"b.txt": FileContent(content=b"b")}, "two")

    with pytest.raises(WorkspaceError, match="push") as lost:
        await cold_manager.push(upstream.url, again, "fixfleet/10", expected=ours)  # the lease no longer holds
    assert not isinstance(lost.value, PermanentError)  # a lost race: the next attempt starts from theirs
    with pytest.raises(WorkspaceError, match="push"):
        await cold_manager.push(upstream.url, again, "fixfleet/10", expected=None)  # it exists now
    assert upstream.sha("fixfleet/10") == theirs


async def test_a_push_the_remote_declines_is_permanent_and_says_why(manager: WorkspaceManager,
                                                                    upstream: Upstream) -> None:
    hook = upstream.bare / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'pushes to this repository are frozen' >&2\nexit 1\n")
    hook.chmod(0o755)
    base = await manager.resolve(upstream.url)
    sha = await manager.commit(upstream.url, base, {"a.txt": FileContent(content=b"a")}, "one")
    with pytest.raises(PushRefused) as refused:
        await manager.push(upstream.url, sha, "fixfleet/11", expected=None)
    assert isinstance(refused.value, PermanentError)
    assert "refused the push" in str(refused.value) and "pushes to this repository are frozen" in str(refused.value)
    assert "pre-receive hook declined" in str(refused.value)
    assert not upstream.has("fixfleet/11")


async def test_a_repository_that_does_not_exist_is_permanent(manager: WorkspaceManager, tmp_path: Path) -> None:
    empty = tmp_path / "empty.git"
    git("init", "-q", "--bare", str(empty))
    for url in ((tmp_path / "nowhere.git").as_uri(), (tmp_path).as_uri(), empty.as_uri()):
        with pytest.raises(RepositoryUnavailable, match="does not exist, is empty") as raised:
            await manager.branch_head(url, "fixfleet/12")  # not "no such branch": no such repository
        assert isinstance(raised.value, PermanentError) and url in str(raised.value)
    with pytest.raises(RepositoryUnavailable):  # a URL git may not be given fails just as surely
        await manager.ensure_mirror("ext::sh -c touch% /tmp/pwned")


# -- eviction -----------------------------------------------------------------------------


async def test_lru_eviction_spares_mirrors_with_live_checkouts(cold_manager: WorkspaceManager, tmp_path: Path) -> None:
    repos = {name: make_upstream(tmp_path / name) for name in ("a", "b", "c")}
    # a: least recently used but holds a live checkout; then b, then c.
    live = await cold_manager.checkout(repos["a"].url, await cold_manager.resolve(repos["a"].url), "FF-11")
    mirror_b = await cold_manager.ensure_mirror(repos["b"].url)
    mirror_c = await cold_manager.ensure_mirror(repos["c"].url)
    mirror_a = await cold_manager.ensure_mirror(repos["a"].url)
    used_long_ago(mirror_a)  # back to oldest

    sizes = {path: disk_usage(path.parent) for path in (mirror_a, mirror_b, mirror_c)}
    cold_manager.disk_budget_bytes = sum(sizes.values()) - 1

    evicted = await cold_manager.enforce_budget()

    assert evicted == [mirror_b]  # a is older but busy
    assert mirror_a.exists() and mirror_c.exists() and not mirror_b.exists()
    assert cold_manager.stats.evictions == 1

    # Once the checkout is gone, a is fair game.
    await cold_manager.discard(live)
    used_long_ago(mirror_a)
    cold_manager.disk_budget_bytes = sizes[mirror_c]
    assert await cold_manager.enforce_budget() == [mirror_a]

    # An evicted repository is simply cloned again on next use.
    await cold_manager.ensure_mirror(repos["b"].url)
    assert cold_manager.stats.clones == 4


async def test_a_checkout_outlives_its_evicted_mirror(tmp_path: Path, upstream: Upstream) -> None:
    before = WorkspaceManager(tmp_path / "agent", BIG_BUDGET, warm_spares=0)
    checkout = await before.checkout(upstream.url, await before.resolve(upstream.url), "FF-12")
    await before.close()  # the agent is gone: its lease with it
    after = WorkspaceManager(tmp_path / "agent", 1, warm_spares=0)  # restart, tiny budget
    assert len(await after.enforce_budget()) == 1
    assert (checkout.path / "src/app.py").read_text() == "print('v1')\n"  # a plain tree needs no mirror


async def test_an_evicted_mirror_takes_its_spares_along(tmp_path: Path, upstream: Upstream) -> None:
    workspace = WorkspaceManager(tmp_path / "agent", BIG_BUDGET)
    try:
        first = await workspace.warm(upstream.url)
        assert (workspace.spares_dir / first.parent.name).is_dir()
        other = make_upstream(tmp_path / "other")
        workspace.disk_budget_bytes = 1  # everything not in use must go
        second = await workspace.warm(other.url)
        assert not first.exists() and not (workspace.spares_dir / first.parent.name).exists()
        assert list(workspace.mirrors_dir.glob("*/git")) == [second]
        assert len(list(workspace.spares_dir.rglob("README.md"))) == 1  # second's spare
    finally:
        await workspace.close()


# -- processes ----------------------------------------------------------------------------


def processes_mentioning(marker: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if marker in cmdline and entry.name != str(os.getpid()):
            found.append(cmdline)
    return found


async def test_close_stops_a_spare_build_and_leaves_no_process(tmp_path: Path) -> None:
    big = make_upstream(tmp_path / "big", {f"d{i // 100}/f{i}.txt": f"{i}\n" for i in range(1500)})
    workspace = WorkspaceManager(tmp_path / "agent", BIG_BUDGET)
    await workspace.ensure_mirror(big.url)  # starts building a spare in the background
    await asyncio.sleep(0.05)
    await asyncio.wait_for(workspace.close(), timeout=10)
    assert processes_mentioning(str(tmp_path / "agent")) == []
    leftover = set(workspace.spares_dir.glob("*/*"))
    complete = {spare.path for state in workspace._states.values() for spare in state.spares}
    assert leftover <= complete  # a half-built spare is removed, a finished one may stay


async def test_a_hung_remote_times_out_and_its_processes_are_killed(tmp_path: Path) -> None:
    import socket

    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers
    port = silent.getsockname()[1]
    workspace = WorkspaceManager(tmp_path / "agent", BIG_BUDGET, network_timeout_s=0.5)
    try:
        with pytest.raises(WorkspaceError, match="timed out"):
            await workspace.ensure_mirror(f"http://127.0.0.1:{port}/acme/api.git")
        assert processes_mentioning(f"127.0.0.1:{port}") == []
        assert not list(workspace.mirrors_dir.glob("*/git"))
    finally:
        silent.close()


async def test_git_gets_no_platform_secret_and_no_inherited_descriptor(
    manager: WorkspaceManager, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:pg-canary@db/x")
    monkeypatch.setenv("GIT_DIR", "/somewhere/else")  # would point git at another repository
    commands = record_commands(manager)
    await manager.ensure_mirror(upstream.url)
    assert commands and all("GITHUB_TOKEN" not in env and "DATABASE_URL" not in env and "GIT_DIR" not in env
                            for _, env in commands)
    assert all(env["GIT_CONFIG_NOSYSTEM"] == "1" and env["GIT_CONFIG_GLOBAL"] == "/dev/null" for _, env in commands)


# -- safety -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["-b", "--upload-pack=touch pwned", "-", "HEAD", "@{-1}", "x y", "x\ny", ""])
async def test_rejects_bad_commits_and_names(manager: WorkspaceManager, upstream: Upstream, name: str) -> None:
    with pytest.raises(WorkspaceError, match="invalid"):
        await manager.checkout(upstream.url, name, "FF-13")
    assert not list(manager.mirrors_dir.glob("*/git"))  # rejected before any fetch


@pytest.mark.parametrize("branch", [
    "-b", "--upload-pack=touch pwned", "-", "a..b", "HEAD", "@{-1}", "x y", "x\ny", "a~1",
    "refs/../x", "x.lock", "", "a:b",
])
async def test_rejects_bad_branch_names(manager: WorkspaceManager, upstream: Upstream, branch: str) -> None:
    with pytest.raises(WorkspaceError, match="invalid"):
        await manager.resolve(upstream.url, branch, branch=True)
    assert not list(manager.mirrors_dir.glob("*/git"))  # rejected before any fetch


@pytest.mark.parametrize("url", [
    "-oProxyCommand=touch pwned", "--upload-pack=touch pwned", "ext::sh -c touch% pwned",
    "fd::3", "ssh://-oProxyCommand=touch%20pwned/repo", "git@-oProxyCommand=x:repo",
    "https://user:hunter2@github.com/acme/api.git", f"https://{TOKEN}@github.com/acme/api.git",
    "ftp://example.com/repo.git", "", "https://github.com/acme/api.git\n",
])
async def test_rejects_bad_urls(manager: WorkspaceManager, url: str) -> None:
    with pytest.raises(WorkspaceError, match="invalid repository URL") as raised:
        await manager.ensure_mirror(url)
    assert "hunter2" not in str(raised.value) and TOKEN not in str(raised.value)
    assert not list(manager.mirrors_dir.glob("*/git"))


@pytest.mark.parametrize("base", ["--output=/tmp/pwned", "-", "main@{1}"])
async def test_rejects_option_like_base(manager: WorkspaceManager, upstream: Upstream, base: str) -> None:
    with pytest.raises(WorkspaceError, match="invalid base"):
        await manager.resolve(upstream.url, base)


async def test_push_rejects_option_like_target(manager: WorkspaceManager, upstream: Upstream) -> None:
    base = await manager.resolve(upstream.url)
    with pytest.raises(WorkspaceError, match="invalid branch"):
        await manager.push(upstream.url, base, "--mirror", expected=None)


async def test_discard_only_touches_its_own_checkouts(
    manager: WorkspaceManager, upstream: Upstream, tmp_path: Path
) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.txt").write_text("keep me\n")
    checkout = await manager.checkout(upstream.url, await manager.resolve(upstream.url), "FF-16")
    for path in (precious, manager.checkouts_dir / ".." / "mirrors", Path("/")):
        with pytest.raises(WorkspaceError, match="not a checkout of this workspace"):
            await manager.discard(checkout.model_copy(update={"path": path}))
    assert (precious / "data.txt").exists() and checkout.path.exists()


async def test_plain_paths_are_accepted(manager: WorkspaceManager, upstream: Upstream) -> None:
    checkout = await manager.checkout(str(upstream.bare), await manager.resolve(str(upstream.bare)), "FF-15")
    assert checkout.repo_url == str(upstream.bare) and (checkout.path / "README.md").exists()


# -- credentials over real HTTPS ----------------------------------------------------------


@dataclass
class GitHttpsServer:
    """`git http-backend` over HTTPS that answers 401 unless the expected token is sent."""

    root: Path
    cert: Path
    token: str
    port: int = 0
    seen_auth: list[str | None] = field(default_factory=list)

    def url(self, repo: str, host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}/{repo}"


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def make_handler(server: GitHttpsServer) -> type[BaseHTTPRequestHandler]:
    expected = "Basic " + base64.b64encode(f"x-access-token:{server.token}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            self.handle_git()

        def do_POST(self) -> None:
            self.handle_git()

        def read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().strip() or b"0", 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def handle_git(self) -> None:
            auth = self.headers.get("Authorization")
            server.seen_auth.append(auth)
            body = self.read_body()
            if auth != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="fake-github"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            path, _, query = self.path.partition("?")
            env = {
                "PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": str(server.root),
                "GIT_HTTP_EXPORT_ALL": "1", "REMOTE_USER": "x-access-token",
                "REMOTE_ADDR": "127.0.0.1", "REQUEST_METHOD": self.command,
                "PATH_INFO": path, "QUERY_STRING": query,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            }
            cgi = subprocess.run(["git", "http-backend"], input=body, env=env,
                                 capture_output=True, check=False)
            head, _, payload = cgi.stdout.partition(b"\r\n\r\n")
            headers = [line.split(":", 1) for line in head.decode().split("\r\n") if ":" in line]
            status = next((int(v.split()[0]) for k, v in headers if k.lower() == "status"), 200)
            self.send_response(status)
            for key, value in headers:
                if key.lower() != "status":
                    self.send_header(key, value.strip())
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


@pytest.fixture
def https_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, upstream: Upstream
) -> Iterator[GitHttpsServer]:
    served = tmp_path / "served"
    served.mkdir()
    git("clone", "-q", "--bare", str(upstream.bare), str(served / "acme" / "api.git"))
    git("config", "http.receivepack", "true", cwd=served / "acme" / "api.git")
    cert, key = self_signed_certificate(tmp_path)
    state = GitHttpsServer(root=served, cert=cert, token=TOKEN)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    state.port = httpd.server_address[1]
    monkeypatch.setenv("GIT_SSL_CAINFO", str(cert))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def record_commands(workspace: WorkspaceManager) -> list[tuple[list[str], dict[str, str]]]:
    """Every git command line and environment the manager uses, for the tests to inspect."""
    seen: list[tuple[list[str], dict[str, str]]] = []
    spawn = workspace.git.spawn

    async def recording(argv: list[str], cwd: Path | None, env: dict[str, str],
                        with_stdin: bool = False) -> asyncio.subprocess.Process:
        seen.append((argv, env))
        return await spawn(argv, cwd, env, with_stdin)

    workspace.git.spawn = recording  # type: ignore[method-assign]
    return seen


def assert_token_nowhere(root: Path, commands: list[tuple[list[str], dict[str, str]]]) -> None:
    for needle in (TOKEN.encode(), BASIC.encode()):
        assert files_containing(root, needle) == []
    for argv, _ in commands:  # command lines are visible to every user (ps)
        assert all(TOKEN not in arg and BASIC not in arg for arg in argv)
    for config in root.rglob("config"):
        assert "extraheader" not in config.read_text().lower()


async def test_https_token_works_and_is_never_written(
    tmp_path: Path, https_server: GitHttpsServer
) -> None:
    workspace = WorkspaceManager(tmp_path / "agent", BIG_BUDGET, SecretStr(TOKEN),
                                 token_hosts=("127.0.0.1",))
    commands = record_commands(workspace)
    try:
        url = https_server.url("acme/api.git")
        mirror = await workspace.warm(url)
        base = await workspace.resolve(url)
        checkout = await workspace.checkout(url, base, "FF-20", history=1)
        sha = await workspace.commit(url, base, {"fix.txt": FileContent(content=b"fixed\n")}, "fix")
        sha = await workspace.push(url, sha, "fixfleet/20", expected=None)

        served = https_server.root / "acme" / "api.git"
        assert git("rev-parse", "refs/heads/fixfleet/20", cwd=served) == sha
        assert "url" not in (mirror / "config").read_text()  # no remote, no credentials in the config
        assert_token_nowhere(tmp_path / "agent", commands)
        assert not files_containing(checkout.path, TOKEN.encode())
        # The token travels only in the environment of commands that talk to the network.
        header = f"Authorization: Basic {BASIC}"
        with_token = [argv for argv, env in commands if header in env.values()]
        assert with_token and all({"fetch", "push"} & set(argv) for argv in with_token)
        assert len(with_token) < len(commands)
    finally:
        await workspace.close()


async def test_https_token_goes_only_to_its_host(
    tmp_path: Path, https_server: GitHttpsServer
) -> None:
    workspace = WorkspaceManager(tmp_path / "agent", BIG_BUDGET, SecretStr(TOKEN),
                                 token_hosts=("127.0.0.1",))
    with pytest.raises(WorkspaceError) as raised:  # same server, another host name
        await workspace.ensure_mirror(https_server.url("acme/api.git", host="localhost"))
    assert https_server.seen_auth and all(auth is None for auth in https_server.seen_auth)
    assert TOKEN not in str(raised.value)


async def test_https_failures_never_reveal_the_token(
    tmp_path: Path, https_server: GitHttpsServer
) -> None:
    workspace = WorkspaceManager(tmp_path / "agent", BIG_BUDGET, SecretStr(TOKEN),
                                 token_hosts=("127.0.0.1",))
    commands = record_commands(workspace)
    failures = []
    for url in (https_server.url("acme/missing.git"),  # 404 behind valid auth
                "https://127.0.0.1:1/acme/api.git"):  # connection refused
        with pytest.raises(WorkspaceError) as raised:
            await workspace.ensure_mirror(url)
        failures.append(raised.value)

    wrong = WorkspaceManager(tmp_path / "wrong", BIG_BUDGET, SecretStr(TOKEN + "x"),
                             token_hosts=("127.0.0.1",))
    with pytest.raises(WorkspaceError) as raised:  # 401: git reports the URL, not the header
        await wrong.ensure_mirror(https_server.url("acme/api.git"))
    failures.append(raised.value)

    for error in failures:
        text = f"{error} {error.stderr} {error!r}"
        assert TOKEN not in text and BASIC not in text
    assert "authentication failed" in failures[-1].message
    missing, refused, unauthorised = failures  # permanent but the connection that may work next time
    assert [isinstance(e, PermanentError) for e in failures] == [True, False, True], failures
    assert "does not exist" in missing.message and not isinstance(refused, RepositoryUnavailable)
    assert isinstance(unauthorised, RepositoryUnavailable)
    assert_token_nowhere(tmp_path, commands)


async def test_checkout_model_round_trips(manager: WorkspaceManager, upstream: Upstream) -> None:
    checkout = await manager.checkout(upstream.url, await manager.resolve(upstream.url), "task-21")
    again = Checkout.model_validate_json(checkout.model_dump_json())  # e.g. through Ray or a DB
    assert again == checkout and "task-21" in checkout.path.name
    await manager.discard(again)
    assert not checkout.path.exists()
