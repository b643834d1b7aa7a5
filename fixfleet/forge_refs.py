"""How fixfleet names a repository, pull request or issue on a forge, parsed and formatted here
and nowhere else.

A thread (a pull request or an issue: GitHub numbers them together) is `owner/name#12` on
github.com and `host/owner/name#12` on a GitHub Enterprise host, so the same owner/name#12 on two
hosts are two things. Tasks keep these strings in their external ids (`github_pr`,
`github_issue`); a comment's webhook says where it was made in the same form.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

PULL_KEY = "github_pr"  # the external id of a task's pull request
ISSUE_KEY = "github_issue"  # the external id of the issue a task was asked for on
# Its shape; models.EXTERNAL_ID_FORMATS checks submitted ids with it.
HOST, NAME = r"[A-Za-z0-9.-]+(?::\d{1,5})?", r"[\w.-]{1,100}/[\w.-]{1,100}"
THREAD = re.compile(rf"(?:(?P<host>{HOST})/)?(?P<name>{NAME})#(?P<number>\d{{1,18}})")
PUBLIC_HOSTS = {"github.com", "api.github.com"}  # github.com's threads are named without a host


def host_of(url: str) -> str | None:
    """The host part of the names of a forge's threads, from its web or API URL: lower-cased, and
    none for github.com (api.github.com)."""
    host = (urlsplit(url).hostname or "github.com").lower()
    return None if host in PUBLIC_HOSTS else host


class ForgeRepo(BaseModel):
    """A repository on a forge: `owner/name`, on `host` unless that is the public github.com."""

    model_config = ConfigDict(frozen=True)

    host: str | None = Field(None, pattern=f"^{HOST}$")
    name: str = Field(pattern=f"^{NAME}$")

    def thread(self, number: int) -> ForgeRef:
        return ForgeRef(repo=self, number=number)

    def __str__(self) -> str:
        return f"{self.host}/{self.name}" if self.host else self.name


class ForgeRef(BaseModel):
    """A pull request or issue: `[host/]owner/name#n`."""

    model_config = ConfigDict(frozen=True)

    repo: ForgeRepo
    number: int = Field(ge=0)

    @classmethod
    def parse(cls, text: str) -> ForgeRef:
        """Raise ValueError unless `text` is `[host/]owner/name#n`."""
        match = THREAD.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f"{str(text)[:80]!r} is not a pull request or issue like owner/name#12")
        return cls(repo=ForgeRepo(host=match["host"], name=match["name"]), number=int(match["number"]))

    def __str__(self) -> str:
        return f"{self.repo}#{self.number}"
