"""One Claude Code session: claude-agent-sdk driving the bundled claude CLI inside the sandbox.

    claude = ClaudeSessions(home=data_dir, settings=settings, credentials=token_manager, sandbox=sandbox)
    result = await claude.run(SessionRequest(role="executor", worktree=tree, prompt="Fix ..."), spec)

What a session gets, and why:
- the sandbox (fixfleet/workspace/sandbox.py): the CLI and everything it starts run in
  bubblewrap with the checkout at /workspace (read-only for the planner), the repository's
  environment at /env, a home of its own for this session only (skills, the CLI's state), and
  no network: its model requests go to 127.0.0.1, bridged to the platform's model proxy,
  which adds the real key. The CLI holds a per-session dummy key, nothing else;
- the SaaS MCP servers run on this side with their tokens (actors/mcp_bridge.py); the CLI
  sees them as in-process servers, through the protocol only;
- the role's tools only, every call checked by `PermissionPolicy` (a tripwire that tells the
  agent why; the mounts are the boundary);
- one in-process MCP tool to hand back its work (`submit_plan` / `report_result`), validated
  with pydantic, so nothing is parsed out of prose; and the platform tools a role offers
  (the executor's `verify_change`), which run on this side of the sandbox;
- max turns and budget enforced by the CLI, wall-clock timeout enforced here by killing the
  sandbox (and with it everything in it); so is the sandbox's disk quota (the checkout and the
  session's home may grow by FIXFLEET_SANDBOX_CHECKOUT_BYTES);
- its record in the store, when the request names its owner (a task) and ClaudeSessions has a store:
  the session's row before the CLI starts, every message redacted as it comes
  (actors/transcript.py), written in the background (actors/recorder.py), the outcome at the end;
  a session stopped by a cancel or a pause is marked cut short with the reason;
- with FIXFLEET_SESSION_JSONL (debugging), also a JSONL file on the agent's disk, one SDK message
  per line, redacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Protocol

import psutil
from claude_agent_sdk import (
    AssistantMessage,
    ClaudeAgentOptions,
    ClaudeSDKClient,
    HookMatcher,
    ResultMessage,
    SdkMcpTool,
    SystemMessage,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
    create_sdk_mcp_server,
    tool,
)
from claude_agent_sdk._version import __version__ as SDK_VERSION
from claude_agent_sdk.types import PermissionResultAllow, PermissionResultDeny
from pydantic import ValidationError

from actors.mcp import render_mcp_servers
from actors.mcp_bridge import McpBridge
from actors.permissions import CLI_TOOLS, PermissionPolicy
from actors.recorder import SessionRecorder, SessionSink
from actors.session_models import (
    Denial,
    SessionLimits,
    SessionRequest,
    SessionResult,
    Subtype,
)
from actors.skills import install_skills
from actors.transcript import Transcriber
from fixfleet.config import Settings
from fixfleet.redact import Redactor
from fixfleet.sessions import NewSession, SessionEnd, SessionStatus
from fixfleet.workspace import sweeper
from fixfleet.workspace.limits import growth_watch
from fixfleet.workspace.model_proxy import ModelProxy
from fixfleet.workspace.sandbox import HOME, WORKSPACE, Bridge, Sandbox, SandboxSpec
from fixfleet.workspace.spawn import CLOSE_INHERITED

log = logging.getLogger(__name__)

BUNDLED_CLI = Path(sys.modules["claude_agent_sdk"].__file__ or "").parent / "_bundled" / "claude"
CLI_INSIDE = "/opt/claude/claude"
MODEL_PORT = 8790  # inside the sandbox's own network namespace: no clash with anything
OUTPUT_SERVER = "fixfleet"  # the in-process MCP server holding the structured-output tool
DUTIES = {  # what the system prompt asks of each kind of session
    "planner": ("You plan; you never edit files (your checkout is read-only). Read and search the code, find the "
                "root cause, then call the `submit_plan` tool with the plan."),
    "executor": ("You fix the bug test-first: write a failing test, run it and see it fail, fix the code, run the "
                 "tests until they pass, then call the `report_result` tool."),
    "answer": ("You answer a reviewer's question about your plan; you never edit files (your checkout is read-only). "
               "Read the code the answer rests on, then call the `answer_question` tool with the answer."),
}
KILL_GRACE_S = 10.0  # after the watchdog kills the sandbox, how long the SDK gets to notice
CLI_ENV = {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1",
           "CLAUDE_CODE_DISABLE_BUNDLED_SKILLS": "1",  # the role's skills only: a bundled one would shadow ours
           "CLAUDE_CODE_ENTRYPOINT": "sdk-py", "CLAUDE_AGENT_SDK_VERSION": SDK_VERSION}


class CredentialSource(Protocol):
    """actors.credentials.TokenManager: `current()` raises NoCredentialError when none."""

    def current(self) -> Any: ...


class ClaudeSessions:
    def __init__(self, home: Path, settings: Settings, credentials: CredentialSource, *, sandbox: Sandbox,
                 model: str | None = None, deny_patterns: list[str] | None = None,
                 api_max_retries: int | None = None, mcp_template: Path | None = None,
                 records: SessionSink | None = None) -> None:
        self.home = Path(home)
        self.settings = settings
        self.credentials = credentials
        self.sandbox = sandbox
        self.sessions_dir = self.home / "sessions"
        self.transcripts_dir = self.home / "transcripts"
        self.model = model or settings.agent_model
        self.deny_patterns = list(deny_patterns if deny_patterns is not None else settings.agent_deny_patterns or [])
        self.api_max_retries = api_max_retries
        self.mcp_template = mcp_template  # None: skills/mcp.json
        self.redactor = Redactor.from_settings(settings)
        self.records = records  # None: sessions are not recorded (no store)
        self.model_proxy: ModelProxy | None = None
        self._socket_dir: Path | None = None
        self._running: set[_Session] = set()

    def stop_sessions(self, reason: str = "stopped by its agent") -> int:
        """Kill every running session's sandbox at once (its task was cancelled or paused): the
        CLI's output ends and each `run` returns promptly; its record says it was cut short and
        why. Returns how many processes died."""
        return sum(session.kill(reason) for session in list(self._running))

    async def run(self, request: SessionRequest, spec: SandboxSpec | None = None,
                  tools: Sequence[SdkMcpTool[Any]] = ()) -> SessionResult:
        """`spec`: what the session's sandbox mounts (its checkout and the repository's
        environment); None: the checkout alone, with the toolchain. `tools`: platform tools
        offered beside the output tool, run here (outside the sandbox) when the agent calls them."""
        credential = self.credentials.current()  # raises with none: refuse to start
        if self.sandbox.enabled:
            await self._start_model_proxy()
        session = _Session(self, request, credential, spec or SandboxSpec(workspace=request.worktree), tools)
        self._running.add(session)
        try:
            return await session.run()
        finally:
            self._running.discard(session)

    async def close(self) -> None:
        if self.model_proxy is not None:
            await self.model_proxy.close()
            self.model_proxy = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            sweeper.release(self._socket_dir)

    async def _start_model_proxy(self) -> None:
        if self.model_proxy is not None:
            return
        # Unix socket paths are short (107 bytes): a private directory of its own under /tmp.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="ff-model-", dir=os.environ.get("FIXFLEET_SOCKET_DIR", "/tmp")))
        sweeper.claim(self._socket_dir)

        def credential() -> tuple[str, str]:
            current = self.credentials.current()
            return current.kind, current.value.get_secret_value()

        self.model_proxy = ModelProxy(self._socket_dir / "model.sock", self.settings.anthropic_base_url, credential)
        await self.model_proxy.start()


class _Session:
    """The state of one run: options, policy, record, watchdog, result."""

    def __init__(self, claude: ClaudeSessions, request: SessionRequest, credential: Any, spec: SandboxSpec,
                 tools: Sequence[SdkMcpTool[Any]] = ()) -> None:
        self.claude = claude
        self.request = request
        self.credential = credential
        self.spec = spec
        self.tools = list(tools)
        self.limits = request.limits or SessionLimits.from_settings(claude.settings)
        self.worktree = Path(os.path.realpath(request.worktree))
        self.sandboxed = claude.sandbox.enabled
        self.cwd = WORKSPACE if self.sandboxed else str(self.worktree)  # the path the agent sees
        self.session_id = str(uuid.uuid4())
        self.dir = claude.sessions_dir / self.session_id
        self.claude_dir = self.dir / "home"  # the CLI's HOME and CLAUDE_CONFIG_DIR, this session only
        self.redactor = claude.redactor.with_secrets([credential.value.get_secret_value()])
        self.policy = PermissionPolicy(
            role=request.role, worktree=Path(self.cwd),
            readable=[Path(HOME if self.sandboxed else self.claude_dir) / "skills"],
            deny_patterns=claude.deny_patterns,
            extra_tools={self.output_tool_name} | {f"mcp__{OUTPUT_SERVER}__{t.name}" for t in self.tools})
        self.transcript_path = (claude.transcripts_dir / f"{self.session_id}.jsonl"
                                if claude.settings.session_jsonl else None)
        self.transcriber = Transcriber(self.redactor, claude.settings.session_message_max_bytes)
        self.recorder = self._recorder()
        self.stopped: str | None = None  # why the platform killed the session (a cancel, a pause)
        self.structured_output: dict[str, Any] | None = None
        self.output_calls: set[str] = set()  # tool_use ids of the calls to the output tool
        self.rejections: list[str] = []  # why each of them was refused (by the CLI's schema check or ours)
        self.init_skills: list[str] = []
        self.api_retries: list[dict[str, Any]] = []  # the CLI's own retries of failed model requests
        self.result_message: ResultMessage | None = None
        self.usage_by_message: dict[str, dict[str, Any]] = {}
        self.stderr_tail: deque[str] = deque(maxlen=40)
        self.timed_out = False
        self.killed = 0
        self.descendants: list[psutil.Process] = []
        self.dummy_key: str | None = None
        self.over_quota: list[str] = []  # why the sandbox was killed for its disk use, once it was

    @property
    def output_tool_name(self) -> str:
        return f"mcp__{OUTPUT_SERVER}__{self.request.output_tool[0]}"

    # -- the run -----------------------------------------------------------------------------

    def _recorder(self) -> SessionRecorder | None:
        owner, records = self.request.owner, self.claude.records
        if owner is None or records is None:
            return None
        return SessionRecorder(records, NewSession(
            **owner.model_dump(), role=self.request.role, purpose=self.request.purpose, model=self.claude.model,
            cli_session_id=self.session_id))

    async def run(self) -> SessionResult:
        """The session, recorded: its row before the CLI starts, its outcome however it ends."""
        result: SessionResult | None = None
        failure: str | None = None
        if self.recorder is not None:
            await self.recorder.open()
            self.recorder.add([self.transcriber.prompt(self.request.prompt)])
        try:
            result = await self._run()
            return result
        except asyncio.CancelledError:  # the agent's job was cancelled under the session
            self.stopped = self.stopped or "stopped: its agent's job was cancelled"
            raise
        except Exception as exc:
            failure = self.redactor.text(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if self.recorder is not None:  # shielded: a second cancel must not lose the ending
                await asyncio.shield(self.recorder.close(self._ending(result, failure)))

    def _ending(self, result: SessionResult | None, failure: str | None) -> SessionEnd:
        spent = result.model_dump(include={"cost_usd", "input_tokens", "output_tokens", "turns"}) if result else {}
        if self.stopped:
            return SessionEnd(status=SessionStatus.CUT_SHORT, error=self.stopped, **spent)
        if result is None:
            return SessionEnd(status=SessionStatus.ENDED, outcome="error_during_execution", error=failure)
        return SessionEnd(status=SessionStatus.ENDED, outcome=result.subtype, error=result.error, **spent)

    async def _run(self) -> SessionResult:
        started = time.monotonic()
        error: str | None = None
        self.dir.mkdir(parents=True, exist_ok=True)
        sweeper.claim(self.dir)  # a killed agent's session directory is the sweeper's
        skills = install_skills(self.request.role, self.claude_dir)  # a broken SKILL.md raises: a deployment bug
        loop = asyncio.get_running_loop()
        # The watchdog kills the sandbox rather than cancelling the SDK's tasks: the CLI's stdout
        # then closes and the SDK winds down on its own, with nothing left running.
        watchdog = loop.call_later(self.limits.timeout_s, self._on_timeout)
        try:
            async with McpBridge(self._external_mcp_servers(), self.redactor) as bridge, \
                    growth_watch(self._watched(), self.claude.sandbox.limits.checkout_bytes, self._kill_over_quota) as over_quota:
                self.over_quota = over_quota
                async with asyncio.timeout(self.limits.timeout_s + KILL_GRACE_S):
                    await self._converse(self._options(skills, bridge))
        except TimeoutError:
            self.timed_out = True
        except Exception as exc:  # the CLI crashed or the SDK gave up: report, don't raise
            if self.timed_out:  # expected: the watchdog killed the CLI under the SDK's feet
                log.info("session %s: the SDK ended with the killed CLI (%s)", self.session_id, type(exc).__name__)
            else:
                log.warning("session %s: the CLI or the SDK failed", self.session_id, exc_info=True)
            error = self._describe_failure(exc)
        finally:
            watchdog.cancel()
            self._kill(self._cli_tree() + self.descendants)  # leftovers too
            await self.claude.sandbox.release(self.session_id)
            if self.dummy_key and self.claude.model_proxy is not None:
                self.claude.model_proxy.remove_session(self.dummy_key)
            await asyncio.to_thread(shutil.rmtree, self.dir, True)
            sweeper.release(self.dir)
        return self._result(started, error)

    async def _converse(self, options: ClaudeAgentOptions) -> None:
        with self._jsonl() as transcript:
            async with ClaudeSDKClient(options) as client:
                await client.query(self.redactor.text(self.request.prompt))
                async for message in client.receive_response():
                    self._observe(message)
                    if self.recorder is not None:
                        self.recorder.add(self.transcriber.bodies(message))
                    if transcript is not None:
                        transcript.write(self._transcript_line(message) + "\n")
                        transcript.flush()
                self.descendants = self._cli_tree()  # what the CLI left running, reaped once it exits

    def _jsonl(self) -> contextlib.AbstractContextManager[IO[str] | None]:
        if self.transcript_path is None:
            return contextlib.nullcontext()
        self.transcript_path.parent.mkdir(parents=True, exist_ok=True)
        return self.transcript_path.open("w")

    def _observe(self, message: Any) -> None:
        if isinstance(message, SystemMessage) and message.subtype == "init":
            self.init_skills = list(message.data.get("skills") or [])
        elif isinstance(message, SystemMessage) and message.subtype == "api_retry":
            self.api_retries.append(message.data)
        elif isinstance(message, AssistantMessage):
            if message.usage:
                self.usage_by_message[message.message_id or str(id(message))] = message.usage
            self.output_calls |= {block.id for block in message.content
                                  if isinstance(block, ToolUseBlock) and block.name == self.output_tool_name}
        elif isinstance(message, UserMessage) and isinstance(message.content, list):
            self.rejections += [_result_text(block.content) for block in message.content
                                if isinstance(block, ToolResultBlock) and block.is_error
                                and block.tool_use_id in self.output_calls]
        elif isinstance(message, ResultMessage):
            self.result_message = message

    def _transcript_line(self, message: Any) -> str:
        record = {"type": type(message).__name__}
        if dataclasses.is_dataclass(message):
            record |= dataclasses.asdict(message)
        return json.dumps(self.redactor.value(record), default=str)

    # -- options and the launcher ------------------------------------------------------------

    def _options(self, skills: list[str], bridge: McpBridge) -> ClaudeAgentOptions:
        servers: dict[str, Any] = {OUTPUT_SERVER: self._output_server(), **bridge.sdk_servers()}
        self.policy.mcp_servers = set(bridge.sessions)
        return ClaudeAgentOptions(
            cwd=str(self.worktree),
            cli_path=str(self._write_launcher()),
            env={},  # the launcher starts from an empty environment whatever the SDK merges in
            model=self.claude.model,
            tools=CLI_TOOLS[self.request.role],
            skills=skills,
            setting_sources=["user"],  # only our own CLI home: a repository's .claude/settings.json could run hooks
            permission_mode="default",
            can_use_tool=self._can_use_tool,
            hooks={"PreToolUse": [HookMatcher(matcher=None, hooks=[self._pre_tool_use])]},
            mcp_servers=servers,
            strict_mcp_config=True,
            max_turns=self.limits.max_turns,
            max_budget_usd=self.limits.max_budget_usd,
            session_id=self.session_id,
            system_prompt={"type": "preset", "preset": "claude_code", "append": self._system_prompt(skills)},
            stderr=lambda line: self.stderr_tail.append(self.redactor.text(line)),
        )

    def _external_mcp_servers(self) -> dict[str, Any]:
        """The SaaS servers serve discovery: the planner's only."""
        if self.request.role != "planner":
            return {}
        if self.claude.mcp_template is None:
            return render_mcp_servers(self.claude.settings, self.worktree)
        return render_mcp_servers(self.claude.settings, self.worktree, self.claude.mcp_template)

    def _write_launcher(self) -> Path:
        """The CLI's launcher for this session: bubblewrap, started with an empty environment
        (the SDK merges the platform's whole environment into the one it passes)."""
        spec = dataclasses.replace(self.spec, workspace_writable=self.request.role == "executor",
                                   home=self.claude_dir, env=self._cli_env(),
                                   read_only={**self.spec.read_only, CLI_INSIDE: BUNDLED_CLI})
        if self.sandboxed:
            assert self.claude.model_proxy is not None
            spec.bridges = [*spec.bridges, Bridge(socket=self.claude.model_proxy.socket_path, port=MODEL_PORT)]
            command = shlex.join(self.claude.sandbox.argv(spec, [CLI_INSIDE], run_id=self.session_id))
        else:  # FIXFLEET_SANDBOX=off: a trusted local experiment, the CLI with the real key
            variables = self.claude.sandbox.environment(spec) | self._unsandboxed_env()
            command = shlex.join([f"{k}={v}" for k, v in variables.items()] + [str(BUNDLED_CLI)])
        launcher = self.dir / "launch"
        launcher.parent.mkdir(parents=True, exist_ok=True)
        # The SDK's spawn (anyio on uvloop) leaves the actor's descriptors open: close them first.
        launcher.write_text(f"#!/bin/bash\n# fixfleet session {self.session_id}\n{CLOSE_INHERITED}\n"
                            f'exec env -i {command} "$@"\n')
        launcher.chmod(0o700)
        return launcher

    def _cli_env(self) -> dict[str, str]:
        env = dict(self.spec.env) | CLI_ENV | {"CLAUDE_CONFIG_DIR": HOME if self.sandboxed else str(self.claude_dir),
                                               "PWD": self.cwd}
        if self.claude.api_max_retries is not None:
            env["CLAUDE_CODE_MAX_RETRIES"] = str(self.claude.api_max_retries)
        if self.tools:  # a platform tool (a verification) may take as long as the session may
            env["MCP_TOOL_TIMEOUT"] = str(int(self.limits.timeout_s * 1000))
        if self.sandboxed:
            assert self.claude.model_proxy is not None
            self.dummy_key = self.claude.model_proxy.add_session()
            env |= {"ANTHROPIC_BASE_URL": f"http://127.0.0.1:{MODEL_PORT}", "ANTHROPIC_API_KEY": self.dummy_key}
        return env

    def _unsandboxed_env(self) -> dict[str, str]:
        env = {"HOME": str(self.claude_dir), self.credential.env_var: self.credential.value.get_secret_value()}
        if self.claude.settings.anthropic_base_url:
            env["ANTHROPIC_BASE_URL"] = self.claude.settings.anthropic_base_url
        return env

    def _system_prompt(self, skills: list[str]) -> str:
        role = self.request.role
        duty = DUTIES["answer" if self.request.purpose == "answer" else role]
        context = json.dumps(self.redactor.value(self.request.context), indent=2, default=str)
        return "\n".join([
            f"# fixfleet {role}",
            f"You are fixfleet's {role} agent. Your working directory is {self.cwd}, a checkout of the "
            "repository (not a git repository: the platform takes your change from the files, verifies it "
            "and commits it); stay inside it. The repository's environment is already installed.",
            duty,
            "There is no network: never try curl, ssh, git push or package installs. Never read credential files.",
            f"Skills for this role (use the Skill tool): {', '.join(skills) or 'none'}.",
            "## Task context", "```json", context, "```",
        ])

    # -- permissions and structured output ---------------------------------------------------

    async def _pre_tool_use(self, hook_input: Any, tool_use_id: str | None, context: Any) -> dict[str, Any]:
        """Every tool call passes here, even those the CLI would auto-approve (reads)."""
        reason = self.policy.decide(hook_input.get("tool_name", ""), hook_input.get("tool_input") or {}, tool_use_id)
        if reason is None:
            return {}  # no opinion: the CLI's own rules, then can_use_tool, decide
        return {"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": "deny",
                                       "permissionDecisionReason": reason}}

    async def _can_use_tool(self, tool_name: str, tool_input: dict[str, Any],
                            context: Any) -> PermissionResultAllow | PermissionResultDeny:
        reason = self.policy.decide(tool_name, tool_input, getattr(context, "tool_use_id", None))
        if reason is None:
            return PermissionResultAllow()
        return PermissionResultDeny(message=reason)

    def _output_server(self) -> Any:
        name, model, description = self.request.output_tool

        @tool(name, description, model.model_json_schema())
        async def hand_back(args: dict[str, Any]) -> dict[str, Any]:
            try:
                output = model.model_validate(args)
                self._check_files(output.model_dump())
            except (ValidationError, ValueError) as exc:
                return {"content": [{"type": "text", "text": f"Rejected: {_reason(exc)}. Fix it and call {name} again."}],
                        "is_error": True}
            self.structured_output = output.model_dump()
            return {"content": [{"type": "text", "text": f"Accepted. {name} recorded."}]}

        return create_sdk_mcp_server(OUTPUT_SERVER, tools=[hand_back, *self.tools])

    def _check_files(self, output: dict[str, Any]) -> None:
        """Named files must exist in the checkout: a plan about files that aren't there is wrong."""
        named = output.get("affected_files") or output.get("files_changed") or output.get("files") or []
        files = [f["path"] if isinstance(f, dict) else f for f in named]
        missing = [f for f in files if not (self.worktree / f).exists()]
        if missing:
            raise ValueError(f"these files do not exist in the worktree: {', '.join(missing)}")

    # -- process tree ------------------------------------------------------------------------

    def _cli_tree(self) -> list[psutil.Process]:
        """The sandbox (found by the session id in its command line) and everything in it."""
        marker = f"--session-id={self.session_id}"
        try:
            children = psutil.Process().children(recursive=True)
        except psutil.Error:
            return []
        tree: list[psutil.Process] = []
        for process in children:
            try:
                if marker in process.cmdline():
                    tree += [process, *process.children(recursive=True)]
            except psutil.Error:
                continue
        return tree

    def kill(self, reason: str) -> int:
        """Kill the session's sandbox and everything in it now; `reason` goes in its record."""
        self.stopped = reason
        return self._kill(self._cli_tree())

    def _kill_over_quota(self) -> None:
        """Past the disk quota: the sandbox dies now; the result gives the quota's reason (over_quota)."""
        self._kill(self._cli_tree())

    def _watched(self) -> dict[str, Path]:
        """What the sandbox writes on the host's disk, watched against its quota."""
        if not self.sandboxed:
            return {}
        writable = {"the checkout": self.worktree} if self.request.role == "executor" else {}
        return writable | {"the session's home": self.claude_dir}

    def _on_timeout(self) -> None:
        self.timed_out = True
        self.killed = self._kill(self._cli_tree())
        log.warning("session %s timed out after %ss; killed %d processes", self.session_id,
                    self.limits.timeout_s, self.killed)

    @staticmethod
    def _kill(processes: list[psutil.Process]) -> int:
        """SIGKILL the lot: the sandbox's init takes its PID namespace with it. No waiting:
        SIGKILL cannot be ignored, and this runs on the event loop."""
        alive = [p for p in processes if _alive(p)]
        for process in reversed(alive):  # children first
            try:
                process.kill()
            except psutil.Error:
                pass
        return len(alive)

    # -- the result --------------------------------------------------------------------------

    def _result(self, started: float, error: str | None) -> SessionResult:
        message = self.result_message
        subtype, error = self._classify(message, error)
        input_tokens, output_tokens = self._tokens(message)
        return SessionResult(
            outcome="success" if subtype == "success" and error is None else "error",
            subtype=subtype,
            turns=message.num_turns if message else len(self.usage_by_message),
            cost_usd=(message.total_cost_usd or 0.0) if message else 0.0,
            input_tokens=input_tokens, output_tokens=output_tokens,
            session_id=message.session_id if message else self.session_id,
            duration_s=time.monotonic() - started,
            structured_output=self.structured_output,
            denials=[self._redacted(denial) for denial in self.policy.denials],
            error=self.redactor.text(error) if error else None,
            permanent=subtype != "success" and self._fails_for_good(message, subtype),
            transcript_path=self.transcript_path,
            record_id=self.recorder.record_id if self.recorder else None,
            skills=self.init_skills,
        )

    def _redacted(self, denial: Denial) -> Denial:
        return denial.model_copy(update={"input_summary": self.redactor.text(denial.input_summary)})

    def _classify(self, message: ResultMessage | None, error: str | None) -> tuple[Subtype, str | None]:
        if self.over_quota:
            return "error_during_execution", self.over_quota[0]
        if self.timed_out:
            return "timeout", (f"no result within {self.limits.timeout_s:g}s; "
                               f"killed the CLI's sandbox ({self.killed} processes){self._api_trouble()}")
        if message is None:
            return "error_during_execution", error or "the CLI ended without a result"
        if message.subtype in ("error_max_turns", "error_max_budget_usd"):
            return message.subtype, _result_error(message)  # type: ignore[return-value]
        if message.subtype != "success" or message.is_error:
            return "error_during_execution", _result_error(message)
        if self.request.require_structured_output and self.structured_output is None:
            return "error_during_execution", self._no_output_reason()
        return "success", None

    def _api_trouble(self) -> str:
        """What the model API was answering when the session ran out of time, if it was failing."""
        if not self.api_retries:
            return ""
        last = self.api_retries[-1]
        status = f"HTTP {last['error_status']} " if last.get("error_status") else ""
        error = last.get("error") if last.get("error") not in (None, "", "unknown") else "no usable answer"
        return f"; the model API kept failing: {status}{error} ({len(self.api_retries)} retries)"

    def _no_output_reason(self) -> str:
        tool_name = self.request.output_tool[0]
        if not self.rejections:
            return f"the {self.request.role} ended without {tool_name}"
        return (f"the {self.request.role}'s {tool_name} was rejected {len(self.rejections)} time(s) and never "
                f"accepted; last: {self.rejections[-1]}")

    def _fails_for_good(self, message: ResultMessage | None, subtype: Subtype) -> bool:
        """Would another attempt end the same way? An output that never validated (not cut short
        by the clock), or a credential the model API refuses."""
        if message is not None and message.api_error_status in (401, 403):
            return True
        return subtype != "timeout" and self.structured_output is None and bool(self.rejections)

    def _tokens(self, message: ResultMessage | None) -> tuple[int, int]:
        usage = (message.usage or {}) if message else {}
        if usage.get("input_tokens") or usage.get("output_tokens"):
            return _prompt_tokens(usage), int(usage.get("output_tokens", 0))
        models = (message.model_usage or {}) if message else {}
        if models:  # the budget stop reports zero usage but keeps per-model figures
            return (sum(int(m.get("inputTokens", 0)) + int(m.get("cacheReadInputTokens", 0))
                        + int(m.get("cacheCreationInputTokens", 0)) for m in models.values()),
                    sum(int(m.get("outputTokens", 0)) for m in models.values()))
        seen = self.usage_by_message.values()  # no result at all (timeout): what streamed in
        return (sum(_prompt_tokens(u) for u in seen), sum(int(u.get("output_tokens", 0)) for u in seen))

    def _describe_failure(self, exc: Exception) -> str:
        stderr = "\n".join(self.stderr_tail)
        text = f"{type(exc).__name__}: {exc}"
        return f"{text}\n{stderr}" if stderr else text


def _prompt_tokens(usage: dict[str, Any]) -> int:
    return sum(int(usage.get(key) or 0) for key in
               ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"))


def _result_error(message: ResultMessage) -> str:
    """The CLI's own words: errors[] first, then the result text, then the HTTP status."""
    if message.errors:
        return "; ".join(str(e) for e in message.errors)
    if message.is_error and message.result:
        return message.result
    if message.api_error_status:
        return f"API error (HTTP {message.api_error_status})"
    return message.subtype


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'input'}: {e['msg']}" for e in exc.errors())
    return str(exc)


def _result_text(content: str | list[dict[str, Any]] | None) -> str:
    """A tool result's own words, without the reminders the CLI appends, kept short."""
    text = content if isinstance(content, str) else " ".join(
        str(part.get("text", "")) for part in content or [] if isinstance(part, dict))
    return text.split("<system-reminder>", 1)[0].strip()[:500]


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
