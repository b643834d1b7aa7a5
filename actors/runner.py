"""One Claude Code session: claude-agent-sdk driving the bundled claude CLI in a worktree.

    runner = SessionRunner(home=data_dir, settings=settings, credentials=token_manager)
    result = await runner.run(SessionRequest(role="executor", worktree=tree, prompt="Fix ..."))

What a session gets, and why:
- its own CLI home (`<home>/claude`, as HOME and CLAUDE_CONFIG_DIR) holding the role's skills,
  the CLI's settings and session files, so actors never share state;
- an environment built from nothing: the SDK merges the platform's `os.environ` into the CLI's,
  so the CLI is started through a small wrapper that drops every variable the runner did not
  choose (no GITHUB_TOKEN, database URL or FIXFLEET_* secret can reach the agent);
- the role's tools only, every call checked by `PermissionPolicy` (PreToolUse hook for all
  calls, `can_use_tool` for the ones the CLI would prompt for);
- one in-process MCP tool to hand back its work (`submit_plan` / `report_result`), validated
  with pydantic, so nothing is parsed out of prose;
- max turns and budget enforced by the CLI, wall-clock timeout enforced here by killing the
  CLI's whole process tree;
- a JSONL transcript, one SDK message per line, with secrets redacted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import shutil
import sys
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Protocol

import psutil
from claude_agent_sdk import (
    AssistantMessage,
    ClaudeAgentOptions,
    ClaudeSDKClient,
    HookMatcher,
    ResultMessage,
    SystemMessage,
    create_sdk_mcp_server,
    tool,
)
from claude_agent_sdk.types import PermissionResultAllow, PermissionResultDeny
from pydantic import SecretStr, ValidationError

from actors.mcp import render_mcp_servers
from actors.permissions import CLI_TOOLS, PermissionPolicy
from actors.session_models import (
    OUTPUT_TOOLS,
    Denial,
    SessionLimits,
    SessionRequest,
    SessionResult,
    Subtype,
)
from actors.skills import install_skills
from fixfleet.config import Settings

log = logging.getLogger(__name__)

BUNDLED_CLI = Path(sys.modules["claude_agent_sdk"].__file__ or "").parent / "_bundled" / "claude"
OUTPUT_SERVER = "fixfleet"  # the in-process MCP server holding the structured-output tool
KILL_GRACE_S = 10.0  # after the watchdog kills the CLI, how long the SDK gets to notice
# Variables the SDK sets itself on the CLI's environment; the wrapper keeps them too.
SDK_ENV = ("CLAUDE_CODE_ENTRYPOINT", "CLAUDE_AGENT_SDK_VERSION", "CLAUDE_AGENT_SDK_CLIENT_APP",
           "CLAUDE_AGENT_SDK_DERIVED_CLIENT_APP", "CLAUDE_CODE_SDK_READS_SESSION_STATE",
           "CLAUDE_CODE_ENABLE_SDK_FILE_CHECKPOINTING", "PWD", "TRACEPARENT", "TRACESTATE")
# Harmless platform variables the CLI may need to reach the model API behind a proxy.
PASSTHROUGH_ENV = ("LANG", "LC_ALL", "TZ", "TMPDIR", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY",
                   "https_proxy", "http_proxy", "no_proxy", "SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS")
KEEP_VAR = "FIXFLEET_CLI_ENV_KEEP"  # names the wrapper keeps; dropped itself
WRAPPER = """#!/bin/bash
# Written by fixfleet's SessionRunner. claude-agent-sdk merges the platform's environment into
# the CLI's; this keeps only the variables the runner chose (listed in ${KEEP}) and execs the CLI.
keep=()
for name in ${KEEP}; do
  [[ -v $name ]] && keep+=("$name=${!name}")
