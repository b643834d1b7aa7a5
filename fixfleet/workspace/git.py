"""The one way the platform runs git: hardened, with nothing of the platform's but what git needs.

Every git command of fixfleet goes through `Git.run`:
- an environment built from an allowlist (locale, proxies, CA bundle, ssh agent), never the
  platform's own: no token, database URL or webhook secret can reach git or anything it starts;
- no system or global config (`GIT_CONFIG_NOSYSTEM`, `GIT_CONFIG_GLOBAL=/dev/null`), hooks and
  fsmonitor off, only known transports, no terminal prompt;
- its own session and process group, file descriptors closed (an actor's event loop holds
  sockets a child must not inherit), a timeout after which the whole group is killed;
- a GitHub token only for the one network command that needs it, as an `http.extraHeader`
  scoped to the token's hosts, handed over in the environment (`GIT_CONFIG_KEY_n`): never on a
  command line (`ps`), in a config file, a remote URL, a log or an error message.

The platform only runs git in directories the agent never could write: its bare mirrors.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import shutil
import signal
from collections.abc import Collection, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import SecretStr

from fixfleet.errors import PermanentError
from fixfleet.redact import Redactor
from fixfleet.workspace.spawn import without_inherited_fds

ALLOWED_PROTOCOLS = "file:git:http:https:ssh"  # GIT_ALLOW_PROTOCOL: no ext::, fd::, ...
HARDENING = (
    ("core.hooksPath", "/dev/null"),
    ("core.fsmonitor", "false"),
    ("protocol.ext.allow", "never"),
    ("core.askPass", ""),
    ("credential.helper", ""),
)
# Taken from the platform's environment: what git and ssh need to reach a remote, nothing else.
INHERITED_ENV = (
    "PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "HOME",
    "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy",
    "GIT_SSL_CAINFO", "GIT_SSL_CAPATH", "SSL_CERT_FILE", "SSL_CERT_DIR", "SSH_AUTH_SOCK",
    "GIT_SSH_COMMAND",
)
IDENTITY = {"GIT_AUTHOR_NAME": "fixfleet", "GIT_AUTHOR_EMAIL": "fixfleet@users.noreply.local",
            "GIT_COMMITTER_NAME": "fixfleet", "GIT_COMMITTER_EMAIL": "fixfleet@users.noreply.local"}
AUTH_FAILURE = re.compile(r"Authentication failed|could not read (Username|Password)|"
                          r"terminal prompts disabled|Permission denied \(publickey")
# A remote that is not there, or not ours to read: another attempt meets the same answer.
NOT_THERE = re.compile(r"does not appear to be a git repository|Repository not found|"
                       r"repository '[^']*' (not found|does not exist)|Could not read from remote repository|"
                       r"couldn't find remote ref HEAD")
# ...unless the network failed on the way: ssh says "Could not read from remote repository"
# after a refused connection too, and that one may well work next time.
NETWORK_TROUBLE = re.compile(r"Could not resolve host|Connection (refused|timed out|reset)|Network is unreachable|"
                             r"Temporary failure|timed out|Empty reply|returned error: 5\d\d|early EOF", re.IGNORECASE)
REMOTE_COMMANDS = {"fetch", "clone", "ls-remote", "push"}
NICE = shutil.which("nice")
STDERR_TAIL_CHARS = 2000


class GitError(RuntimeError):
    """A git command failed; carries the (redacted) tail of its stderr."""

    def __init__(self, message: str, *, stderr: str = "", returncode: int | None = None):
        self.message = message
        self.stderr = stderr[-STDERR_TAIL_CHARS:]
        self.returncode = returncode
        super().__init__(f"{message}\n{self.stderr}".rstrip() if self.stderr else message)


class RepositoryUnavailable(GitError, PermanentError):
    """The repository does not exist, is empty, or may not be read with the credentials at
    hand, or its URL is not acceptable: retrying cannot help, the task fails with this."""


class PushRefused(GitError, PermanentError):
    """The remote refused the push outright (a hook declined it, a protected branch): unlike a
    lost race (the branch moved: stale info), the same push would be refused again."""


class GitCredentials:
    """Turns a GitHub token into per-command config, and scrubs it from any text."""

    def __init__(self, token: SecretStr | None = None, hosts: Collection[str] = ("github.com",)):
        self._token = token.get_secret_value() if token else None
        self._hosts = {host.lower() for host in hosts}
        self.secrets: list[str] = []
        self._redactor = Redactor([self._token])  # the token, its Basic header and its encodings
        if self._token:
            basic = base64.b64encode(f"x-access-token:{self._token}".encode()).decode()
            self._header = f"Authorization: Basic {basic}"
            self.secrets = [self._token, basic, base64.b64encode(self._token.encode()).decode()]

    def applies_to(self, url: str) -> bool:
        parts = urlsplit(url)
        return bool(self._token) and parts.scheme == "https" and (
            (parts.hostname or "").lower() in self._hosts)

    def config_for(self, url: str) -> list[tuple[str, str]]:
        if not self.applies_to(url):
            return []
        scope = f"https://{urlsplit(url).netloc}/"  # the header goes to this host only
        return [(f"http.{scope}.extraHeader", self._header), ("http.sslVerify", "true")]

    def redact(self, text: str) -> str:
        return self._redactor.text(text)


class Git:
    """Runs git; stdout on success, GitError (redacted stderr tail) otherwise."""

    def __init__(self, credentials: GitCredentials | None = None, *,
                 network_timeout_s: float = 900.0, local_timeout_s: float = 300.0) -> None:
        self.credentials = credentials or GitCredentials()
        self.network_timeout_s = network_timeout_s
        self.local_timeout_s = local_timeout_s

    async def run(self, *args: str, cwd: Path | None = None, url: str | None = None,
                  background: bool = False, stdin: bytes | None = None,
                  env: Mapping[str, str] | None = None) -> str:
        out = await self.run_bytes(*args, cwd=cwd, url=url, background=background, stdin=stdin, env=env)
        return out.decode(errors="replace")

    async def run_bytes(self, *args: str, cwd: Path | None = None, url: str | None = None,
                        background: bool = False, stdin: bytes | None = None,
                        env: Mapping[str, str] | None = None) -> bytes:
        """`url` marks a network command: it gets the credentials and the longer timeout.
        `background` work runs niced so it never slows a task's own commands."""
        timeout = self.network_timeout_s if url else self.local_timeout_s
        argv = ["git", *args]
        if background and NICE:
            argv = [NICE, "-n", "10", *argv]
        try:
            process = await self.spawn(argv, cwd, self.environment(url, env), stdin is not None)
        except OSError as error:  # git missing, or cwd gone
            raise GitError(f"could not run git {args[0]}: {error}") from None
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(stdin), timeout)
        except BaseException as error:
            await asyncio.shield(kill_group(process))
            if isinstance(error, TimeoutError):
                raise GitError(f"git {args[0]} timed out after {timeout:.0f}s") from None
            raise
        if process.returncode != 0:
            raise self._failure(args, process.returncode, stderr.decode(errors="replace"),
                                stdout=stdout.decode(errors="replace"), url=url)
        return stdout

    def environment(self, url: str | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env |= {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
                "GIT_TERMINAL_PROMPT": "0", "GIT_ALLOW_PROTOCOL": ALLOWED_PROTOCOLS,
                "LC_ALL": "C", **IDENTITY, **(extra or {})}
        config = [*HARDENING, *(self.credentials.config_for(url) if url else [])]
        env["GIT_CONFIG_COUNT"] = str(len(config))
        for index, (key, value) in enumerate(config):
            env[f"GIT_CONFIG_KEY_{index}"] = key
            env[f"GIT_CONFIG_VALUE_{index}"] = value
        return env

    def _failure(self, args: tuple[str, ...], returncode: int, stderr: str, *, stdout: str = "",
                 url: str | None = None) -> GitError:
        """The error, classified: a remote that is not there or refuses for good is permanent."""
        redact, command = self.credentials.redact, args[0]
        # `push --porcelain` says on stdout why each ref failed ("!  ... [remote rejected] (hook declined)").
        rejected = [line for line in stdout.splitlines() if line.startswith("!")] if command == "push" else []
        stderr = "\n".join([*rejected, stderr]) if rejected else stderr
        kind, what = GitError, f"git {command} failed (exit {returncode})"
        if AUTH_FAILURE.search(stderr):
            what = f"git {command}: authentication failed (no token, or it lacks access)"
        if url and command in REMOTE_COMMANDS and not NETWORK_TROUBLE.search(stderr):
            if any("[remote rejected]" in line for line in rejected):
                kind, what = PushRefused, f"the remote {url} refused the push (see its answer below)"
            elif AUTH_FAILURE.search(stderr):
                kind, what = RepositoryUnavailable, f"{what}, for {url}"
            elif NOT_THERE.search(stderr):
                access = "push to" if command == "push" else "read"
                kind, what = RepositoryUnavailable, (f"the repository {url} does not exist, is empty, or this "
                                                     f"platform may not {access} it (git {command})")
        return kind(redact(f"{what}: git {' '.join(args)}" if kind is GitError else what), stderr=redact(stderr),
                    returncode=returncode)

    @staticmethod
    async def spawn(argv: list[str], cwd: Path | None, env: dict[str, str],
                    with_stdin: bool = False) -> asyncio.subprocess.Process:
        spawn = asyncio.ensure_future(asyncio.create_subprocess_exec(
            *without_inherited_fds(argv), cwd=cwd, env=env,
            stdin=asyncio.subprocess.PIPE if with_stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: a kill reaches its helpers
            close_fds=True,  # asyncio's loop honours it; uvloop's does not, hence the shim
        ))
        try:
            return await asyncio.shield(spawn)
        except asyncio.CancelledError:
            # Cancelling a spawn half way can hang forever on CPython 3.11 (the pipes never
            # connect: python/cpython#103847): let it finish, then kill it.
            with contextlib.suppress(Exception):  # a spawn that failed (git missing, cwd gone) left nothing to kill
                await kill_group(await spawn)
            raise


async def kill_group(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    await process.wait()
