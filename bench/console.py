"""The console's figures: `python -m bench.console [--only pages] [--tasks 10000] [--store-messages 200000]`.

- pages: the console's pages with a big store behind them. `--tasks` tasks (10,000: every state,
  each with its audit rows; the finished ones with a plan, evidence and a diff) and
  `--store-messages` session messages (200,000: sessions of 2,000 messages each, kept the way the
  platform keeps them today: each session's audit row and the JSONL transcript of actors/session.py, read
  through the console's SessionReader). The ingress runs under uvicorn in a subprocess (uvloop,
  httptools, as bench.ingress runs it; without the outbox relay, as a Serve replica); one signed-in client asks for one page after another: the
  task list (filters and pages in turn), a task page (plans, evidence, diff, sessions, timeline) and a
  transcript page of 2,000 messages. Prints p50/p95/max per page; goal: p95 under 150 ms each.

- recording: what recording a session costs it. One scripted session (the real claude CLI in its
  sandbox against the scripted model: `--turns` turns, each a line of text and a Bash call whose
  output is a few KB) on one warm ClaudeSessions, run once without recording and once with it (the
  session's row, every message redacted and written by the background writer into Postgres),
  after a warm-up run. Prints both wall times and the ratio; goal: recording adds under 5 %.
  One run of each by default (`--pairs N` alternates N pairs and averages): on a shared machine,
  read the ratio with the noise of single runs in mind.
- recording_loop: the part of that cost the session's own event loop pays per message
  (redaction, the cut, numbering, queueing), for messages like the session's; the batches are
  written beside it. A steady figure where the wall times are noisy.

Each measurement is a function returning its figures (MEASUREMENTS); the figures are printed,
then the last line: one JSON object with the issue's keys (LAST_LINE) of whichever measurements ran.
DATABASE_URL / REDIS_URL name the servers (else the embedded ones); the measurements work in a
throwaway database and the Redis db REDIS_URL names (12 when it names 0 or none), dropped and
flushed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil

from actors.credentials import TokenManager
from actors.session import ClaudeSessions
from actors.session_models import SessionLimits, SessionRequest
from fixfleet.config import Settings
from fixfleet.models import NewTask
from fixfleet.replay import ReplayServer
from fixfleet.ports import free_port
from fixfleet.scratch import create_database, drop_database, flush_redis, named_redis_db, redis_db_url
from fixfleet.sessions import SessionOwner
from fixfleet.store import Store
from fixfleet.workspace.sandbox import Sandbox

Measurement = Callable[[str, argparse.Namespace], Awaitable[dict[str, Any]]]
REDIS_DB = 12  # unless REDIS_URL names a database of its own (bench.ingress uses 10 and 11)
TOKEN = "bench-console-token-0123456789"
SESSION_MESSAGES = 2000  # one transcript page
AGENT = "planner-bench"


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
        # One warm ClaudeSessions for both: a request without an owner is not recorded.
        claude = ClaudeSessions(root / "agent", settings, TokenManager(settings), sandbox=Sandbox(root / "sandbox"),
                               model="claude-sonnet-4-5", mcp_template=root / "mcp.json", records=store)
        runs: dict[str, list[float]] = {"without": [], "with": []}
        try:
            await claude.run(request)  # warm-up: the CLI's files in the page cache, the model proxy up
            for pair in range(args.pairs):  # alternating, so that a drift of the machine hits both
                for name in ("without", "with") if pair % 2 == 0 else ("with", "without"):
                    server.clear()
                    started = time.monotonic()
                    result = await claude.run(recorded if name == "with" else request)
                    runs[name].append(time.monotonic() - started)
                    if result.outcome != "success":
                        raise SystemExit(f"the {name} session failed: {result.subtype}: {result.error}")
                    if name == "with":
                        record = await store.get_session(result.record_id)  # type: ignore[arg-type]
        finally:
            await claude.close()
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


# --- the store: tasks, audit rows, sessions ---------------------------------------------------------

STATUSES = (["COMPLETED"] * 8 + ["FAILED", "FAILED", "AWAITING_APPROVAL", "AWAITING_APPROVAL", "RECEIVED", "RECEIVED",
            "EXECUTING", "PLANNING", "CANCELLED", "REJECTED", "PAUSED", "APPROVED"])
TITLES = ["TypeError: can't compare offset-naive and offset-aware datetimes", "KeyError: 'region' in billing.invoice",
          "Checkout times out when the cart has 200 items", "NullPointerException in ReportExporter.render",
          "Flaky retry: ConnectionResetError in the webhook sender"]


def plan(n: int) -> dict[str, Any]:
    return {"repository": "acme/api", "confidence": 0.8, "risk": "low", "test_command": "pytest tests/test_dates.py",
            "root_cause": f"parse_date() drops the timezone (seen in task {n}); " + "the caller compares it. " * 8,
            "affected_files": [{"path": f"api/module_{i}.py", "reason": "where the zone is lost " * 3} for i in range(4)],
            "steps": [f"step {i}: " + "change the parser to keep tzinfo " * 3 for i in range(6)],
            "tests_to_add": [{"path": f"tests/test_dates.py::test_case_{i}", "description": "stays aware " * 4}
                             for i in range(3)]}


def finished_context() -> dict[str, Any]:
    diff = "".join(f"diff --git a/api/m{i}.py b/api/m{i}.py\n--- a/api/m{i}.py\n+++ b/api/m{i}.py\n@@ -1,8 +1,8 @@\n"
                   + " context line\n" * 4 + "-    return naive(value)\n+    return aware(value)\n" + " tail\n" * 3
                   for i in range(12))
    run = {"command": "pytest tests/test_dates.py", "exit_code": 0, "seconds": 1.2,
           "output_tail": "tests/test_dates.py::test_case PASSED\n" * 80,
           "tests": {f"tests/test_dates.py::test_case_{i}": "passed" for i in range(30)}}
    return {"diff": diff, "evidence": {"red": run | {"exit_code": 1}, "green": run, "suite": run | {"command": "pytest"},
                                       "red_to_green": [f"tests/test_dates.py::test_case_{i}" for i in range(3)],
                                       "setup": "uv venv; uv pip install -e .[test]"}}


SEED_TASKS = """
INSERT INTO tasks (source, repo, title, body, priority, status, version, attempts, plan, plan_version, branch, pr_url,
                   cost_usd, tokens, context, created_at, updated_at)
