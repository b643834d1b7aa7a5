"""How fast a Claude Code session starts: `python -m bench.runtime [--sessions 20]`.

Runs one-turn sessions of the real claude CLI against the scripted model server, one after
the other on one warm ClaudeSessions (as an agent actor would), and measures from `run()` to the
first request at the model server, and to the result. Goal: p95 to first request <= 1.0 s.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from actors.credentials import TokenManager
from actors.session import ClaudeSessions
from fixfleet.workspace.sandbox import Sandbox
from actors.session_models import SessionLimits, SessionRequest
from fixfleet.config import Settings
from fixfleet.replay import ReplayServer

LIMITS = SessionLimits(max_turns=5, max_budget_usd=1.0, timeout_s=60)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: with 20 samples, p95 is the 19th smallest."""
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def make_worktree(root: Path) -> Path:
    tree = root / "tree"
    tree.mkdir()
    (tree / "README.md").write_text("bench\n")
    subprocess.run(["git", "init", "-q"], cwd=tree, check=True)
    return tree


async def measure(sessions: int, root: Path) -> tuple[list[float], list[float]]:
    template = root / "mcp.json"
    template.write_text('{"mcpServers": {}}')
    tree = make_worktree(root)
    first_request, result = [], []
    with ReplayServer("one_turn") as server:
        settings = Settings(_env_file=None, anthropic_base_url=server.url,
                            anthropic_api_key="sk-ant-api03-bench-0000000000")
        claude = ClaudeSessions(root / "agent", settings, TokenManager(settings), sandbox=Sandbox(root / "sandbox"),
                               model="claude-sonnet-4-5", mcp_template=template)
        request = SessionRequest(role="executor", worktree=tree, prompt="Say hello.",
                                 limits=LIMITS, require_structured_output=False)
        for _ in range(sessions):
            server.clear()
            started = time.monotonic()
            outcome = await claude.run(request)
            finished = time.monotonic()
            if outcome.outcome != "success" or server.first_request_at() is None:
                raise SystemExit(f"session failed: {outcome.subtype}: {outcome.error}")
            first_request.append(server.first_request_at() - started)  # type: ignore[operator]
            result.append(finished - started)
        await claude.close()
    return first_request, result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.runtime")
    parser.add_argument("--sessions", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as directory:
        first_request, result = asyncio.run(measure(args.sessions, Path(directory)))
    figures = {
        "first_request_p50_s": round(statistics.median(first_request), 3),
        "first_request_p95_s": round(percentile(first_request, 0.95), 3),
        "result_p95_s": round(percentile(result, 0.95), 3),
    }
    verdict = "meets" if figures["first_request_p95_s"] <= 1.0 else "misses"
    print(f"{args.sessions} one-turn sessions: first request p50 {figures['first_request_p50_s']}s "
          f"p95 {figures['first_request_p95_s']}s ({verdict} the 1.0s goal); result p50 "
          f"{statistics.median(result):.3f}s p95 {figures['result_p95_s']}s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
