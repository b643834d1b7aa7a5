"""Which repositories a request may name: a real git URL, allowed by FIXFLEET_REPO_ALLOWLIST.

Nothing from a request reaches git where it could be read as an option: URLs starting with
`-`, carrying whitespace or control characters, or credentials are refused here.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from pathlib import Path
from urllib.parse import urlsplit

from fixfleet.config import Settings

_SCP_LIKE = re.compile(r"^(?P<user>[A-Za-z0-9._-]+)@(?P<host>[A-Za-z0-9.-]+):(?P<path>[A-Za-z0-9._/~-]+)$")
_HOST = re.compile(r"^[A-Za-z0-9.-]+(:\d{1,5})?$")
_PATH = re.compile(r"^/[A-Za-z0-9._/~-]+$")


class InvalidRepo(ValueError):
    """The repository URL is not acceptable; the message says why."""


def validate_repo(url: str, settings: Settings, *, any_local_path: bool = False) -> str:
    """Return the URL if fixfleet may work on it, else raise InvalidRepo with the reason.

    `any_local_path`: the operator at the CLI may name any local repository; requests from
    outside (webhooks, the API) only those under FIXFLEET_LOCAL_REPO_ROOTS."""
    url = url.strip()
    if not url or url.startswith("-") or any(c.isspace() or ord(c) < 32 for c in url):
        raise InvalidRepo("a repository must be a git URL (https://, ssh:// or file://) without spaces")
    if _SCP_LIKE.match(url):
        _check_allowlist(url, settings)
        return url
    parts = urlsplit(url)
    if parts.scheme == "https":
        _check_remote(parts, url)
    elif parts.scheme == "ssh":
        _check_remote(parts, url, allow_user=True)
    elif parts.scheme == "file":
        _check_local(parts.path, settings, any_local_path)
    else:
        raise InvalidRepo(f"unsupported repository URL scheme {parts.scheme or '(none)'!r}: use https, ssh or file")
    _check_allowlist(url, settings)
    return url


def _check_remote(parts, url: str, *, allow_user: bool = False) -> None:  # noqa: ANN001 - SplitResult
    if parts.password is not None or (parts.username and not allow_user):
        raise InvalidRepo("credentials do not belong in a repository URL; configure GITHUB_TOKEN instead")
    host = parts.netloc.rsplit("@", 1)[-1]
    if not _HOST.match(host) or not _PATH.match(parts.path or "") or parts.query or parts.fragment:
        raise InvalidRepo(f"{url!r} is not a repository URL like https://github.com/owner/repo.git")


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