SELECT (ARRAY['sentry','jira','github','api','slack','cli'])[1 + n % 6],
       'https://github.com/acme/service-' || (n % 40) || '.git',
       ($2::text[])[1 + n % array_length($2::text[], 1)] || ' #' || n,
       repeat('  File "api/dates.py", line 41, in parse_date' || chr(10), 30),
       (ARRAY['critical','high','normal','low'])[1 + n % 4],
       status, 4, 1,
       CASE WHEN planned THEN $4::jsonb END, CASE WHEN planned THEN 1 ELSE 0 END,
       CASE WHEN planned THEN 'fixfleet/FF-' || n END, CASE WHEN planned THEN 'https://github.com/acme/service/pull/' || n END,
       (n % 97) / 10.0, (n * 13) % 200000, '{}'::jsonb,
       now() - make_interval(mins => $1 - n), now() - make_interval(mins => ($1 - n) / 2)
FROM (SELECT n, s AS status, s NOT IN ('RECEIVED', 'PLANNING') AS planned
      FROM generate_series(1, $1) AS n, LATERAL (SELECT ($3::text[])[1 + (n * 7919) % array_length($3::text[], 1)]) AS x(s)) AS seeded
"""
SEED_EVENTS = """
INSERT INTO task_events (task_id, from_status, to_status, actor, reason, data, created_at)
SELECT t.id, e.from_status, e.to_status, e.actor, e.reason,
       CASE WHEN e.to_status = 'AWAITING_APPROVAL' THEN jsonb_build_object('plan_version', 1, 'plan', t.plan, 'setup', 'uv venv')
            ELSE '{}'::jsonb END,
       t.created_at + make_interval(secs => e.step * 30)
