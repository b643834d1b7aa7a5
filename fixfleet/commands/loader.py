"""Load the command language from definitions.yaml into typed, validated objects.

The YAML is the single source of truth: the parser, `help` and the permission checks all read
these objects, so a mistake in the file must stop the program at load time, not surface as a
misread comment later.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fixfleet.approvals import Scope

DEFINITIONS = "definitions.yaml"
WORD = r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$"  # lowercase words joined by hyphens: `rerun-tests`


class CommandDefinitionError(ValueError):
    """definitions.yaml is malformed; the message names the file and the offending entry."""


class ArgKind(StrEnum):
    TEXT = "text"  # the rest of the line, as typed
    USER = "user"  # a login, with or without the leading @
    PRIORITY = "priority"  # one of fixfleet.models.Priority
    NUMBER = "number"  # a positive integer
    PLAN_VERSION = "plan_version"  # `v3` or `3`
    COMMAND = "command"  # a command name or alias, resolved to the canonical name


class _Strict(BaseModel):
    # A typo in a key (`requried`) must fail loudly instead of being silently dropped.
    model_config = ConfigDict(frozen=True, extra="forbid")


class ArgSpec(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z_]*$")
    kind: ArgKind
    required: bool = False
    help: str = Field(min_length=1)

    @property
    def usage(self) -> str:
        """`<feedback…>` for a required text, `[version]` for an optional word."""
        label = f"{self.name}…" if self.kind is ArgKind.TEXT else self.name
        return f"<{label}>" if self.required else f"[{label}]"


class CommandSpec(_Strict):
    name: str = Field(pattern=WORD)
    aliases: tuple[str, ...] = ()
    scope: Scope
    help: str = Field(min_length=1)
    args: tuple[ArgSpec, ...] = ()
    example: str = Field(min_length=1)

    @field_validator("aliases")
    @classmethod
    def _aliases_are_words(cls, aliases: tuple[str, ...]) -> tuple[str, ...]:
        for alias in aliases:
            if re.fullmatch(WORD, alias) is None:
                raise ValueError(f"alias {alias!r} must be lowercase words joined by hyphens")
        return aliases

    @field_validator("help")
    @classmethod
    def _help_is_one_line(cls, text: str) -> str:
        if "\n" in text.strip():
            raise ValueError("help must be one line (it is a row of the help table)")
        return text.strip()

    @model_validator(mode="after")
    def _args_bind_unambiguously(self) -> CommandSpec:
        # Arguments bind by position, so a text argument (the rest of the line) can only be last
        # and an optional argument cannot sit before a required one.
        for position, arg in enumerate(self.args):
            if arg.kind is ArgKind.TEXT and position != len(self.args) - 1:
                raise ValueError(f"text argument {arg.name!r} must be the last argument")
            if arg.required and any(not earlier.required for earlier in self.args[:position]):
                raise ValueError(f"required argument {arg.name!r} follows an optional one")
        if len({arg.name for arg in self.args}) != len(self.args):
            raise ValueError("argument names must be unique")
        return self

    @property
    def words(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def usage(self, mention: str = "@agent") -> str:
        return " ".join([mention, self.name, "[FF-12]", *(arg.usage for arg in self.args)])


class CommandSet(_Strict):
    commands: tuple[CommandSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _every_word_means_one_command(self) -> CommandSet:
        # Names first, so an alias that shadows a name is reported as such wherever it sits.
        owner: dict[str, str] = {}
        for spec in self.commands:
            if spec.name in owner:
                raise ValueError(f"command {spec.name!r} is defined twice")
            owner[spec.name] = spec.name
        for spec in self.commands:
            for alias in spec.aliases:
                if alias in owner:
                    raise ValueError(_clash(alias, spec.name, owner[alias]))
                owner[alias] = spec.name
        return self

    @functools.cached_property
    def _by_word(self) -> dict[str, CommandSpec]:
        return {word: spec for spec in self.commands for word in spec.words}

    def get(self, word: str) -> CommandSpec | None:
        """The command a name or alias means, in any case; None when unknown."""
        return self._by_word.get(word.strip().lower())

    def __getitem__(self, word: str) -> CommandSpec:
        spec = self.get(word)
        if spec is None:
            raise KeyError(word)
        return spec

    def __iter__(self) -> Iterator[CommandSpec]:  # type: ignore[override]
        return iter(self.commands)

    def __len__(self) -> int:
        return len(self.commands)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.commands)

    @property
    def words(self) -> tuple[str, ...]:
        """Every name and alias: what an unknown word is compared against."""
        return tuple(self._by_word)


def _clash(alias: str, command: str, other: str) -> str:
    taken = "the name" if alias == other else "an alias"
    return f"alias {alias!r} of command {command!r} is already {taken} of command {other!r}"


@functools.cache
def default_commands() -> CommandSet:
    """The packaged definitions, read and validated once per process."""
    text = resources.files(__package__).joinpath(DEFINITIONS).read_text(encoding="utf-8")
    return parse_definitions(text, source=f"fixfleet/commands/{DEFINITIONS}")


def load_commands(path: str | Path | None = None) -> CommandSet:
    """The packaged set (cached) when no path is given, else the file at `path` (not cached)."""
    if path is None:
        return default_commands()
    path = Path(path)
    return parse_definitions(path.read_text(encoding="utf-8"), source=str(path))


def parse_definitions(text: str, *, source: str = "<string>") -> CommandSet:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CommandDefinitionError(f"{source}: not valid YAML: {exc}") from None
    try:
        return CommandSet.model_validate(data)
    except ValidationError as exc:
        problems = "\n".join(f"  - {_describe(error, data)}" for error in exc.errors())
        raise CommandDefinitionError(f"{source}: invalid command definitions:\n{problems}") from None


def _describe(error: Any, data: Any) -> str:
    """One validation error as `commands[3] (reject).aliases: <why>`."""
    where = []
    for part in error["loc"]:
        if isinstance(part, int):
            where[-1] += f"[{part}]"
            if len(where) == 1 and where[0].startswith("commands["):
                where[-1] += _command_name(data, part)
        else:
            where.append(str(part))
    message = error["msg"].removeprefix("Value error, ")
    return f"{'.'.join(where)}: {message}" if where else message


def _command_name(data: Any, index: int) -> str:
    try:
        return f" ({data['commands'][index]['name']})"
    except (KeyError, IndexError, TypeError):
        return ""
