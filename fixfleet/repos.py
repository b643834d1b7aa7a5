"""Repository URLs: the one rule for what git may be given, and which repositories fixfleet works on.

Two levels, one module:
- `check_git_url`: what may reach git at all. Nothing git could read as an option (a leading
  `-`, a host or user starting with `-`), no whitespace or control characters, no credentials,
  no remote helpers (`ext::`, `fd::`), only known transports. Plain paths are made absolute.
- `validate_repo`: what a request may name: a checked URL over https, ssh or file (under
  FIXFLEET_LOCAL_REPO_ROOTS unless the local operator asks), inside FIXFLEET_REPO_ALLOWLIST.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from pathlib import Path
from urllib.parse import urlsplit

from fixfleet.config import Settings

GIT_SCHEMES = {"https", "http", "ssh", "git", "file", "git+ssh", "ssh+git"}
REQUEST_SCHEMES = {"https", "ssh", "file"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SCP_LIKE = re.compile(r"^(?:(?P<user>[^@/:]+)@)?(?P<host>[^/:]+):(?P<path>.+)$")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_HOST = re.compile(r"^[A-Za-z0-9.-]+(:\d{1,5})?$")
_PATH = re.compile(r"^/[A-Za-z0-9._/~-]+$")


class InvalidRepo(ValueError):
    """The repository URL is not acceptable; the message says why."""


def check_git_url(url: str) -> str:
    """The URL if git may be given it (credential-free, never an option); plain paths absolute."""
    if not isinstance(url, str) or not url or _CONTROL.search(url):
        raise InvalidRepo("invalid repository URL: empty, or contains spaces or control characters")
    if url.startswith("-"):
        raise InvalidRepo("invalid repository URL: starts with '-'")
    scheme = _SCHEME.match(url)
    if scheme:
        return _check_scheme_url(url, scheme.group(1).lower())
    if "::" in url:  # <transport>::<address> runs a remote helper
        raise InvalidRepo("invalid repository URL: remote-helper syntax is not allowed")
    scp = _SCP_LIKE.match(url)
    if scp and "/" not in url.split(":", 1)[0]:
        if scp["host"].startswith("-") or (scp["user"] or "").startswith("-"):
            raise InvalidRepo("invalid repository URL: host starts with '-'")
        return url
    return str(Path(url).expanduser().absolute())


def _check_scheme_url(url: str, scheme: str) -> str:
    if scheme not in GIT_SCHEMES:
        raise InvalidRepo(f"invalid repository URL: transport {scheme!r} is not allowed")
    parts = urlsplit(url)
    if parts.password is not None or (scheme in ("http", "https") and parts.username):
        raise InvalidRepo("invalid repository URL: credentials do not belong in it; configure GITHUB_TOKEN instead")
    if scheme != "file" and (not parts.hostname or parts.hostname.startswith("-")):
        raise InvalidRepo("invalid repository URL: missing host or host starts with '-'")
    if (parts.username or "").startswith("-"):
        raise InvalidRepo("invalid repository URL: user starts with '-'")
    return url


def validate_repo(url: str, settings: Settings, *, any_local_path: bool = False) -> str:
    """Return the URL if fixfleet may work on it, else raise InvalidRepo with the reason.

    `any_local_path`: the operator at the CLI may name any local repository; requests from
    outside (webhooks, the API) only those under FIXFLEET_LOCAL_REPO_ROOTS and in the allowlist."""
    url = url.strip() if isinstance(url, str) else url
    try:
        check_git_url(url)
    except InvalidRepo as exc:
        raise InvalidRepo(f"a repository must be a git URL (https://, ssh:// or file://): {exc}") from None
    if not _SCHEME.match(url):
        if not _SCP_LIKE.match(url):
            raise InvalidRepo("unsupported repository URL scheme (none): use https://, ssh:// or file://")
        _check_allowlist(url, settings)
        return url
    parts = urlsplit(url)
    if parts.scheme not in REQUEST_SCHEMES:
        raise InvalidRepo(f"unsupported repository URL scheme {parts.scheme!r}: use https, ssh or file")
    if parts.scheme == "file":
        _check_local(parts.path, settings, any_local_path)
        if any_local_path:  # the operator at the CLI names a repository on this machine: no allowlist
            return url
    elif not _HOST.match(parts.netloc.rsplit("@", 1)[-1]) or not _PATH.match(parts.path or "") \
            or parts.query or parts.fragment:
        raise InvalidRepo(f"{url!r} is not a repository URL like https://github.com/owner/repo.git")
    _check_allowlist(url, settings)
    return url


def _check_local(path: str, settings: Settings, any_local_path: bool) -> None:
    if not path.startswith("/") or ".." in Path(path).parts:
        raise InvalidRepo("a file:// repository needs an absolute path without '..'")
    if any_local_path:
        return
    roots = [r.resolve() for r in settings.local_repo_roots]
    if not any(Path(path).resolve().is_relative_to(root) for root in roots):
        raise InvalidRepo("file:// repositories must lie under FIXFLEET_LOCAL_REPO_ROOTS")


def _check_allowlist(url: str, settings: Settings) -> None:
    if not any(fnmatchcase(url, pattern) for pattern in settings.repo_allowlist):
        raise InvalidRepo(f"{url} is not in FIXFLEET_REPO_ALLOWLIST")
