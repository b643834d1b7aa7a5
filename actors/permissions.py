"""What an agent may do: one policy per session, consulted before every tool call.

The session (actors/session.py) asks it from two places: a PreToolUse hook (the CLI calls it for every tool call,
including reads it would otherwise auto-approve) and the `can_use_tool` permission callback
(tool calls the CLI would prompt for). A denial's reason goes back to the agent as the tool's
error, so it can change course; each one is recorded in the session result.

The Bash checks are a tripwire against an agent wandering off, not a sandbox: the worktree
container and the clean environment (no platform secrets to steal) are the real boundary.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.session_models import Denial, Role

READ_TOOLS = {"Read", "Grep", "Glob", "LS"}
WRITE_TOOLS = {"Edit", "MultiEdit", "Write", "NotebookEdit"}
ROLE_TOOLS: dict[Role, set[str]] = {
    "planner": READ_TOOLS | {"Bash", "Skill"},
    "executor": READ_TOOLS | WRITE_TOOLS | {"Bash", "Skill"},
}
# Built-in tools handed to the CLI (`tools=`); everything else does not even exist for it.
CLI_TOOLS: dict[Role, list[str]] = {
    "planner": ["Read", "Grep", "Glob", "Bash", "Skill"],
    "executor": ["Read", "Grep", "Glob", "Edit", "Write", "Bash", "Skill"],
}

NETWORK_COMMANDS = {
    "curl", "wget", "ssh", "scp", "sftp", "rsync", "nc", "ncat", "netcat", "telnet", "ftp",
    "socat", "dig", "nslookup", "host", "ping", "gh", "http", "https", "aria2c", "lynx",
}
# git subcommands that talk to a remote: the platform pushes and fetches, never the agent.
GIT_NETWORK = {"push", "fetch", "pull", "clone", "ls-remote", "remote", "submodule", "request-pull"}
INSTALLERS = re.compile(
    r"\b(pip3?|uv\s+pip|pipx|poetry|npm|npx|pnpm|yarn|gem|cargo|go|apt(-get)?|apk|yum|dnf|brew"
    r"|conda)"
    r"\s+(install|add|download|get|i|update|upgrade)\b"
)
PYTHON_NETWORK = re.compile(r"\b(urllib|requests|httpx|aiohttp|socket|http\.client|ftplib)\b")
CREDENTIAL_PATH = re.compile(
    r"(^|[/\s'\"=])("
    r"\.ssh(/|$|\b)|\.env(\.[\w-]+)?$|\.env(\.[\w-]+)?[\s'\"]|\.git-credentials|\.netrc|\.npmrc"
    r"|\.pypirc|\.aws/|\.docker/config\.json|\.kube/config|\.config/gh/|id_(rsa|dsa|ecdsa|ed25519)"
    r"|[\w.-]+\.(pem|key|p12|pfx)\b|/proc/[^/\s]+/environ|/proc/[^/\s]+/cmdline"
    r"|\.claude\.json|\.credentials\.json"
    r")"
)
ENV_EXAMPLE = re.compile(r"\.env\.(example|sample|template|dist)$")
# Word-level commands the planner's read-only Bash may run.
PLANNER_COMMANDS = {
    "ls", "cat", "head", "tail", "wc", "grep", "rg", "find", "pwd", "echo", "sort", "uniq",
    "tree", "file", "stat", "cut", "awk", "diff", "basename", "dirname", "realpath", "true",
}
PLANNER_GIT = {"log", "show", "diff", "status", "blame", "grep", "ls-files", "rev-parse",
               "branch", "shortlog", "describe", "ls-tree", "cat-file"}
WRITING_COMMANDS = {"cp", "mv", "rm", "touch", "mkdir", "tee", "ln", "chmod", "chown", "dd",
                    "install", "truncate", "rmdir", "sed", "patch", "rsync", "unzip", "tar"}
# An MCP tool whose name holds one of these words changes something: not for the agents.
MCP_WRITE_WORDS = {"create", "update", "write", "edit", "delete", "remove", "move", "push",
                   "merge", "fork", "add", "set", "transition", "assign", "upload", "comment",
                   "post", "close", "reopen", "publish", "send", "resolve", "link"}
SAFE_DEVICES = {"/dev/null", "/dev/stdout", "/dev/stderr", "/dev/tty"}
SHELLS = {"sh", "bash", "zsh", "dash", "ksh"}
WRAPPERS = {"sudo", "env", "nohup", "exec", "command", "time", "nice", "xargs", "stdbuf",
            "then", "do", "else", "!", "{", "if", "while"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass
class PermissionPolicy:
    role: Role
    worktree: Path
    readable: list[Path] = field(default_factory=list)  # extra read-only dirs (skills)
    deny_patterns: list[str] = field(default_factory=list)  # regexes on the call's summary
    extra_tools: set[str] = field(default_factory=set)  # e.g. the structured-output tool
    mcp_servers: set[str] = field(default_factory=set)  # external servers the role may use
    denials: list[Denial] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.worktree = Path(os.path.realpath(self.worktree))
        self.readable = [Path(os.path.realpath(p)) for p in self.readable]
        self._deny = [re.compile(p) for p in self.deny_patterns]

    # -- entry point -------------------------------------------------------------------------

    def check(self, tool: str, tool_input: dict[str, Any]) -> str | None:
        """None when allowed, else the reason the agent is given."""
        summary = summarize(tool, tool_input)
        for pattern in self._deny:
            if pattern.search(summary):
                return f"denied by the platform's deny list ({pattern.pattern})"
        if tool in self.extra_tools:
            return None
        if tool.startswith("mcp__"):
            return self._check_mcp(tool, tool_input)
        if tool not in ROLE_TOOLS[self.role]:
            return f"tool {tool} is not available to the {self.role}"
        if tool in WRITE_TOOLS:
            return self._check_write(tool_input)
        if tool in READ_TOOLS:
            return self._check_read(tool_input)
        if tool == "Bash":
            return self._check_bash(str(tool_input.get("command", "")))
        return None

    def decide(self, tool: str, tool_input: dict[str, Any],
               tool_use_id: str | None = None) -> str | None:
        """`check`, and record a denial once per tool call (hook and callback may both ask)."""
        reason = self.check(tool, tool_input)
        if reason is not None and not self._recorded(tool, tool_input, tool_use_id):
            self.denials.append(Denial(tool=tool, input_summary=summarize(tool, tool_input)[:300],
                                       reason=reason, tool_use_id=tool_use_id))
        return reason

    def _recorded(self, tool: str, tool_input: dict[str, Any], tool_use_id: str | None) -> bool:
        summary = summarize(tool, tool_input)[:300]
        for denial in self.denials:
            if tool_use_id and denial.tool_use_id == tool_use_id:
                return True
            if not (tool_use_id and denial.tool_use_id) and (denial.tool, denial.input_summary) == (
                    tool, summary):
                return True
        return False

    def _check_mcp(self, tool: str, tool_input: dict[str, Any]) -> str | None:
        """External MCP servers (GitHub, Jira, Sentry, filesystem) are for reading only."""
        _, server, name = (tool.split("__", 2) + ["", ""])[:3]
        if server not in self.mcp_servers:
            return f"tool {tool} is not available"
        if set(re.split(r"[_\-]", name.lower())) & MCP_WRITE_WORDS:
            return (f"{tool} changes things outside the worktree; the platform posts comments, "
                    "branches and pull requests itself")
        paths = [tool_input.get("path"), *(tool_input.get("paths") or [])]
        for raw in filter(None, paths):
            reason = self._check_read({"path": str(raw)})
            if reason:
                return reason
        return None

    # -- paths -------------------------------------------------------------------------------

    def inside_worktree(self, raw: str) -> bool:
        return _within(self._resolve(raw), self.worktree)

    def _resolve(self, raw: str) -> Path:
        """Absolute and symlink-free, so `link -> /etc` cannot smuggle a path out."""
        path = Path(os.path.expanduser(raw)) if raw.startswith("~") else Path(raw)
        if not path.is_absolute():
            path = self.worktree / path
        return Path(os.path.realpath(path))

    def _check_read(self, tool_input: dict[str, Any]) -> str | None:
        for key in ("file_path", "path", "notebook_path"):
            raw = tool_input.get(key)
            if not raw:
                continue
            if is_credential_path(str(raw)):
                return f"reading credential files is not allowed ({raw})"
            resolved = self._resolve(str(raw))
            if not (_within(resolved, self.worktree)
                    or any(_within(resolved, extra) for extra in self.readable)):
                return f"{raw} is outside the worktree {self.worktree}"
        pattern = str(tool_input.get("pattern", "")) + " " + str(tool_input.get("glob", ""))
        if CREDENTIAL_PATH.search(pattern):
            return "searching credential files is not allowed"
        return None

    def _check_write(self, tool_input: dict[str, Any]) -> str | None:
        if self.role != "executor":
            return f"the {self.role} does not edit files"
        raw = str(tool_input.get("file_path") or tool_input.get("notebook_path") or "")
        if not raw:
            return "a write needs a file_path"
        resolved = self._resolve(raw)
        if not _within(resolved, self.worktree):
            return f"writing outside the worktree is not allowed ({raw})"
        if ".git" in resolved.relative_to(self.worktree).parts:
            return "git internals are managed by the platform"
        if is_credential_path(raw):
            return f"writing credential files is not allowed ({raw})"
        return None

    # -- shell -------------------------------------------------------------------------------

    def _check_bash(self, command: str) -> str | None:
        if CREDENTIAL_PATH.search(command) and not ENV_EXAMPLE.search(command):
            return "reading credentials is not allowed"
        if INSTALLERS.search(command):
            return "installing packages from the network is not allowed"
        line = parse_shell(command)
        if line is None:
            return "the command could not be parsed (unbalanced quotes?); simplify it"
        for words in line.segments:
            reason = self._check_segment(words)
            if reason:
                return reason
        if self.role == "planner":
            return self._check_planner_shell(line)
        return self._check_shell_writes(line)

    def _check_segment(self, words: list[str]) -> str | None:
        program = _program(words)
        if program in NETWORK_COMMANDS:
            return (f"network commands are not allowed ({program}): "
                    "the platform does all network access")
        if program == "git":
            sub = _git_subcommand(words)
            if sub in GIT_NETWORK:
                return f"git {sub} is not allowed: the platform pushes and fetches, never the agent"
        python_code = program.startswith("python") and "-c" in words
        if python_code and PYTHON_NETWORK.search(" ".join(words)):
            return "network access from Python is not allowed"
        if program in SHELLS and "-c" in words:
            inner = words[words.index("-c") + 1:words.index("-c") + 2]
            return self._check_bash(inner[0]) if inner else None
        if program == "eval":
            return self._check_bash(" ".join(words[1:]))
        return None

    def _check_planner_shell(self, line: ShellLine) -> str | None:
        if any(target not in SAFE_DEVICES for target in line.write_targets):
            return "the planner's shell is read-only (no redirection into files)"
        for words in line.segments:
            program = _program(words)
            if program == "git":
                sub = _git_subcommand(words)
                if sub not in PLANNER_GIT:
                    return f"the planner may only read git history (git {sub} is not allowed)"
                continue
            if program == "find" and {"-exec", "-execdir", "-delete", "-ok"} & set(words):
                return "the planner's find may not run or delete anything"
            if program not in PLANNER_COMMANDS:
                return f"the planner's shell is read-only ({program} is not allowed)"
            reason = self._check_paths(words, writing=False)
            if reason:
                return reason
        return None

    def _check_shell_writes(self, line: ShellLine) -> str | None:
        for target in line.write_targets:
            if target not in SAFE_DEVICES and not self.inside_worktree(target):
                return f"writing outside the worktree is not allowed ({target})"
        for words in line.segments:
            program = _program(words)
            if program == "cd" and (len(words) == 1 or not self.inside_worktree(words[1])):
                return f"the shell stays inside the worktree ({' '.join(words)})"
            targets = _write_targets(program, words)
            if targets:
                reason = self._check_paths([program, *targets], writing=True)
                if reason:
                    return reason
        return None

    def _check_paths(self, words: list[str], writing: bool) -> str | None:
        for word in words[1:]:
            value = word.split("=", 1)[1] if word.startswith("-") and "=" in word else word
            if not (value.startswith("/") or value.startswith("~") or value.startswith("..")):
                continue
            if value in SAFE_DEVICES or self.inside_worktree(value):
                continue
            if not writing and any(_within(self._resolve(value), extra) for extra in self.readable):
                continue
            action = "writing" if writing else "reading"
            return f"{action} outside the worktree is not allowed ({value})"
        return None


@dataclass
class ShellLine:
    segments: list[list[str]]  # the simple commands, words unquoted
    write_targets: list[str]  # files after `>` / `>>`


def parse_shell(command: str) -> ShellLine | None:
    """`a | b && c $(d) > f` -> segments [[a], [b], [c], [d]], write_targets [f].

    Quotes are respected; backticks and newlines count as separators. None when unparseable.
    """
    lexer = shlex.shlex(command.replace("`", " ; ").replace("\n", " ; "), posix=True,
                        punctuation_chars=True)
    lexer.whitespace_split = True
    segments: list[list[str]] = [[]]
    targets: list[str] = []
    next_token = "word"  # or "target" (after >), "skip" (fd after >&, file or tag after <)
    try:
        for token in lexer:
            if token and set(token) <= set("();<>|&"):
                if ">" in token:
                    next_token = "skip" if token.endswith("&") else "target"
                elif "<" in token:
                    next_token = "skip"
                else:
                    segments.append([])
                continue
            if next_token == "target":
                targets.append(token)
            elif next_token == "word":
                segments[-1].append(token)
            next_token = "word"
    except ValueError:
        return None
    return ShellLine(segments=[s for s in segments if s], write_targets=targets)


def is_credential_path(raw: str) -> bool:
    return bool(CREDENTIAL_PATH.search(raw)) and not ENV_EXAMPLE.search(raw)


def summarize(tool: str, tool_input: dict[str, Any]) -> str:
    """One line naming what the call touches: the command or path first, then the rest."""
    for key in ("command", "file_path", "path", "notebook_path", "pattern", "skill"):
        if key in tool_input:
            return f"{tool}: {tool_input[key]}"
    return f"{tool}: {json.dumps(tool_input, sort_keys=True, default=str)}"


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _program(words: list[str]) -> str:
    """The command actually run, past `VAR=x`, `sudo`, `env`, `timeout 5`, `nohup`..."""
    index = 0
    while index < len(words):
        word = words[index]
        if ASSIGNMENT.match(word) or word in WRAPPERS:
            index += 1
        elif word == "timeout":
            index += 2
        elif word.startswith("-") and index > 0:  # an option of a wrapper (`sudo -E`)
            index += 1
        else:
            return os.path.basename(word)
    return ""


def _write_targets(program: str, words: list[str]) -> list[str]:
    """The arguments a command writes to: `cp a b` writes b only; `sed` only with -i."""
    arguments = [w for w in words[words.index(program) + 1 if program in words else 1:]
                 if not w.startswith("-")]
    if program in {"cp", "ln", "install", "rsync"}:
        return arguments[-1:]
    if program == "sed":
        return arguments if any(w.startswith("-i") for w in words) else []
    return arguments if program in WRITING_COMMANDS else []


def _git_subcommand(words: list[str]) -> str:
    """`git -C dir -c k=v push` -> push."""
    start = words.index("git") if "git" in words else 0
    rest = words[start + 1:]
    index = 0
    while index < len(rest):
        word = rest[index]
        if word in {"-C", "-c", "--git-dir", "--work-tree", "--namespace"}:
            index += 2
        elif word.startswith("-"):
            index += 1
        else:
            return word
    return ""
