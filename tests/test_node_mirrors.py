"""The node's mirrors, shared by the agents on it: against real git and real processes.

Two agents on one node (two homes, one node cache): the second starts warm. Another process
that holds a mirror (a checkout out) keeps it through an eviction until that process dies; two
processes cloning the same repository at once make one mirror, not two.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fixfleet.workspace.env_cache import EnvCache
from fixfleet.workspace.mirrors import WorkspaceManager
from tests.gitrepos import Upstream, isolated_git, make_upstream, upstream  # noqa: F401 - the fixtures

BIG_BUDGET = 10**12
REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("isolated_git")  # every test: its own git config


def agent_process(cache: Path, home: Path, url: str, name: str) -> subprocess.Popen[str]:
    """Another agent process on the node: it checks out `url` (holding its mirror while the
    checkout is out), says "ready" and waits to be killed."""
    script = textwrap.dedent(f"""
        import asyncio, sys
        from pathlib import Path
        from fixfleet.workspace.env_cache import EnvCache
        from fixfleet.workspace.mirrors import WorkspaceManager

        async def main():
            ws = WorkspaceManager(Path({str(home)!r}), cache=EnvCache(Path({str(cache)!r})), warm_spares=0)
            sha = await ws.resolve({url!r})
            await ws.checkout({url!r}, sha, {name!r})
            print("ready", ws.stats.clones, flush=True)
            await asyncio.sleep(3600)

        asyncio.run(main())
    """)
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)


async def test_a_new_agent_on_a_warm_node_starts_warm(tmp_path: Path, upstream: Upstream) -> None:
    cache = EnvCache(tmp_path / "node-cache", max_bytes=BIG_BUDGET)
    first = WorkspaceManager(tmp_path / "agents/planner-a", cache=cache, holder="planner-a", warm_spares=0)
    second = WorkspaceManager(tmp_path / "agents/executor-b", cache=cache, holder="executor-b", warm_spares=0)
    try:
        sha = await first.resolve(upstream.url)
        mirror = await first.ensure_mirror(upstream.url)
        objects = os.stat(mirror / "objects").st_ino
        assert first.stats.clones == 1

        checkout = await second.checkout(upstream.url, await second.resolve(upstream.url), "FF-1")

        assert second.stats.clones == 0  # it fetched into the node's mirror; it did not clone again
        assert os.stat(mirror / "objects").st_ino == objects
        assert checkout.sha == sha and (checkout.path / "src/app.py").read_text() == "print('v1')\n"
        assert not (tmp_path / "agents/executor-b/mirrors").exists()  # no mirror of its own
        assert checkout.path.is_relative_to(tmp_path / "agents/executor-b")  # checkouts stay the agent's
    finally:
        await first.close()
        await second.close()


async def test_a_mirror_another_process_holds_survives_eviction_until_it_dies(
        tmp_path: Path, upstream: Upstream) -> None:
    other = make_upstream(tmp_path / "other")
    root = tmp_path / "node-cache"
    holder = agent_process(root, tmp_path / "agents/executor-x", upstream.url, "FF-2")
    try:
        assert (await asyncio.to_thread(holder.stdout.readline)).startswith("ready")  # type: ignore[union-attr]
        here = WorkspaceManager(tmp_path / "agents/planner-y", cache=EnvCache(root, max_bytes=BIG_BUDGET),
                                warm_spares=0)
        mine = await here.ensure_mirror(other.url)
        held = await here.ensure_mirror(upstream.url)  # leased only while in use here: idle now
        (held.parent / "last_used").touch()
        os.utime(held.parent / "last_used", (1, 1))  # the least recently used on the node

        here.disk_budget_bytes = 1  # everything idle must go
        evicted = await here.enforce_budget()

        assert evicted == [mine]  # the other process still holds its checkout's mirror
        assert held.is_dir() and not mine.exists()
    finally:
        holder.kill()
        holder.wait()
    # Its process is gone, however it died: its lease went with it.
    assert await here.enforce_budget() == [held]
    assert not held.exists()
    await here.close()


async def test_two_processes_cloning_at_once_make_one_mirror(tmp_path: Path, upstream: Upstream) -> None:
    root = tmp_path / "node-cache"
    agents = [agent_process(root, tmp_path / f"agents/a{i}", upstream.url, f"FF-{i}") for i in range(3)]
    try:
        lines = [await asyncio.to_thread(agent.stdout.readline) for agent in agents]  # type: ignore[union-attr]
    finally:
        for agent in agents:
            agent.kill()
            agent.wait()
    assert all(line.startswith("ready") for line in lines), lines
    assert sorted(int(line.split()[1]) for line in lines) == [0, 0, 1]  # one cloned, the others fetched
    assert len(list((root / "mirrors").glob("*/git"))) == 1
    assert all((tmp_path / f"agents/a{i}/checkouts").iterdir() for i in range(3))


async def test_mirrors_and_environments_share_one_budget_least_recently_used_first(
        tmp_path: Path, upstream: Upstream) -> None:
    cache = EnvCache(tmp_path / "node-cache", max_bytes=BIG_BUDGET)
    workspace = WorkspaceManager(tmp_path / "agents/a", cache=cache, warm_spares=0)
    mirror = await workspace.ensure_mirror(upstream.url)
    env = cache.entry(mirror.parent.name, "0123abcd")  # an environment as a build leaves it
    (env.env / "lib").mkdir(parents=True)
    (env.env / "lib/site.bin").write_bytes(os.urandom(300_000))
    env.meta_file.write_text('{"bytes": 320000}')
    env.touch()
    os.utime(mirror.parent / "last_used", (1000, 1000))  # the mirror was used longer ago
    kinds = {entry.kind for entry in cache.entries()}
    assert kinds == {"env", "mirror"}

    cache.max_bytes = 330_000  # room for the environment alone
    assert [entry.kind for entry in cache.evict()] == ["mirror"]
    assert env.ready and not mirror.exists()
    await workspace.close()


async def test_loose_objects_left_by_commits_are_packed_by_a_later_fetch(
        tmp_path: Path, upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mirror lives for months: what every task's commits leave loose does not pile up."""
    from fixfleet.workspace import mirrors
    from fixfleet.workspace.mirrors import FileContent

    monkeypatch.setattr(mirrors, "LOOSE_OBJECTS_MAX", 40)  # 2000 in earnest: fewer objects, same path
    workspace = WorkspaceManager(tmp_path / "agents/a", cache=EnvCache(tmp_path / "node-cache"), warm_spares=0)
    base = await workspace.resolve(upstream.url)
    mirror = await workspace.ensure_mirror(upstream.url)
    for task in range(3):  # what tasks leave: commits made from data, pushed to their branches
        files = {f"src/f{task}_{n}.py": FileContent(content=f"x = {task * 100 + n}\n".encode()) for n in range(20)}
        sha = await workspace.commit(upstream.url, base, files, f"fix: task {task}")
        await workspace.push(upstream.url, sha, f"fixfleet/FF-{task}", expected=None)
    loose = lambda: sum(1 for p in (mirror / "objects").glob("[0-9a-f][0-9a-f]/*"))  # noqa: E731
    assert loose() > 40

    await workspace.ensure_mirror(upstream.url)  # the fetch packs them, in the foreground

    assert loose() < 10 and workspace.stats.gcs == 1
    assert list((mirror / "objects/pack").glob("*.pack"))
    assert processes_of(mirror) == []  # nothing detached stays behind
    await workspace.close()


def processes_of(mirror: Path) -> list[int]:
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if process.info["cwd"] and Path(process.info["cwd"]).is_relative_to(mirror):
                found.append(process.pid)
        except (psutil.Error, ValueError):
            continue
    return found