FROM tasks t CROSS JOIN (VALUES (1, NULL, 'RECEIVED', 'sentry', 'task received'),
                                (2, 'RECEIVED', 'PLANNING', 'planner-1', 'planning'),
                                (3, 'PLANNING', 'AWAITING_APPROVAL', 'planner-1', 'plan v1 ready'),
                                (4, 'AWAITING_APPROVAL', 'APPROVED', 'api:lead', 'approved'),
                                (5, 'APPROVED', 'EXECUTING', 'executor-1', 'executing'),
                                (6, 'EXECUTING', 'COMPLETED', 'executor-1', 'pushed')) AS e(step, from_status, to_status, actor, reason)
"""


def session_messages(count: int) -> list[Any]:
    """`count` SDK messages of a long session: the model reads, thinks, calls a tool, reads its output."""
    from claude_agent_sdk import (
        AssistantMessage,
        ResultMessage,
        SystemMessage,
        TextBlock,
        ThinkingBlock,
        ToolResultBlock,
        ToolUseBlock,
        UserMessage,
    )

    messages: list[Any] = [SystemMessage(subtype="init", data={"model": "claude", "tools": ["Read", "Bash", "Edit"]})]
    turn = 0
    while len(messages) < count - 1:
        turn += 1
        messages += [
            AssistantMessage(content=[TextBlock(f"Step {turn}: I read `api/module_{turn % 9}.py` to see where the "
                                                f"zone is lost; **next** the caller.")], model="claude"),
            AssistantMessage(content=[ThinkingBlock("The caller passes a naive value. " * 6, "sig")], model="claude"),
            AssistantMessage(content=[ToolUseBlock(f"toolu_{turn}", "Bash",
                                                   {"command": f"grep -n parse_date api/ -r | head -{turn % 50}"})],
                             model="claude"),
            UserMessage(content=[ToolResultBlock(f"toolu_{turn}",
                                                 f"api/module_{turn % 9}.py:41:    value = parse_date(text)\n" * 25, False)]),
        ]
    return messages[:count - 1] + [ResultMessage(subtype="success", duration_ms=1, duration_api_ms=1, is_error=False,
                                                 num_turns=turn, session_id="s", total_cost_usd=0.5)]


class StoredRecording:
    """Sessions recorded in the session store (fixfleet/store/sessions.py), as actors/session.py records them."""

    def __init__(self, store: Store, home: Path, messages: list[Any]) -> None:
        from datetime import UTC, datetime

        from actors.transcript import Transcriber
        from fixfleet.redact import Redactor
        from fixfleet.sessions import MESSAGE_LIMIT_BYTES, SessionMessage

        transcriber = Transcriber(Redactor(), MESSAGE_LIMIT_BYTES)
        bodies = [body for message in messages for body in transcriber.bodies(message)]
        now = datetime.now(UTC)
        self.store = store
        self.messages = [SessionMessage(seq=n, at=now, **body.model_dump()) for n, body in enumerate(bodies, start=1)]

    async def record(self, task_id: int) -> str:
        from fixfleet.sessions import NewSession, SessionEnd, SessionStatus

        record = await self.store.start_session(NewSession(task_id=task_id, attempt=1, agent=AGENT, role="planner",
                                                           cli_session_id=f"bench-session-{task_id:05d}"))
        for start in range(0, len(self.messages), 500):
            await self.store.append_messages(record.id, self.messages[start:start + 500])
        await self.store.end_session(record.id, SessionEnd(status=SessionStatus.ENDED, outcome="success", cost_usd=0.5,
                                                           input_tokens=120_000, output_tokens=30_000, turns=500))
        return str(record.id)


async def seed(database_url: str, home: Path, tasks: int, messages: int) -> dict[str, Any]:
    """The store as a busy platform has it; returns what the pages will be asked for."""
    store = await Store.connect(database_url, max_size=2)
    try:
        started = time.perf_counter()
        await store.pool.execute(SEED_TASKS, tasks, TITLES, STATUSES, plan(0))  # the jsonb codec encodes
        await store.pool.execute(SEED_EVENTS)
        sessions = max(1, messages // SESSION_MESSAGES)
        rich = list(range(1, sessions + 1))  # these tasks have a session each, a diff and evidence
        await store.pool.execute("UPDATE tasks SET context = $1::jsonb, status = 'COMPLETED' WHERE id = ANY($2::bigint[])",
                                 finished_context(), rich)
        recording = StoredRecording(store, home, session_messages(SESSION_MESSAGES))
        session_ids = [(f"FF-{task_id}", await recording.record(task_id)) for task_id in rich]
        counts = await store.pool.fetchrow("SELECT (SELECT count(*) FROM tasks) AS tasks, (SELECT count(*) FROM task_events) AS events")
        print(f"seeded {counts['tasks']} tasks, {counts['events']} audit rows, {len(session_ids)} sessions of "
              f"{SESSION_MESSAGES} messages ({len(session_ids) * SESSION_MESSAGES} messages) in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        return {"sessions": session_ids}
    finally:
        await store.close()


# --- page timings -----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def sign_in(url: str) -> httpx.Client:
    client = httpx.Client(base_url=url, follow_redirects=False, timeout=60)
    form = client.get("/ui/login").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form)[1]
    answer = client.post("/ui/login", data={"token": TOKEN, "csrf": csrf})
    if answer.status_code != 303:
        raise SystemExit(f"could not sign in to the console: {answer.status_code} {answer.text[:200]}")
    return client


def server_process(url: str) -> psutil.Process:
    """The process listening on `url`'s port (uvicorn, started by bench.ingress.uvicorn_target)."""
    port = int(url.rsplit(":", 1)[1])
    for connection in psutil.net_connections(kind="tcp"):
        if connection.laddr and connection.laddr.port == port and connection.status == psutil.CONN_LISTEN:
            return psutil.Process(connection.pid)
    raise SystemExit(f"no process listens on port {port}")


