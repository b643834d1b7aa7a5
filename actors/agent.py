"""What every agent is: a loop over its queue with warm workspaces and the Claude sessions it runs (actors/session.py).

`AgentLoop` is plain Python (testable without Ray); `actors/planner.py` and `actors/executor.py`
give it a `handle(job)`; `serve_app/agents.py` runs each as the replicas of a Serve deployment.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

from claude_agent_sdk import SdkMcpTool

from actors.credentials import TokenManager
from actors.metrics import AgentMetrics
from actors.publish import Publisher
from actors.session import ClaudeSessions
from actors.session_models import SessionFailedForGood, SessionRequest
from fixfleet.config import Settings
from fixfleet.errors import Interrupted
from fixfleet.logs import adopt_binding, bind_task, task_context
from fixfleet.models import QUEUED_IN, SideJob, Task, TaskStatus
from fixfleet.processes import ProcessRef, this_node
from fixfleet.queue import Job
from fixfleet.services import AGENTS_KEY, Services, open_services
from fixfleet.sessions import SessionOwner
from fixfleet.store import Hold
from fixfleet.takeover import Liveness
from fixfleet.worker import Worker, cancel_and_wait
from fixfleet.workspace.env_cache import EnvCache
from fixfleet.workspace.environments import (
    Environment,
    EnvironmentBuilder,
    SetupFailed,
    network_access,
)
from fixfleet.workspace.baselines import BaselineStore
from fixfleet.workspace.limits import SandboxLimits
from fixfleet.workspace.mirrors import Checkout, WorkspaceManager, remove_tree
from fixfleet.workspace.sandbox import Sandbox, SandboxSpec
from fixfleet.workspace.sweeper import Sweeper, claim, kill_processes_in
from fixfleet.workspace.verify import Verifier

log = logging.getLogger(__name__)
# The environments a job holds (eviction leaves them alone), released when the job ends.
_held_environments: contextvars.ContextVar[list[Environment] | None] = contextvars.ContextVar(
    "held_environments", default=None)


class AgentLoop:
    role: str = ""
    queue_name: str = ""
    git_history: int = 1  # commits of the branch the agent's private git holds

    def __init__(self, name: str, settings: Settings) -> None:
        self.name, self.settings = name, settings
        self.home: Path = settings.home / "agents" / name
        self.done = 0
        self.failed = 0
        self.handling_since: float | None = None  # this agent's handler's run (its metrics); the heartbeat shows the worker's claim-to-ack
        self.last_beat: float | None = None
        self.held: Task | None = None  # the task as this agent claimed it: a change it did not make stops the work
        self.handed_on = False  # this agent made its own step's transition: others may move the task now
        self.metrics = AgentMetrics(self.role)
        self._stack = AsyncExitStack()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._process = ProcessRef.current()  # named in its heartbeat: the reconciler can tell when it is gone

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        kill_processes_in(self.home)  # what a previous run of this agent left running
        self.sweeper = Sweeper(self.settings.home, temp_dirs(self.settings.home))
        # A previous run of this agent that died is gone: its home goes (with every other one whose owner is).
        await asyncio.to_thread(self.sweeper.sweep)
        self.home.mkdir(parents=True, exist_ok=True)
        claim(self.home, self.name)
        self.sandbox = Sandbox(self.home / "sandbox", enabled=self.settings.sandbox_enabled,
                               limits=SandboxLimits.from_settings(self.settings))
        await self.sandbox.check()  # where the sandbox cannot start, agents refuse to run: it says why
        if not self.sandbox.enabled:
            log.warning("FIXFLEET_SANDBOX=off: %s runs agents and repository code WITHOUT a sandbox", self.name)
        self.services: Services = await self._stack.enter_async_context(open_services(self.settings, pool_size=4))
        self.store, self.queue = self.services.store, self.services.queues[self.queue_name]
        self.tokens = TokenManager(self.settings)
        cache = EnvCache(self.settings.cache_root, max_bytes=int(self.settings.cache_max_gb * 1024**3))
        self.workspaces = WorkspaceManager(self.home / "workspaces", None, self.settings.github_token, cache=cache,
                                           holder=self.name, history=self.git_history)
        for legacy in ("envs", "mirrors"):  # environments and mirrors were an agent's before they were the node's
            if (self.workspaces.root / legacy).is_dir():
                await asyncio.to_thread(remove_tree, self.workspaces.root / legacy)
        self.environments = EnvironmentBuilder(self.workspaces, self.sandbox, self.settings.repo_configs,
                                               self.settings.suite_command, cache=cache, holder=self.name)
        self.verifier = Verifier(self.workspaces, self.environments, self.sandbox,
                                 BaselineStore(self.settings.cache_root / "baselines"),
                                 reruns=self.settings.verify_reruns)
        self.claude = ClaudeSessions(self.home / "session", self.settings, self.tokens, sandbox=self.sandbox,
                                    mcp_template=self.settings.mcp_config, records=self.store)
        self._stack.push_async_callback(self.claude.close)
        self.publisher = Publisher(self.settings, self.store)
        self._stack.push_async_callback(self.publisher.aclose)
        self.worker = Worker(self.queue, self.store, self._handle_counted, self.name, on_give_up=self.publisher.task_failed)
        await self._beat()  # the agent is listed (and healthy) from its first moment
        self._tasks = [asyncio.create_task(self.worker.run(self._stop)), asyncio.create_task(self._heartbeat()),
                       asyncio.create_task(self._sweep_periodically())]

    async def drain(self, timeout_s: float) -> None:
        """Stop claiming, let the task in hand finish (up to `timeout_s`), then stop: what a
        replica does when Serve retires it. A task cut off anyway is taken over by the next agent
        (at once when the relay sees this one gone, else after its lease)."""
        self._stop.set()
        worker = self._tasks[0] if self._tasks else None
        if worker is not None and not worker.done():
            with suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(worker), timeout_s)
        await self.stop()

    def problem(self) -> str | None:
        """Why this agent is not fit to work (its loop died, its heartbeat stalled), or None."""
        if not self._tasks:
            return "not started"
        if self._tasks[0].done():
            return "the worker loop has ended"
        stale_after = 3 * max(1.0, self.settings.lease_s / 3)
        if self.last_beat is None or time.time() - self.last_beat > stale_after + 5:
            return "its heartbeat is stale"
        return None

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            with suppress(Exception):
                await cancel_and_wait(task)
        with suppress(Exception):
            await self.services.redis.hdel(AGENTS_KEY, self.name)
        await self.workspaces.close()  # spare checkouts still building must not outlive the agent
        await self._stack.aclose()

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "busy_with": self.worker.busy_with, "busy_since": self.worker.busy_since,
                "draining": self._stop.is_set(), "done": self.done, "failed": self.failed, "pid": os.getpid(),
                "started": self._process.started, "node": this_node(), "at": time.time()}

    async def _heartbeat(self) -> None:
        """The agent's line in the shared status hash (/health, `fixfleet status` read it)."""
        while True:
            await asyncio.sleep(max(1.0, self.settings.lease_s / 3))
            await self._beat()

    async def _sweep_periodically(self) -> None:
        """Every FIXFLEET_SWEEP_EVERY_S: reclaim what agents and processes that are gone left on
        this node (one agent at a time sweeps; the others skip). A home on a shared disk whose
        owner ran on another node goes when the heartbeats say its agent is gone."""
        while True:
            await asyncio.sleep(self.settings.sweep_every_s)
            try:
                liveness = await Liveness.look(self.services.redis, None, stale_after_s=self.settings.agent_lost_s)
                self.sweeper.gone_agent = liveness.gone
                await asyncio.to_thread(self.sweeper.sweep)
            except Exception as exc:  # noqa: BLE001 - the next pass tries again
                log.warning("%s: the sweep failed (%s); trying again in %ss", self.name, exc, self.settings.sweep_every_s)

    async def _beat(self) -> None:
        with suppress(Exception):  # Redis away: the beat goes stale and the health check says so
            await self.services.redis.hset(AGENTS_KEY, self.name, json.dumps(self.status()))
            self.last_beat = time.time()

    async def _handle_counted(self, job: Job) -> None:
        self.handling_since = time.time()
        self.metrics.started()
        held = _held_environments.set([])  # the handler's child task shares this list
        with task_context(f"#{job.task_id}"):
            log.info("%s took the job from %s (delivery %d)", self.name, job.stream, job.deliveries)
            try:
                await self._handle_under_control(job)
            except Interrupted as stop:
                log.info("%s stopped working on task %s: %s", self.name, job.task_id, stop)
                raise
            except Exception as exc:
                self.failed += 1
                self.metrics.finished("failed", time.time() - self.handling_since, exc)
                log.warning("%s failed the job after %.1f s: %s", self.name, time.time() - self.handling_since,
                            type(exc).__name__)
                raise
            finally:
                busy_for, self.handling_since, self.held = time.time() - self.handling_since, None, None
                self.handed_on = False
                for env in _held_environments.get() or []:
                    env.release()
                _held_environments.reset(held)
            log.info("%s finished the job in %.1f s", self.name, busy_for)
        self.done += 1
        self.metrics.finished("completed", busy_for)

    async def _handle_under_control(self, job: Job) -> None:
        """Handle the job while watching its task: when someone cancels or pauses it (or another
        agent takes it over), the work is cancelled at once, the Claude session's sandbox killed
        with it and the checkout discarded (the handlers' `finally`), and `Interrupted` raised."""
        context = contextvars.copy_context()
        handling = asyncio.create_task(self.handle(job), context=context)
        watching = asyncio.create_task(self._watch_control(job.task_id))
        done, _ = await asyncio.wait({handling, watching}, return_when=asyncio.FIRST_COMPLETED)
        adopt_binding(context)  # the lines logged from here on name the task the handler bound
        if handling in done:
            await cancel_and_wait(watching)
            return handling.result()
        stop = watching.result()
        killed = self.claude.stop_sessions(f"stopped: {stop}")  # at once: a cancelled session's CLI must not take another step
        log.info("%s: %s; killed %d session process(es)", self.name, stop, killed)
        handling.cancel()
        await asyncio.wait({handling}, timeout=60)  # the session's sandbox dies at once; its cleanup follows
        with suppress(Exception):
            await self.store.record_event(job.task_id, actor=self.name, reason=f"stopped: {stop}",
                                          data={"after_s": round(time.time() - (self.handling_since or time.time()), 3)})
        raise stop

    async def _watch_control(self, task_id: int) -> Interrupted:
        """Wait until the task this agent holds moves without it: cancelled, paused, taken over,
        or moved and moved back between two looks (a pause and a resume within a second: the
        version tells). Once the agent made its own step's transition (`holding`), only a cancel
        or a pause stops what it still does (the planner's base run); an approval does not."""
        while True:
            await asyncio.sleep(self.settings.control_poll_s)
            held = self.held
            if held is None or held.id != task_id:
                continue
            try:
                status, version = await self.store.state_of(task_id)
            except Exception:  # the database away: the work goes on, the next look may see it
                log.warning("%s could not look at task %s's state", self.name, task_id, exc_info=True)
                continue
            if status in STOPPED:
                return Interrupted(task_id, status, f"{held.key} was {status}")
            if version != held.version and not self.handed_on:
                moved = "taken over" if status == held.status else f"moved to {status} meanwhile"
                return Interrupted(task_id, status, f"{held.key} was {moved} (version {version}, claimed at {held.version})")

    async def handle(self, job: Job) -> None:  # pragma: no cover - each role implements it
        raise NotImplementedError

    # --- helpers for the roles --------------------------------------------------------------

    async def claim(self, task: Task, target: TaskStatus, **changes: Any) -> Task:
        """Take the task into `target`; the same state again means taking over a dead agent's work."""
        self.held = await self.store.transition(
            task.id, target, actor=self.name,
            reason="takeover" if task.status == target else target.value.lower(),
            expected_version=task.version, changes={"attempts": task.attempts + 1, **changes},
        )
        if task.status != target:  # a step begins: the trackers move by their mapping (never fatal)
            await self.publisher.task_started(self.held, target.value)
        return self.held

    @asynccontextmanager
    async def holding(self, task: Task) -> AsyncIterator[Hold]:
        """The store's hold on `task` as claimed, for the side effects and the transition that end
        this agent's step; once that transition is made the task is handed on (`_watch_control`)."""
        async with self.store.holding(task) as hold:
            yield hold
            if hold.moved_to is not None:
                self.handed_on = True  # before the commit: the watch never sees the new version first

    async def claimable(self, job: Job, states: set[TaskStatus]) -> Task | None:
        task = await self.store.get_task(job.task_id)
        bind_task(task.key, task.repo)  # every log line from here on names them
        if task.status not in states:
            log.info("%s is %s: nothing for the %s to do", task.key, task.status, self.role)
            return None
        if stale := stale_entry(job, task):
            log.info("%s: this queue entry is stale (%s); skipped", task.key, stale)
            return None
        return task

    async def side_job_task(self, job: Job, side: SideJob) -> Task | None:
        """The task a side job's entry is for, or None when its request is answered already (a
        second entry: the reconciler's after a Redis restart, or one request asked twice)."""
        task = await self.store.get_task(job.task_id)
        bind_task(task.key, task.repo)
        if side.asked in task.context and not side.pending(task.context):
            log.info("%s: %s was answered already; skipped", task.key, side.action)
            return None
        return task

    async def side_job_done(self, task: Task, side: SideJob, reason: str, result: dict[str, Any] | None = None) -> None:
        """Record a side job's outcome (under `side.key`); the request it read at its start is
        no longer pending (a later one still is)."""
        context = {side.answered: task.context.get(side.asked)} | ({side.key: result} if result else {})
        await self.store.update_fields(task.id, context=context)
        await self.store.record_event(task.id, actor=self.name, reason=reason, data={side.key: result} if result else None)

    async def environment(self, task: Task, sha: str) -> Environment:
        """The repository's environment at `sha`, held until the job ends; a repository that
        cannot be set up fails the task early, with the setup log's tail in its audit trail."""
        started = time.monotonic()
        try:
            env = await self.environments.ensure(task.repo, sha)
            held = _held_environments.get()
            if held is not None:
                held.append(env)
        except SetupFailed as exc:
            await self.store.record_event(task.id, actor=self.name, reason=f"setup failed: {exc.message}",
                                          data={"setup_log_tail": self.claude.redactor.text(exc.log_tail)})
            raise
        await self.store.record_event(
            task.id, actor=self.name, reason=f"environment {'reused' if env.reused else 'built'}",
            data={"environment": env.hash, "reused": env.reused, "built_s": env.built_s,
                  "seconds": round(time.monotonic() - started, 3), "setup": env.plan.describe()})
        return env

    async def session_checkout(self, task: Task, env: Environment, sha: str, purpose: str, *,
                               writable: bool) -> tuple[Checkout, SandboxSpec, list[str]]:
        """A fresh checkout of `sha` for a session, the sandbox it runs in, and the paths the
        platform placed in it (never part of a change)."""
        checkout = await self.workspaces.checkout(task.repo, sha, f"{task.key}-{purpose}", branch=task.branch)
        placed = self.environments.prepare(env, checkout)
        return checkout, self.environments.spec(env, checkout, workspace_writable=writable), placed

    async def run_session(self, task: Task, request: SessionRequest, spec: SandboxSpec, domains: list[str],
                          failure: type[Exception], missing: str, tools: Sequence[SdkMcpTool[Any]] = ()) -> dict[str, Any]:
        """Run one Claude session for the task in its sandbox (recorded in the store as it runs),
        book its cost and audit row, and hand back its structured output; a session that ends
        without one raises `failure`. `tools`: the platform tools the session may call (run on
        this side of the sandbox)."""
        # The plan a planner writes is the next version; an executor or an answer serves the current one.
        writes_plan = request.role == "planner" and request.purpose == "work"
        request = request.model_copy(update={"owner": SessionOwner(
            task_id=task.id, attempt=task.attempts, agent=self.name,
            plan_version=task.plan_version + 1 if writes_plan else task.plan_version or None)})
        async with network_access(domains) as network:  # the domains the repository allows its tests
            result = await self.claude.run(request, network.apply(spec), tools)
        await self.add_cost(task.id, result.cost_usd, result.input_tokens + result.output_tokens)
        self.metrics.session(result.cost_usd, result.input_tokens, result.output_tokens)
        await self.store.record_event(task.id, actor=self.name, reason=f"{self.role} session: {result.subtype}",
                                      data={"cost_usd": result.cost_usd, "turns": result.turns, "session": result.session_id,
                                            "record": result.record_id,
                                            "seconds": round(result.duration_s, 3),
                                            "denials": [d.model_dump() for d in result.denials],
                                            "tokens": result.input_tokens + result.output_tokens, "role": self.role})
        if result.outcome != "success" or not result.structured_output:
            reason = f"{self.role} session ended {result.subtype}: {result.error or missing}"
            raise SessionFailedForGood(reason) if result.permanent else failure(reason)
        return result.structured_output

    async def add_cost(self, task_id: int, cost_usd: float, tokens: int) -> Task:
        return await self.store.add_cost(task_id, cost_usd, tokens)


STOPPED = {TaskStatus.CANCELLED, TaskStatus.PAUSED}


def stale_entry(job: Job, task: Task) -> str | None:
    """Why this entry must not start work on `task`, or None. Entries outlive the moment they
    were queued for: a priority change queues the task again (the old entry stays behind), a
    resume or retry queues it at a new version. A task another agent holds is taken over only
    by a redelivered entry (its holder's lease ran out), a retry, or the reconciler's entry."""
    message = job.message
    if task.status in QUEUED_IN:
        if message.priority != task.priority:
            return f"the task was queued again at priority {task.priority}"
        if message.version is not None and message.version != task.version:
            return f"queued for version {message.version}; the task is at {task.version}"
        return None
    first_delivery = job.deliveries == 1 and message.attempt == 1
    if first_delivery and message.version is not None and message.version != task.version:
        return f"another agent holds the task ({task.status} v{task.version})"
    return None


def temp_dirs(home: Path) -> list[Path]:
    """Where the platform's processes make temporary directories on this node."""
    found = [Path(tempfile.gettempdir()), home / "temp"]
    if socket_dir := os.environ.get("FIXFLEET_SOCKET_DIR"):
        found.append(Path(socket_dir))
    return found