done
exec env -i "${keep[@]}" "${CLI}" "$@"
"""
SECRET_PATTERNS = [
    re.compile(r"gh[pousr]_[A-Za-z0-9]{16,}"),
    re.compile(r"github_pat_[A-Za-z0-9_]{20,}"),
    re.compile(r"xox[abposr]-[A-Za-z0-9-]{8,}"),
    re.compile(r"sk-ant-[A-Za-z0-9_-]{8,}"),
    re.compile(r"(?i)bearer\s+[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"AKIA[0-9A-Z]{16}"),
    re.compile(r"sntrys_[A-Za-z0-9_=+/-]{16,}"),
    re.compile(r"ATATT[A-Za-z0-9_=-]{16,}"),  # Atlassian API tokens
    re.compile(r"(?i)(postgres(ql)?|redis|rediss|mysql)://[^\s:@/]*:[^\s@/]+@"),
]
REDACTED = "[REDACTED]"


class CredentialSource(Protocol):
    """actors.credentials.TokenManager: `current()` raises NoCredentialError when none."""

    def current(self) -> Any: ...


class Redactor:
    """Replaces known secret values and common token shapes in any JSON-like value."""

    def __init__(self, secrets: list[str]) -> None:
        # Longest first so a secret containing another is replaced whole; tiny values skipped
        # because redacting "abc" everywhere would shred the transcript.
        self.secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self.secrets:
            value = value.replace(secret, REDACTED)
        for pattern in SECRET_PATTERNS:
            value = pattern.sub(REDACTED, value)
        return value

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(item) for item in value]
        if isinstance(value, dict):
            return {key: self.value(item) for key, item in value.items()}
        return value


def settings_secrets(settings: Settings) -> list[str]:
    """Every secret value Settings holds (each part of a rotating `new,old` secret too)."""
    values: list[str] = []
    for _, field_value in settings:
        if isinstance(field_value, SecretStr):
            raw = field_value.get_secret_value()
            values += [raw, *Settings.secret_values(field_value)]
    return values


class SessionRunner:
    def __init__(self, home: Path, settings: Settings, credentials: CredentialSource, *,
                 model: str | None = None, deny_patterns: list[str] | None = None,
                 api_max_retries: int | None = None,
                 scrub_subprocess_env: bool | None = None,
                 mcp_template: Path | None = None) -> None:
        self.home = Path(home)
        self.settings = settings
        self.credentials = credentials
        self.claude_dir = self.home / "claude"  # the CLI's HOME and CLAUDE_CONFIG_DIR
        self.transcripts_dir = self.home / "transcripts"
        self.model = model or settings.agent_model
        self.deny_patterns = list(deny_patterns if deny_patterns is not None
                                  else settings.agent_deny_patterns or [])
        self.api_max_retries = api_max_retries
        self.mcp_template = mcp_template  # None: skills/mcp.json
        # Default: scrub when bubblewrap is there to do it (the CLI needs it for scrubbing).
        self.scrub_subprocess_env = (shutil.which("bwrap") is not None
                                     if scrub_subprocess_env is None else scrub_subprocess_env)
        self.cli_path = self._write_wrapper()

    async def run(self, request: SessionRequest) -> SessionResult:
        credential = self.credentials.current()  # raises with none: refuse to start
        session = _Session(self, request, credential)
        return await session.run()

    def _write_wrapper(self) -> Path:
        """The CLI launcher that strips the environment; rewritten only when it changes."""
        path = self.home / "bin" / "claude"
        content = WRAPPER.replace("${KEEP}", "$" + KEEP_VAR).replace("${CLI}", str(BUNDLED_CLI))
        if not path.exists() or path.read_text() != content:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(content)
            temporary.chmod(0o755)
            temporary.replace(path)  # atomic: a concurrent session never sees half a file
        return path


class _Session:
    """The state of one run: options, policy, transcript, watchdog, result."""

    def __init__(self, runner: SessionRunner, request: SessionRequest, credential: Any) -> None:
        self.runner = runner
        self.request = request
        self.credential = credential
        self.limits = request.limits or SessionLimits.from_settings(runner.settings)
        self.worktree = Path(os.path.realpath(request.worktree))
        self.session_id = str(uuid.uuid4())
        self.redactor = Redactor(settings_secrets(runner.settings)
                                 + [credential.value.get_secret_value()])
        self.policy = PermissionPolicy(
            role=request.role, worktree=self.worktree,
            readable=[runner.claude_dir / "skills"], deny_patterns=runner.deny_patterns,
            extra_tools={self.output_tool_name},
        )
        self.transcript_path = runner.transcripts_dir / f"{self.session_id}.jsonl"
        self.structured_output: dict[str, Any] | None = None
        self.init_skills: list[str] = []
        self.result_message: ResultMessage | None = None
        self.usage_by_message: dict[str, dict[str, Any]] = {}
        self.stderr_tail: deque[str] = deque(maxlen=40)
        self.timed_out = False
        self.killed = 0
        self.descendants: list[psutil.Process] = []
        self.mcp_config_path: Path | None = None

    @property
    def output_tool_name(self) -> str:
        return f"mcp__{OUTPUT_SERVER}__{OUTPUT_TOOLS[self.request.role][0]}"

    # -- the run -----------------------------------------------------------------------------

    async def run(self) -> SessionResult:
        started = time.monotonic()
        error: str | None = None
        self.runner.transcripts_dir.mkdir(parents=True, exist_ok=True)
        skills = self._install_skills()  # a broken SKILL.md raises: a deployment bug
        loop = asyncio.get_running_loop()
        # The watchdog kills the process tree rather than cancelling the SDK's tasks: the CLI's
        # stdout then closes and the SDK winds down on its own, with nothing left running.
        watchdog = loop.call_later(self.limits.timeout_s, self._on_timeout)
        try:
            async with asyncio.timeout(self.limits.timeout_s + KILL_GRACE_S):
                await self._converse(self._options(skills))
        except TimeoutError:
            self.timed_out = True
        except Exception as exc:  # the CLI crashed or the SDK gave up: report, don't raise
            error = self._describe_failure(exc)
        finally:
            watchdog.cancel()
            self._kill(self._cli_tree() + self.descendants)  # leftovers (`cmd &`) too
            if self.mcp_config_path is not None:
                self.mcp_config_path.unlink(missing_ok=True)
        return self._result(started, error)

    async def _converse(self, options: ClaudeAgentOptions) -> None:
        with self.transcript_path.open("w") as transcript:
            async with ClaudeSDKClient(options) as client:
                await client.query(self.redactor.text(self.request.prompt))
                async for message in client.receive_response():
                    self._observe(message)
                    transcript.write(self._transcript_line(message) + "\n")
                    transcript.flush()
                # Remember what the CLI left running, to reap it once the CLI has exited.
                self.descendants = self._cli_tree()

    def _observe(self, message: Any) -> None:
        if isinstance(message, SystemMessage) and message.subtype == "init":
            self.init_skills = list(message.data.get("skills") or [])
        elif isinstance(message, AssistantMessage) and message.usage:
            self.usage_by_message[message.message_id or str(id(message))] = message.usage
        elif isinstance(message, ResultMessage):
            self.result_message = message

    def _transcript_line(self, message: Any) -> str:
        record = {"type": type(message).__name__}
        if dataclasses.is_dataclass(message):
            record |= dataclasses.asdict(message)
        return json.dumps(self.redactor.value(record), default=str)

    # -- options -----------------------------------------------------------------------------

    def _install_skills(self) -> list[str]:
        return install_skills(self.request.role, self.runner.claude_dir)

    def _options(self, skills: list[str]) -> ClaudeAgentOptions:
        extra_args: dict[str, str | None] = {}
        if self.request.role == "planner":  # the SaaS servers serve discovery, not execution
            external = self._external_mcp_servers()
            if external:
                self.policy.mcp_servers = set(external)
                extra_args["mcp-config"] = str(self._write_mcp_config(external))
        return ClaudeAgentOptions(
            cwd=str(self.worktree),
            cli_path=str(self.runner.cli_path),
            env=self._env(),
            model=self.runner.model,
            tools=CLI_TOOLS[self.request.role],
            skills=skills,
            # Only our own CLI home: a repository's .claude/settings.json could run hooks.
            setting_sources=["user"],
            permission_mode="default",
            can_use_tool=self._can_use_tool,
            hooks={"PreToolUse": [HookMatcher(matcher=None, hooks=[self._pre_tool_use])]},
            mcp_servers={OUTPUT_SERVER: self._output_server()},
            strict_mcp_config=True,
            extra_args=extra_args,
            max_turns=self.limits.max_turns,
            max_budget_usd=self.limits.max_budget_usd,
            session_id=self.session_id,
            system_prompt={"type": "preset", "preset": "claude_code",
                           "append": self._system_prompt(skills)},
            stderr=lambda line: self.stderr_tail.append(self.redactor.text(line)),
        )

    def _external_mcp_servers(self) -> dict[str, Any]:
        if self.runner.mcp_template is None:
            return render_mcp_servers(self.runner.settings, self.worktree)
        return render_mcp_servers(self.runner.settings, self.worktree, self.runner.mcp_template)

    def _write_mcp_config(self, servers: dict[str, Any]) -> Path:
        """The rendered servers carry tokens: a 0600 file outside the CLI's home, never argv
        (which any process on the host can read) and never the CLI's environment."""
        directory = self.runner.home / "mcp"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.mcp_config_path = directory / f"{self.session_id}.json"
        descriptor = os.open(self.mcp_config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            json.dump({"mcpServers": servers}, out)
        return self.mcp_config_path

    def _env(self) -> dict[str, str]:
        """Everything the CLI gets; the wrapper drops the rest of the platform's environment."""
        claude_dir = self.runner.claude_dir
        claude_dir.mkdir(parents=True, exist_ok=True)
        env = {name: os.environ[name] for name in PASSTHROUGH_ENV if name in os.environ}
        env |= {
            # The platform's interpreter first, so the agent's `python -m pytest` has pytest.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                     os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")]),
            "HOME": str(claude_dir),
            "CLAUDE_CONFIG_DIR": str(claude_dir),
            "SHELL": shutil.which("bash") or "/bin/bash",
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "USER": os.environ.get("USER", "fixfleet"),
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
            # The role's skills only: a bundled `code-review` would shadow ours.
            "CLAUDE_CODE_DISABLE_BUNDLED_SKILLS": "1",
        }
        if self.runner.scrub_subprocess_env:
            # The model credential stays with the CLI: its Bash and MCP children never see it.
            # The CLI refuses to start with this unless bubblewrap is installed.
            env["CLAUDE_CODE_SUBPROCESS_ENV_SCRUB"] = "1"
        if self.runner.settings.anthropic_base_url:
            env["ANTHROPIC_BASE_URL"] = self.runner.settings.anthropic_base_url
        if self.runner.api_max_retries is not None:
            env["CLAUDE_CODE_MAX_RETRIES"] = str(self.runner.api_max_retries)
        secret_name = ("CLAUDE_CODE_OAUTH_TOKEN" if self.credential.kind == "oauth_token"
                       else "ANTHROPIC_API_KEY")
        env[secret_name] = self.credential.value.get_secret_value()
        env[KEEP_VAR] = " ".join(sorted({*env, *SDK_ENV} - {KEEP_VAR}))
        return env

    def _system_prompt(self, skills: list[str]) -> str:
        role = self.request.role
        duty = (
            "You plan; you never edit files. Read and search the code, find the root cause, "
            "then call the `submit_plan` tool with the plan." if role == "planner" else
            "You fix the bug test-first: write a failing test, run it and see it fail, fix the "
            "code, run the tests until they pass, then call the `report_result` tool."
        )
        context = json.dumps(self.redactor.value(self.request.context), indent=2, default=str)
        return "\n".join([
            f"# fixfleet {role}",
            f"You are fixfleet's {role} agent. Your working directory is the git worktree "
            f"{self.worktree}; stay inside it.",
            duty,
            "The platform does all network access, commits and pushes: never run curl, wget, "
            "ssh, git push, or package installs. Never read credential files.",
            f"Skills for this role (use the Skill tool): {', '.join(skills) or 'none'}.",
            "## Task context", "```json", context, "```",
        ])

    # -- permissions and structured output ---------------------------------------------------

    async def _pre_tool_use(self, hook_input: Any, tool_use_id: str | None,
                            context: Any) -> dict[str, Any]:
        """Every tool call passes here, even those the CLI would auto-approve (reads)."""
        reason = self.policy.decide(hook_input.get("tool_name", ""),
                                    hook_input.get("tool_input") or {}, tool_use_id)
        if reason is None:
            return {}  # no opinion: the CLI's own rules, then can_use_tool, decide
        return {"hookSpecificOutput": {"hookEventName": "PreToolUse",
                                       "permissionDecision": "deny",
                                       "permissionDecisionReason": reason}}

    async def _can_use_tool(self, tool_name: str, tool_input: dict[str, Any],
                            context: Any) -> PermissionResultAllow | PermissionResultDeny:
        reason = self.policy.decide(tool_name, tool_input, getattr(context, "tool_use_id", None))
        if reason is None:
            return PermissionResultAllow()
        return PermissionResultDeny(message=reason)

    def _output_server(self) -> Any:
        name, model, description = OUTPUT_TOOLS[self.request.role]

        @tool(name, description, model.model_json_schema())
        async def hand_back(args: dict[str, Any]) -> dict[str, Any]:
            try:
                output = model.model_validate(args)
                self._check_files(output.model_dump())
            except (ValidationError, ValueError) as exc:
                return {"content": [{"type": "text", "text":
                                     f"Rejected: {_reason(exc)}. Fix it and call {name} again."}],
                        "is_error": True}
            self.structured_output = output.model_dump()
            return {"content": [{"type": "text", "text": f"Accepted. {name} recorded."}]}

        return create_sdk_mcp_server(OUTPUT_SERVER, tools=[hand_back])

    def _check_files(self, output: dict[str, Any]) -> None:
        """Named files must exist in the worktree: a plan about files that aren't there is wrong."""
        named = output.get("affected_files") or output.get("files_changed") or []
        files = [f["path"] if isinstance(f, dict) else f for f in named]
        missing = [f for f in files if not (self.worktree / f).exists()]
        if missing:
            raise ValueError(f"these files do not exist in the worktree: {', '.join(missing)}")

    # -- process tree ------------------------------------------------------------------------

    def _cli_tree(self) -> list[psutil.Process]:
        """The CLI (found by its unique --session-id) and everything it started."""
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

    def _on_timeout(self) -> None:
        self.timed_out = True
        self.killed = self._kill(self._cli_tree())
        log.warning("session %s timed out after %ss; killed %d processes",
                    self.session_id, self.limits.timeout_s, self.killed)

    @staticmethod
    def _kill(processes: list[psutil.Process]) -> int:
        """SIGKILL the lot; the tree was collected first, so no child escapes by reparenting.

        No waiting: SIGKILL cannot be ignored, and this runs on the event loop.
        """
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
            transcript_path=self.transcript_path,
            skills=self.init_skills,
        )

    def _redacted(self, denial: Denial) -> Denial:
        return denial.model_copy(update={"input_summary": self.redactor.text(denial.input_summary)})

    def _classify(self, message: ResultMessage | None,
                  error: str | None) -> tuple[Subtype, str | None]:
        if self.timed_out:
            return "timeout", (f"no result within {self.limits.timeout_s:g}s; "
                               f"killed the CLI's process tree ({self.killed} processes)")
        if message is None:
            return "error_during_execution", error or "the CLI ended without a result"
        if message.subtype in ("error_max_turns", "error_max_budget_usd"):
            return message.subtype, _result_error(message)  # type: ignore[return-value]
        if message.subtype != "success" or message.is_error:
            return "error_during_execution", _result_error(message)
        if self.request.require_structured_output and self.structured_output is None:
            tool_name = OUTPUT_TOOLS[self.request.role][0]
            return "error_during_execution", f"the {self.request.role} ended without {tool_name}"
        return "success", None

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
        return (sum(_prompt_tokens(u) for u in seen),
                sum(int(u.get("output_tokens", 0)) for u in seen))

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
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'input'}: {e['msg']}"
                         for e in exc.errors())
    return str(exc)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
