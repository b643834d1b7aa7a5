"""Which forge a repository is on: the first configured forge that reviews it, else a plain git
remote."""

from __future__ import annotations

from fixfleet.forges.base import Forge
from fixfleet.forges.git_remote import PlainGitRemote


class Forges:
    def __init__(self, *configured: Forge) -> None:
        self.configured = list(configured)
        self.plain = PlainGitRemote()

    def for_repo(self, url: str) -> Forge:
        return next((forge for forge in self.configured if forge.repo_of(url) is not None), self.plain)

    def of_kind(self, kind: str) -> Forge | None:
        """The configured forge people of this kind comment on ("github"), if any."""
        return next((forge for forge in self.configured if forge.kind == kind), None)
