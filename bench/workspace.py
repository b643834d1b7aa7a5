"""Time to a ready checkout from a warm mirror vs a fresh clone: `python -m bench.workspace`.

The repository (20,000 files, 2,000 commits by default) is generated with `git fast-import`
and cached under the temp directory, keyed by its parameters, so reruns skip it. Then:

- clone: `git clone` through git's transport (a `file://` URL, so git packs and sends
  objects as it would over the network, instead of hardlinking a local path);
- worktree: `WorkspaceManager.resolve` + `checkout` on a warm mirror, as an executor runs
  them for each task: validate, fetch (nothing new), resolve the base, take the spare the
  manager built in the background, cut it loose from the mirror and give it the agent's
  private one-commit git repository;
- cold worktree (for reference): the same with no spare, i.e. a `git worktree add`.

Each figure is the median of `--runs` runs. Goal: worktree >= 20x faster than the clone
and under 1 s. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fixfleet.workspace.mirrors import WorkspaceManager

GENERATOR_VERSION = 1  # bump when the generated history changes
EDITS_PER_COMMIT = 10
WORDS = ("value result item count index total buffer record entry config state handle "
         "request response client server cache queue task event user order price amount "
         "name path data node key token limit offset batch stream parser logger").split()
# On these VMs (ext4 without a journal) creating files gets several times slower for
# minutes after many were deleted (the inode allocator skips recently freed inodes), so
# the runs that create 20,000 files (clone, cold worktree add) are interleaved: both see
# the same disk. A spare handout creates no files and is unaffected. Every timed step
# starts on a quiet disk (`sync`, untimed): otherwise the writeback of the previous step's
# 100 MB slows whatever comes next, and the order of steps would decide the figures.


# -- the generated repository ---------------------------------------------------------------


def function_source(rng: random.Random) -> str:
    name, arg, default = "_".join(rng.sample(WORDS, 2)), *rng.sample(WORDS, 2)
    return (f"def {name}_{rng.randrange(10**6)}({arg}, {default}=None):\n"
            f'    """Return the {arg} for {default}."""\n'
            f"    if {default} is None:\n        {default} = {rng.randrange(1000)}\n"
            f"    items = [{arg} * i for i in range({default})]\n"
            f"    return sum(items) + {rng.randrange(10**6)}\n")


def module_source(rng: random.Random) -> str:
    return "\n\n".join(function_source(rng) for _ in range(rng.randint(3, 10)))


def edit(rng: random.Random, source: str) -> str:
    """Replace one function: a small change, as most commits are."""
    functions = source.split("\n\n")
    functions[rng.randrange(len(functions))] = function_source(rng)
    return "\n\n".join(functions)


def file_path(number: int) -> str:
    return f"src/pkg{number % 50:02d}/mod{(number // 50) % 20:02d}/file_{number:05d}.py"


class FastImport:
    """Streams blobs and commits into `git fast-import` (one process, no working tree)."""

    def __init__(self, repo: Path):
        self.process = subprocess.Popen(["git", "fast-import", "--quiet"], cwd=repo,
                                        stdin=subprocess.PIPE)
        self.marks = 0

    def blob(self, text: str) -> int:
        data = text.encode()
        self.marks += 1
        self.process.stdin.write(b"blob\nmark :%d\ndata %d\n%s\n" % (self.marks, len(data), data))
        return self.marks

    def commit(self, number: int, changes: list[tuple[str, int]]) -> None:
        message = f"change {number}\n".encode()
        when = 1_600_000_000 + number * 3600
        self.process.stdin.write(
            b"commit refs/heads/main\ncommitter Bench <bench@example.com> %d +0000\n"
            b"data %d\n%s" % (when, len(message), message))
        for path, mark in changes:
            self.process.stdin.write(b"M 100644 :%d %s\n" % (mark, path.encode()))
        self.process.stdin.write(b"\n")

    def close(self) -> None:
        self.process.stdin.close()
        if self.process.wait() != 0:
            raise SystemExit("git fast-import failed")


def generate(repo: Path, files: int, commits: int) -> None:
    """Half the files in the first commit; each later one adds a few and edits ten."""
    rng = random.Random(f"{files}/{commits}")
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(repo)], check=True)
    importer, sources = FastImport(repo), {}
    initial = files // 2
    added_per_commit = (files - initial) // max(commits - 1, 1)
    for number in range(commits):
        count = initial if number == 0 else added_per_commit
        if number == commits - 1:
            count = files - len(sources)
        changes = []
        for _ in range(count):
            path = file_path(len(sources))
            sources[path] = module_source(rng)
            changes.append((path, importer.blob(sources[path])))
        if number:
            for path in rng.sample(sorted(sources), min(EDITS_PER_COMMIT, len(sources))):
                sources[path] = edit(rng, sources[path])
                changes.append((path, importer.blob(sources[path])))
        importer.commit(number, changes)
    importer.close()
    # A forge's copy is packed and gc'ed; fast-import's packs are not.
    subprocess.run(["git", "gc", "--quiet", "--prune=now"], cwd=repo, check=True)


def cache_dir() -> Path:
    return Path(os.environ.get("FIXFLEET_BENCH_CACHE") or tempfile.gettempdir()) / "fixfleet-bench"


def cached_repository(files: int, commits: int) -> Path:
    repo = cache_dir() / f"repo-{files}f-{commits}c-v{GENERATOR_VERSION}.git"
    if (repo / "fixfleet-complete").exists():
        return repo
    partial = repo.with_name(f"{repo.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    started = time.monotonic()
    generate(partial, files, commits)
    (partial / "fixfleet-complete").write_text("")
    shutil.rmtree(repo, ignore_errors=True)
    os.rename(partial, repo)
    print(f"generated {files} files / {commits} commits in {time.monotonic() - started:.1f}s "
          f"(cached at {repo})")
    return repo


# -- measurements ---------------------------------------------------------------------------


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def clone(url: str, destination: Path) -> None:
    subprocess.run(["git", "clone", "-q", url, str(destination)], check=True)


async def timed_worktree(manager: WorkspaceManager, url: str, branch: str) -> tuple[float, Path]:
    started = time.perf_counter()
    sha = await manager.resolve(url)
    checkout = await manager.checkout(url, sha, branch, branch=branch)
    return time.perf_counter() - started, checkout.path


def check_ready(path: Path, url: str) -> None:
    """A real, complete checkout: every file present and `git status` clean."""
    status = subprocess.run(["git", "status", "--porcelain"], cwd=path, check=True,
                            capture_output=True, text=True).stdout
    tracked = subprocess.run(["git", "ls-files"], cwd=path, check=True, capture_output=True,
                             text=True).stdout.splitlines()
    missing = [name for name in tracked[:: max(len(tracked) // 200, 1)]
               if not (path / name).is_file()]
    if status or missing:
        raise SystemExit(f"worktree from {url} not ready: status {status[:200]!r}, "
                         f"missing {missing[:5]}")


def time_status(path: Path) -> float:
    return timed(lambda: subprocess.run(["git", "status", "--porcelain"], cwd=path, check=True,
                                        capture_output=True))


async def measure(repo: Path, work: Path, runs: int) -> dict[str, list[float]]:
    url = repo.as_uri()
    warm = WorkspaceManager(work / "warm", disk_budget_bytes=50 * 2**30, history=1)  # as the executor's
    cold = WorkspaceManager(work / "cold", disk_budget_bytes=50 * 2**30, warm_spares=0, history=1)
    figures: dict[str, list[float]] = {
        "clone_s": [], "worktree_s": [], "cold_worktree_s": [], "first_status_s": []}
    try:
        figures["mirror_s"] = [await timed_async(warm.ensure_mirror(url))]
        await cold.ensure_mirror(url)
        for run in range(runs):
            await warm.warm(url)  # the spare taken by the previous run is rebuilt
            os.sync()
            figures["clone_s"].append(timed(lambda: clone(url, work / f"clone-{run}")))
            os.sync()
            cold_s, _ = await timed_worktree(cold, url, f"bench/cold-{run}")
            figures["cold_worktree_s"].append(cold_s)
            os.sync()
            warm_s, path = await timed_worktree(warm, url, f"bench/task-{run}")
            figures["worktree_s"].append(warm_s)
            figures["first_status_s"].append(time_status(path))  # refill running meanwhile
            check_ready(path, url)
        if warm.stats.spare_hits != runs:
            raise SystemExit(f"expected every warm run to take a spare: {warm.stats}")
    finally:
        await warm.close()
        await cold.close()
    return figures


async def timed_async(awaitable: object) -> float:
    started = time.perf_counter()
    await awaitable  # type: ignore[misc]
    return time.perf_counter() - started


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.4f}s (min {min(values):.4f}, max {max(values):.4f})"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.workspace")
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--commits", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    repo = cached_repository(args.files, args.commits)
    with tempfile.TemporaryDirectory(prefix="bench-workspace-", dir=cache_dir()) as directory:
        figures = asyncio.run(measure(repo, Path(directory), args.runs))

    clone_s = statistics.median(figures["clone_s"])
    worktree_s = statistics.median(figures["worktree_s"])
    ratio = clone_s / worktree_s
    verdict = "meets" if ratio >= 20 and worktree_s < 1.0 else "misses"
    print(f"repository: {args.files} files, {args.commits} commits; {args.runs} runs each")
    print(f"fresh git clone (file://):                 {spread(figures['clone_s'])}")
    print(f"ready worktree, warm mirror (fetch, spare): {spread(figures['worktree_s'])}")
    print(f"  without a spare (cold worktree add):     {spread(figures['cold_worktree_s'])}")
    print(f"  first git status (spare refill running): {spread(figures['first_status_s'])}")
    print(f"  first mirror clone (once per repo):      {figures['mirror_s'][0]:.3f}s")
    print(f"ratio {ratio:.1f}x ({verdict} the goal: >= 20x and < 1 s)")
    if max(figures["clone_s"]) > 1.5 * min(figures["clone_s"]):
        print("warning: clone times disagree by more than 1.5x: the disk was disturbed "
              "(recent mass deletes?), which slows clones and flatters the ratio; rerun later")
    print(json.dumps({"clone_s": round(clone_s, 3), "worktree_s": round(worktree_s, 4),
                      "ratio": round(ratio, 1)}))


if __name__ == "__main__":
    main()
