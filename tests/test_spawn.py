"""Children inherit nothing of the platform's process: under uvloop (Ray's async actors), whose
spawning ignores close_fds, neither git nor a sandboxed command sees the parent's descriptors."""

from __future__ import annotations

import os
from pathlib import Path

import uvloop

from fixfleet.workspace.git import Git
from fixfleet.workspace.sandbox import Sandbox, SandboxSpec

LIST_FDS = "ls /proc/self/fd"


def open_descriptors(output: bytes | str) -> set[int]:
    text = output.decode() if isinstance(output, bytes) else output
    return {int(word) for word in text.split() if word.isdigit()}


def test_git_and_the_sandbox_inherit_no_descriptor_under_uvloop(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)  # as a socket of the actor's Redis connection may be

    async def children() -> tuple[set[int], set[int]]:
        git_child = await Git.spawn(["sh", "-c", LIST_FDS], None, {"PATH": "/usr/bin:/bin"})
        out, _ = await git_child.communicate()
        (tmp_path / "tree").mkdir()
        sandboxed = await Sandbox(tmp_path / "state").run(SandboxSpec(workspace=tmp_path / "tree"),
                                                          ["sh", "-c", LIST_FDS], timeout_s=30)
        return open_descriptors(out), open_descriptors(sandboxed.output_tail)

    try:
        git_fds, sandbox_fds = uvloop.run(children())
    finally:
        os.close(read_end)
        os.close(write_end)
    assert write_end not in git_fds and write_end not in sandbox_fds
    assert git_fds <= {0, 1, 2, 3} and sandbox_fds <= {0, 1, 2, 3}  # 3: ls reading /proc/self/fd
