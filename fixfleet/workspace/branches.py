"""A task's branch on its repository's remote, deleted with git alone: on a plain git remote,
where no forge API can, a rejected or cancelled task's `fixfleet/*` branch is removed this way
(fixfleet/loops.py).

Git runs through the one hardened `Git` (fixfleet/workspace/git.py), in a scratch bare
repository of its own (`git push` needs one; nothing else is in it, and no agent can reach it).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fixfleet.workspace.git import Git, GitError
from fixfleet.workspace.mirrors import validate_ref_text, validate_url


async def delete_remote_branch(git: Git, url: str, branch: str, *, prefix: str = "fixfleet/") -> bool:
    """Delete `branch` on the remote at `url`, only if it is one of fixfleet's (`prefix`) and
    only as it is now (a push that lands meanwhile is not lost: the delete is refused then).
    True when it was deleted, False when it was not there (deleted already)."""
    url = validate_url(url)
    validate_ref_text(branch, "branch name")
    if not branch.startswith(prefix):
        raise GitError(f"refused to delete {branch!r}: only {prefix}* branches are fixfleet's")
    await git.run("check-ref-format", "--branch", branch)
    ref = f"refs/heads/{branch}"
    listed = await git.run("ls-remote", "--heads", "--", url, ref, url=url)
    head = next((line.split()[0] for line in listed.splitlines() if line.split()[1:] == [ref]), None)
    if head is None:
        return False
    with tempfile.TemporaryDirectory(prefix="fixfleet-branch-") as scratch:
        await git.run("init", "--quiet", "--bare", scratch)
        await git.run("push", "--porcelain", "--no-verify", f"--force-with-lease={ref}:{head}", "--", url,
                      f":{ref}", cwd=Path(scratch), url=url)
    return True