def timed(client: httpx.Client, server: psutil.Process, paths: list[str], requests: int, warmup: int = 10) -> dict[str, Any]:
    """Wall time per request as the client sees it, and the server's CPU time per request (a
    steadier figure on a shared machine: waiting for a CPU does not count in it)."""
    for path in paths[:warmup]:
        client.get(path)
    times, sizes = [], []
    cpu_before = sum(server.cpu_times()[:2])
    for n in range(requests):
        started = time.perf_counter()
        answer = client.get(paths[n % len(paths)])
        times.append((time.perf_counter() - started) * 1000)
        if answer.status_code != 200:
            raise SystemExit(f"{paths[n % len(paths)]} answered {answer.status_code}: {answer.text[:300]}")
        sizes.append(len(answer.content))
    cpu_ms = (sum(server.cpu_times()[:2]) - cpu_before) * 1000 / requests
    return {"requests": requests, "p50_ms": round(statistics.median(times), 1), "p95_ms": round(percentile(times, 95), 1),
            "max_ms": round(max(times), 1), "server_cpu_ms": round(cpu_ms, 1), "kb": round(statistics.mean(sizes) / 1024)}


LIST_QUERIES = ["", "status=COMPLETED", "status=AWAITING_APPROVAL", "repo=https://github.com/acme/service-7.git",
                "source=sentry&priority=high", "q=timezone", "q=FF-4242", "offset=500", "offset=9000",
                "status=FAILED&source=jira"]


def ingress_app() -> Any:
    """The ingress as a Serve replica runs it: the reconciler and the other once-only jobs run elsewhere."""
    from serve_app.app import create_app

    return create_app(singletons=False)


