"""A stand-in for a SaaS MCP server (GitHub's): stdio, needs its token in the environment.

    python -m tests.fakes.mcp_server     # with GITHUB_PERSONAL_ACCESS_TOKEN set

`get_issue` answers only when the token is there, and never says it; the tests check that the
planner reached it through the platform's bridge while the token stayed outside the sandbox.
"""

from __future__ import annotations

import os

from mcp.server.mcpserver import MCPServer

server = MCPServer("ghstub")


@server.tool()
def get_issue(number: int) -> str:
    """Read a GitHub issue of the repository."""
    if not os.environ.get("GITHUB_PERSONAL_ACCESS_TOKEN"):
        return "error: no token configured"
    return f"issue #{number}: add(2, 3) returns -1 (authenticated: yes, pid {os.getpid()})"


if __name__ == "__main__":
    server.run()
