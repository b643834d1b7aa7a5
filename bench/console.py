"""The console's figures: `python -m bench.console [--only recording] [--turns 40]`.

- recording: what recording a session costs it. One scripted session (the real claude CLI in its
  sandbox against the scripted model: `--turns` turns, each a line of text and a Bash call whose
  output is a few KB) on one warm runner, run once without recording and once with it (the
  session's row, every message redacted and written by the background writer into Postgres),
  after a warm-up run. Prints both wall times and the ratio; goal: recording adds under 5 %.
  One run of each by default (`--pairs N` alternates N pairs and averages): on a shared machine,
  read the ratio with the noise of single runs in mind.
- recording_loop: the part of that cost the session's own event loop pays per message
  (redaction, the cut, numbering, queueing), for messages like the session's; the batches are
  written beside it. A steady figure where the wall times are noisy.

Each measurement is a function returning its figures; the last line printed is one JSON object
with every measurement's figures under its name. DATABASE_URL names the Postgres server (else the
embedded one); the measurements work in a throwaway database, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from actors.credentials import TokenManager
from actors.runner import SessionRunner
from actors.session_models import SessionLimits, SessionRequest
from fixfleet.config import Settings
from fixfleet.models import NewTask
from fixfleet.replay import ReplayServer
from fixfleet.scratch import create_database, drop_database
from fixfleet.sessions import SessionOwner
from fixfleet.store import Store
from fixfleet.workspace.sandbox import Sandbox

Measurement = Callable[[str, argparse.Namespace], Awaitable[dict[str, Any]]]


# --- recording overhead ---------------------------------------------------------------------------


def scripted_session(turns: int) -> dict[str, Any]:
    """A session of `turns` tool calls, each answered with about 3 KB of output."""
    turn = {"content": [{"text": "Looking at the numbers the last command printed."},
                        {"tool_use": {"name": "Bash", "input": {"command": "seq 100000 100500",
                                                                "description": "Print some numbers"}}}]}
    return {"name": "bench-recording", "model": "claude-sonnet-4-5", "turns": [turn] * turns,
            "final_text": "Done looking."}


async def recording_overhead(database_url: str, args: argparse.Namespace) -> dict[str, Any]:
    store = await Store.connect(database_url, max_size=4)
    with tempfile.TemporaryDirectory(prefix="bench-console-") as directory, \
            ReplayServer(scripted_session(args.turns)) as server:
        root = Path(directory)
        tree = root / "tree"
        tree.mkdir()
        await asyncio.to_thread(subprocess.run, ["git", "init", "-q"], cwd=tree, check=True)
        (root / "mcp.json").write_text('{"mcpServers": {}}')
        settings = Settings(_env_file=None, anthropic_base_url=server.url, anthropic_api_key="sk-ant-api03-bench-00000000")
        task, _ = await store.create_task(NewTask(repo=f"file://{tree}", title="bench"))
        request = SessionRequest(role="executor", worktree=tree, prompt="Look at some numbers.",
                                 limits=SessionLimits(max_turns=args.turns + 5, max_budget_usd=50.0, timeout_s=600),
                                 require_structured_output=False)
        recorded = request.model_copy(update={"owner": SessionOwner(task_id=task.id, attempt=1, agent="bench")})
        # One warm runner for both: a request without an owner is not recorded.
        runner = SessionRunner(root / "agent", settings, TokenManager(settings), sandbox=Sandbox(root / "sandbox"),
                               model="claude-sonnet-4-5", mcp_template=root / "mcp.json", records=store)
        runs: dict[str, list[float]] = {"without": [], "with": []}
        try:
            await runner.run(request)  # warm-up: the CLI's files in the page cache, the model proxy up
            for pair in range(args.pairs):  # alternating, so that a drift of the machine hits both
                for name in ("without", "with") if pair % 2 == 0 else ("with", "without"):
                    server.clear()
                    started = time.monotonic()
                    result = await runner.run(recorded if name == "with" else request)
                    runs[name].append(time.monotonic() - started)
                    if result.outcome != "success":
                        raise SystemExit(f"the {name} session failed: {result.subtype}: {result.error}")
                    if name == "with":
                        record = await store.get_session(result.record_id)  # type: ignore[arg-type]
        finally:
            await runner.close()
            await store.close()
    seconds = {name: sum(times) / len(times) for name, times in runs.items()}
    ratio = seconds["with"] / seconds["without"]
    each = f" (each the mean of {args.pairs} runs)" if args.pairs > 1 else ""
    print(f"recording: a {args.turns}-turn session took {seconds['without']:.2f} s without recording and "
          f"{seconds['with']:.2f} s with it{each}, {record.messages} messages written, {record.dropped} dropped: "
          f"x{ratio:.3f}, {'meets' if ratio < 1.05 else 'misses'} the goal of under 5 % more")
    return {"turns": args.turns, "pairs": args.pairs, "messages": record.messages, "dropped": record.dropped,
            "without_s": round(seconds["without"], 3), "with_s": round(seconds["with"], 3), "ratio": round(ratio, 4)}


async def recording_loop_cost(database_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """What recording asks of the session's own event loop per message (redacting, cutting,
    numbering, queueing: `Transcriber.bodies` + `SessionRecorder.add`), for messages like the
    scripted session's; the writing itself runs beside it. Steadier than the wall times on a busy machine."""
    from claude_agent_sdk import (
        AssistantMessage,
        TextBlock,
        ToolResultBlock,
        ToolUseBlock,
        UserMessage,
    )

    from actors.recorder import SessionRecorder
    from actors.transcript import Transcriber
    from fixfleet.redact import Redactor
    from fixfleet.sessions import NewSession, SessionEnd, SessionStatus

    output = "\n".join(str(n) for n in range(100000, 100501))
    messages = [AssistantMessage(model="m", content=[TextBlock("Looking at the numbers the last command printed."),
                                                     ToolUseBlock(id=f"tu_{n}", name="Bash", input={"command": "seq"})])
                if n % 2 == 0 else UserMessage(content=[ToolResultBlock(tool_use_id=f"tu_{n}", content=output)])
                for n in range(args.messages)]
    store = await Store.connect(database_url, max_size=4)
    try:
        task, _ = await store.create_task(NewTask(repo="file:///bench", title="bench"))
        transcriber = Transcriber(Redactor.from_settings(Settings(_env_file=None), ["sk-ant-api03-bench-00000000"]),
                                  Settings(_env_file=None).session_message_max_bytes)
        recorder = SessionRecorder(store, NewSession(task_id=task.id, attempt=1, agent="bench", role="executor",
                                                     cli_session_id=f"bench-{time.time_ns()}"), buffer_max=10 * args.messages)
        await recorder.open()
        on_loop = 0.0
        for message in messages:
            started = time.perf_counter()
            recorder.add(transcriber.bodies(message))
            on_loop += time.perf_counter() - started
            await asyncio.sleep(0)  # the writer runs between messages, as it does in a session
        written = time.perf_counter()
        record = await recorder.close(SessionEnd(status=SessionStatus.ENDED, outcome="success"))
        drained = time.perf_counter() - written
    finally:
        await store.close()
    per_message_us = on_loop / record.messages * 1e6 if record else 0.0
    print(f"recording on the session's loop: {per_message_us:.0f} µs per message ({record.messages if record else 0} "
          f"messages, {len(output)} B tool results); what was left was written {drained * 1000:.0f} ms after the end")
    return {"messages": record.messages if record else 0, "loop_us_per_message": round(per_message_us, 1),
            "drain_after_end_ms": round(drained * 1000, 1)}


