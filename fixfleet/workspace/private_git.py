"""The agent's own git repository inside its checkout: shallow, nothing of the mirror's.

An agent runs `git status`, `git diff`, `git log` and `git blame` as it always does; its checkout
gets a repository holding the last commits of the branch it works on, and nothing else: no
remote, none of the mirror's config or refs. The platform builds it in a directory of its own
and moves it in before anyone runs in the checkout; it never runs git there afterwards (the
change is read from the files, fixfleet/workspace/changes.py), so whatever the agent does to
it (hooks, config, commits) stays its own.

Packing a large tree takes a second or two, so spares carry one built ahead for their commit;
a checkout of a commit one step further (the plan's commit on top of the default branch) only
adds that commit's objects.
"""

from __future__ import annotations

import os
from pathlib import Path

from fixfleet.workspace.git import Git


async def build(git: Git, mirror: Path, staging: Path, sha: str, depth: int, *, background: bool = False) -> None:
    """A bare repository at `staging` with the last `depth` commits of `sha`, marked shallow."""
    await git.run("init", "--quiet", "--bare", "--", str(staging), background=background)
    objects = await git.run_bytes("rev-list", "--objects", f"--max-count={depth}", "--end-of-options", sha,
                                  cwd=mirror, background=background)
    await _pack(git, mirror, staging, objects, background)
    parents = await git.run("rev-list", "--parents", f"--max-count={depth}", "--end-of-options", sha, cwd=mirror,
                            background=background)
    kept = {line.split()[0] for line in parents.splitlines()}
    shallow = [line.split()[0] for line in parents.splitlines() if set(line.split()[1:]) - kept]
    (staging / "shallow").write_text("".join(f"{commit}\n" for commit in shallow))


async def extend(git: Git, mirror: Path, staging: Path, built_at: str, sha: str) -> bool:
    """Add `sha` to a repository built at `built_at`, when `built_at` is its only parent (the plan's
    commit on the branch a spare was made from). False: not that case, build afresh."""
    if sha == built_at:
        return True
    parents = (await git.run("rev-list", "--parents", "--max-count=1", "--end-of-options", sha, cwd=mirror)).split()
    if parents[1:] != [built_at]:
        return False
    objects = await git.run_bytes("rev-list", "--objects", "--end-of-options", sha, f"^{built_at}", cwd=mirror)
    await _pack(git, mirror, staging, objects, False)
    return True


def install(staging: Path, checkout: Path, sha: str, branch: str | None, index: bytes) -> None:
    """Point the repository at `sha` (on `branch`), give it the checkout's index (so `git status`
    is clean at once) and move it in as the checkout's `.git`."""
    head = f"refs/heads/{branch}" if branch else None
    if head:
        (staging / head).parent.mkdir(parents=True, exist_ok=True)
        (staging / head).write_text(f"{sha}\n")
    (staging / "HEAD").write_text(f"ref: {head}\n" if head else f"{sha}\n")
    (staging / "index").write_bytes(index)
    config = (staging / "config").read_text().replace("bare = true", "bare = false")
    (staging / "config").write_text(config)
    os.rename(staging, checkout / ".git")


async def _pack(git: Git, mirror: Path, staging: Path, objects: bytes, background: bool) -> None:
    await git.run("pack-objects", "--quiet", "--window=0", "--depth=0", "--",
                  str(staging / "objects" / "pack" / "pack"), cwd=mirror, stdin=objects, background=background)