@contextmanager
def served(env: dict[str, str]) -> Iterator[str]:
    """The app under uvicorn (uvloop, httptools) in a subprocess of its own, as bench.ingress runs it."""
    from bench.ingress import wait_healthy

    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "bench.console:ingress_app", "--factory", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning", "--loop", "uvloop", "--http", "httptools"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FIXFLEET_")}
    process = subprocess.Popen(command, env=clean | env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, 60, alive=lambda: process.poll() is None)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def page_timings(database_url: str, args: argparse.Namespace) -> dict[str, Any]:

    redis_url = redis_db_url(args.redis_server, named_redis_db(os.environ.get("REDIS_URL")) or REDIS_DB)
    await flush_redis(redis_url)
    with tempfile.TemporaryDirectory(prefix="bench-console-") as directory:
        home = Path(directory)
        seeded = await seed(database_url, home, args.tasks, args.store_messages)
        env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "FIXFLEET_HOME": str(home),
               "FIXFLEET_API_TOKENS": json.dumps([{"name": "bench", "token": TOKEN, "scopes": ["read", "submit", "approve"]}])}
        try:
            with served(env) as url:
                client, server = sign_in(url), server_process(url)
                sessions = seeded["sessions"]
                figures = {
                    "list": timed(client, server, [f"/ui/?{q}" for q in LIST_QUERIES], args.requests),
                    "task": timed(client, server, [f"/ui/tasks/{key}" for key, _ in sessions[:20]], args.requests),
                    "transcript": timed(client, server, [f"/ui/tasks/{key}/sessions/{sid}" for key, sid in sessions[:20]],
                                        max(20, args.requests // 2)),
                }
        finally:
            await flush_redis(redis_url)
    load = os.getloadavg()
    print(f"load average while measuring: {load[0]:.1f} (1 min), {load[1]:.1f} (5 min) on {os.cpu_count()} CPUs: "
          "a shared machine's figures move with it", flush=True)
    for name, timing in figures.items():
        print(f"{name} page: p50 {timing['p50_ms']} ms, p95 {timing['p95_ms']} ms, max {timing['max_ms']} ms over "
              f"{timing['requests']} requests ({timing['kb']} KB each; the server's CPU {timing['server_cpu_ms']} ms "
              f"each): {'meets' if timing['p95_ms'] < 150 else 'misses'} the goal of p95 under 150 ms", flush=True)
    return {"tasks": args.tasks, "messages": len(seeded["sessions"]) * SESSION_MESSAGES,
            "load_average": round(load[0], 1), **figures}


MEASUREMENTS: dict[str, Measurement] = {"pages": page_timings, "recording": recording_overhead,
                                         "recording_loop": recording_loop_cost}
# The last line: key -> (measurement, its figure). A measurement that did not run is left out.
LAST_LINE: dict[str, tuple[str, Callable[[dict[str, Any]], Any]]] = {
    "list_p95_ms": ("pages", lambda f: f["list"]["p95_ms"]),
    "task_p95_ms": ("pages", lambda f: f["task"]["p95_ms"]),
    "transcript_p95_ms": ("pages", lambda f: f["transcript"]["p95_ms"]),
    "recording_overhead": ("recording", lambda f: f["ratio"]),
}


# --- the run ------------------------------------------------------------------------------------


def server_urls(stack: ExitStack) -> tuple[str, str]:
    """DATABASE_URL's and REDIS_URL's servers, else the embedded ones (stopped when `stack` closes)."""
    from fixfleet.embedded import EmbeddedServers
    from fixfleet.services import resolve_urls

    settings = Settings()
    embedded = EmbeddedServers(settings.home)
    stack.callback(embedded.stop)
    return resolve_urls(settings, embedded)


async def measure(names: list[str], server: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    database_url = await create_database(server, "fixfleet_bench")
    try:
        return {name: await MEASUREMENTS[name](database_url, args) for name in names}
    finally:
        await drop_database(server, database_url)


def last_line(figures: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {key: read(figures[name]) for key, (name, read) in LAST_LINE.items() if name in figures}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=sorted(MEASUREMENTS), help="run only these (repeatable)")
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks in the store (pages)")
    parser.add_argument("--store-messages", type=int, default=200_000, help="session messages in the store (pages)")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per page (pages)")
    parser.add_argument("--turns", type=int, default=40, help="turns of the recorded session (recording)")
    parser.add_argument("--pairs", type=int, default=1, help="runs without and with recording, alternating (recording)")
    parser.add_argument("--messages", type=int, default=2000, help="SDK messages recorded (recording_loop)")
    args = parser.parse_args()
    with ExitStack() as stack:
        server, args.redis_server = server_urls(stack)
        figures = asyncio.run(measure(args.only or list(MEASUREMENTS), server, args))
    print(json.dumps(figures))
    print(json.dumps(last_line(figures)))


if __name__ == "__main__":
    main()