MEASUREMENTS: dict[str, Measurement] = {"recording": recording_overhead, "recording_loop": recording_loop_cost}


# --- the run ------------------------------------------------------------------------------------


def server_url(stack: ExitStack) -> str:
    """DATABASE_URL's server, else the embedded one (stopped when `stack` closes)."""
    from fixfleet.embedded import EmbeddedServers
    from fixfleet.services import resolve_urls

    settings = Settings()
    embedded = EmbeddedServers(settings.home)
    stack.callback(embedded.stop)
    return resolve_urls(settings, embedded)[0]


async def measure(names: list[str], server: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    database_url = await create_database(server, "fixfleet_bench")
    try:
        return {name: await MEASUREMENTS[name](database_url, args) for name in names}
    finally:
        await drop_database(server, database_url)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=sorted(MEASUREMENTS), help="run only these (repeatable)")
    parser.add_argument("--turns", type=int, default=40, help="turns of the recorded session (recording)")
    parser.add_argument("--pairs", type=int, default=1, help="runs without and with recording, alternating (recording)")
    parser.add_argument("--messages", type=int, default=2000, help="SDK messages recorded (recording_loop)")
    args = parser.parse_args()
    with ExitStack() as stack:
        figures = asyncio.run(measure(args.only or list(MEASUREMENTS), server_url(stack), args))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
